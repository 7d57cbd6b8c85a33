"""``create_model``: a named backbone, with random weights or pretrained ones from a file, a folder or the Hub.

Example:
    >>> model = create_model("endofm_vit_micro")
    >>> model.input_spec.size, model.input_spec.frames, model.input_spec.mean
    ((64, 64), 4, (0.485, 0.456, 0.406))
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from endofm.errors import CheckpointError
from endofm.models import hub
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import load_checkpoint
from endofm.models.registry import build_model, model_spec

ARCHITECTURE_FIELDS = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "qkv_bias")
"""The fields a pretrained file must share with the named model (sizes of embeddings adapt to any input)."""


def create_model(name: str = "endofm_vit_base", pretrained: str | os.PathLike | None = None,
                 **overrides: object) -> EndoFMBackbone:
    """The backbone ``name`` (:func:`~endofm.models.registry.list_models`), with ``model.input_spec`` the
    input it expects (:class:`~endofm.models.inputs.InputSpec`).

    Args:
        name: a named model, e.g. ``endofm_vit_base`` (the released architecture).
        pretrained: ``None`` for random weights; otherwise any checkpoint :func:`load_checkpoint` reads (the
            released ``endo_fm.pth``, a fine-tuned classifier's backbone, a run's teacher folder) or
            ``hf-hub:org/name[@revision]``, a folder of the package's format on the Hugging Face Hub. Its
            architecture must be the named one (a :class:`CheckpointError` names the fields that differ).
        overrides: fields of :class:`~endofm.models.backbone.BackboneConfig` to change, e.g.
            ``drop_path_rate=0.1`` or ``num_frames=16``.

    A pretrained model is returned in eval mode, a random one in train mode (as ``torch.nn`` builds it). Its
    stored ``img_size`` and ``num_frames`` (the sizes of its position and time embeddings, resized to any
    input) are the file's unless ``overrides`` name them: the stored embeddings are then resized to them
    (nearest, as a forward pass at that size does).
    """
    spec = model_spec(name)
    model = build_model(name, **overrides)
    if pretrained is not None:
        source = hub.download(str(pretrained)) if hub.is_hub_id(str(pretrained)) else Path(pretrained)
        loaded = load_checkpoint(source, num_heads=model.config.num_heads).backbone
        differ = [f"{f} {getattr(loaded.config, f)} (not {getattr(model.config, f)})" for f in ARCHITECTURE_FIELDS
                  if getattr(loaded.config, f) != getattr(model.config, f)]
        if differ:
            raise CheckpointError(f"{pretrained}: not a {name} checkpoint: {', '.join(differ)}")
        sizes = {"img_size": loaded.config.img_size, "num_frames": loaded.config.num_frames}
        sizes.update({key: getattr(model.config, key) for key in sizes if key in overrides})
        state = loaded.state_dict()
        model = EndoFMBackbone(dataclasses.replace(model.config, **sizes))
        # an override of the stored sizes resizes the embeddings as a forward pass at that size would
        with torch.no_grad():
            state["pos_embed"] = torch.cat(loaded._resized_pos_embed(*model.config.grid), dim=1)
            state["time_embed"] = loaded._resized_time_embed(model.config.num_frames)
        model.load_state_dict(state)
        model.eval()
    model.input_spec = dataclasses.replace(spec.input, size=model.config.img_size, frames=model.config.num_frames)
    return model
