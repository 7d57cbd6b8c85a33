"""The segmentation task's saved models: the original CVC-12k segmenter (TransUNet,
:mod:`endofm.models.segmentation.transunet`) in its released ``cvc.pth`` layout and its package folder, and the
network of a package folder with the lighter decoder (:func:`assemble_network`).

The released file is a plain state dict with ``transformer.encoder.cls_token``, as ``TransUNet/trainer.py``
saves it (a DataParallel ``module.`` prefix is stripped); the folder is ``config.json`` with
``model: transunet`` and its sizes, ``model.safetensors``, and the input spec in the metadata.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from endofm.models.checkpoint import WEIGHTS_FILE
from endofm.models.inputs import InputSpec
from endofm.models.segmentation.decoder import SegmentationNetwork
from endofm.models.segmentation.transunet import (
    INPUT_SIZE,
    MODEL_NAME,
    TransUNetConfig,
    infer_transunet_config,
    load_transunet_state,
    save_transunet,
)
from endofm.models.state import is_transunet_state, strip_module
from endofm.tasks.base import FinetunedModel, LoadedFinetuned, ReleasedLayout, preset_input
from endofm.tasks.folder import read_model_folder

TASK_NAME = "segment"
TRANSUNET_INPUT = InputSpec(size=(INPUT_SIZE, INPUT_SIZE), frames=None, channel_order="BGR", mean=(0.5, 0.5, 0.5),
                            std=(0.5, 0.5, 0.5), minmax=True, resize="stretch")
"""The original CVC-12k input: 224 x 224 (stretched), whole sequences, BGR, per-image min-max, then 0.5/0.5."""


def load_released(state: dict[str, Any], path: Path, num_heads: int | None) -> LoadedFinetuned:
    """The released ``cvc.pth`` layout."""
    state = strip_module(state, only_if_all=True)
    model = load_transunet_state(state, infer_transunet_config(state, num_heads, str(path)), str(path))
    return LoadedFinetuned(TASK_NAME, model, TRANSUNET_INPUT, str(path), MODEL_NAME,
                           {"source": "original CVC-12k TransUNet", "num_heads": model.config.num_heads})


def save_transunet_folder(directory: str | os.PathLike, model: nn.Module, spec: InputSpec = TRANSUNET_INPUT,
                          metadata: dict[str, Any] | None = None) -> Path:
    """A TransUNet as a fine-tuned model folder (``task: segment``, its input spec in the metadata)."""
    meta = {"task": TASK_NAME, "input": spec.to_dict(), **(metadata or {})}
    return save_transunet(directory, model, meta)  # type: ignore[arg-type]


def load_folder(directory: Path, config: Mapping[str, Any]) -> LoadedFinetuned:
    """A folder written by :func:`save_transunet_folder`."""
    sizes, metadata, spec, state = read_model_folder(directory, config, "transunet", TransUNetConfig.from_dict,
                                                     TRANSUNET_INPUT)
    model = load_transunet_state(state, sizes, str(directory / WEIGHTS_FILE))
    return LoadedFinetuned(TASK_NAME, model, spec, str(directory), "endofm-transunet", metadata)


LAYOUT = ReleasedLayout(
    MODEL_NAME, is_transunet_state, load_released,
    lambda loaded, directory: save_transunet_folder(directory, loaded.model, loaded.input_spec,
                                                    {"converted_from": loaded.path}),
    load_folder)
"""The released ``cvc.pth`` and its package folder."""


def assemble_network(found: FinetunedModel) -> tuple[nn.Module, InputSpec]:
    """The network and input spec of a package folder of the lighter decoder (backbone + decoder head)."""
    data = found.data
    spec = preset_input(data["normalization"], (int(data["size"]),) * 2, int(data["clip_length"]),
                        channel_order=data.get("channel_order", "RGB"), minmax=bool(data.get("minmax", False)))
    return SegmentationNetwork(found.backbone, found.head), spec
