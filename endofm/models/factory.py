"""``create_model``: a named backbone, with random weights or pretrained ones from a file, a folder or the Hub.

Every path from weights to a backbone goes through :func:`load_pretrained` (``create_model``, the fine-tuning
and the pretraining recipes' ``model.init``): which file, which keys, which sizes are decided here.

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

from endofm.errors import CheckpointError, InputError
from endofm.models import hub
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import LoadedCheckpoint, load_checkpoint
from endofm.models.registry import backbone_config, build_model, model_spec, pretraining_input

ARCHITECTURE_FIELDS = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "qkv_bias")
"""The fields a pretrained file must share with the model asked for (sizes of embeddings adapt to any input)."""


class ArchitectureError(CheckpointError):
    """A checkpoint of another architecture than the one asked for; ``differences`` names each field."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


def load_pretrained(pretrained: str | os.PathLike, name: str | None = None, num_heads: int | None = None,
                    **overrides: object) -> LoadedCheckpoint:
    """The checkpoint ``pretrained`` with its backbone rebuilt as asked, and its heads as stored.

    Args:
        pretrained: any checkpoint :func:`~endofm.models.checkpoint.load_checkpoint` reads, or
            ``hf-hub:org/name[@revision]`` (:mod:`endofm.models.hub`).
        name: the named architecture the file must have (:data:`ARCHITECTURE_FIELDS`; a
            :class:`ArchitectureError` names the fields that differ); ``None``: the file's own.
        num_heads: the file's head count when it does not store it (shapes do not tell it); default the named
            architecture's, else ``embed_dim // 64``.
        overrides: fields of :class:`~endofm.models.backbone.BackboneConfig` to change, e.g.
            ``drop_path_rate=0.1``. The stored ``img_size`` and ``num_frames`` are kept unless named here: the
            stored embeddings are then resized to them (nearest, as a forward pass at that size does).

    The backbone is returned in eval mode.
    """
    base = model_spec(name).config if name is not None else None
    if num_heads is None and base is not None:
        num_heads = base.num_heads
    source = hub.download(str(pretrained)) if hub.is_hub_id(str(pretrained)) else Path(pretrained)
    loaded = load_checkpoint(source, num_heads=num_heads)
    stored = loaded.backbone.config
    wanted = backbone_config(base or stored, **overrides)
    differ = [f"{f} {getattr(stored, f)} (not {getattr(wanted, f)})" for f in ARCHITECTURE_FIELDS
              if getattr(stored, f) != getattr(wanted, f)]
    if differ:
        raise ArchitectureError(f"{pretrained}: not a {name or 'checkpoint of the sizes asked for'} checkpoint: "
                                f"{', '.join(differ)}", differ)
    sizes = {key: getattr(stored, key) for key in ("img_size", "num_frames") if key not in overrides}
    backbone = EndoFMBackbone(dataclasses.replace(wanted, **sizes))
    state = loaded.backbone.state_dict()
    # an override of the stored sizes resizes the embeddings as a forward pass at that size would
    with torch.no_grad():
        state["pos_embed"] = torch.cat(loaded.backbone.resized_pos_embed(*backbone.config.grid), dim=1)
        state["time_embed"] = loaded.backbone.resized_time_embed(backbone.config.num_frames)
    backbone.load_state_dict(state)
    return dataclasses.replace(loaded, backbone=backbone.eval())


def create_model(name: str | None = "endofm_vit_base", pretrained: str | os.PathLike | None = None,
                 **overrides: object) -> EndoFMBackbone:
    """The backbone ``name`` (:func:`~endofm.models.registry.list_models`), with ``model.input_spec`` the
    input it expects (:class:`~endofm.models.inputs.InputSpec`): the entry point to a model to use.

    Args:
        name: a named model, e.g. ``endofm_vit_base`` (the released architecture); ``None`` takes the
            architecture of ``pretrained``, whatever it is.
        pretrained: ``None`` for random weights; otherwise any checkpoint :func:`load_checkpoint` reads (the
            released ``endo_fm.pth``, a fine-tuned classifier's backbone, a run's teacher folder) or
            ``hf-hub:org/name[@revision]``, a folder of the package's format on the Hugging Face Hub. Its
            architecture must be the named one (a :class:`CheckpointError` names the fields that differ).
        overrides: fields of :class:`~endofm.models.backbone.BackboneConfig` to change, e.g.
            ``drop_path_rate=0.1`` or ``num_frames=16`` (:func:`load_pretrained`).

    A pretrained model is returned in eval mode, a random one in train mode (as ``torch.nn`` builds it).
    :func:`~endofm.models.registry.build_model` builds the bare architecture that training starts from.
    """
    if pretrained is None:
        if name is None:
            raise InputError("create_model(None) takes the architecture of pretrained weights: give pretrained")
        model = build_model(name, **overrides)
    else:
        heads = overrides.get("num_heads")
        model = load_pretrained(pretrained, name, heads if isinstance(heads, int) else None, **overrides).backbone
    model.input_spec = pretraining_input(model.config)
    return model
