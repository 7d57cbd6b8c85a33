"""The STFT detector's files: the released ``kumc.pth`` layout (:data:`LAYOUT`, read by
:func:`~endofm.tasks.loading.load_finetuned`) and the package's folder of it (:func:`save_folder`,
:func:`load_folder`)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file as save_safetensors

from endofm.data.datasets.kumc import KUMCDataset
from endofm.errors import CheckpointError
from endofm.io import atomic_write, atomic_write_text
from endofm.models.checkpoint import CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, WEIGHTS_FILE
from endofm.models.detection.stft import STFTConfig, STFTDetector
from endofm.models.detection.stft_state import stft_from_state
from endofm.models.detection.transform import STFT_INPUT
from endofm.models.inputs import InputSpec
from endofm.models.state import is_stft_state
from endofm.tasks.base import LoadedFinetuned, ReleasedLayout
from endofm.tasks.folder import read_model_folder

MODEL_NAME = "stft"


def matches_released(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's top-level dict is the released KUMC layout (``{"model": STFT state, ...}``) or a
    bare STFT state dict."""
    return is_stft_state(state)


def load_released(state: dict[str, Any], path: Path, num_heads: int | None) -> LoadedFinetuned:
    """The released ``kumc.pth`` layout: only ``model`` is read (``optimizer``, ``scheduler`` and
    ``iteration`` are the training state; the metadata's ``ignored`` names the entries left unread)."""
    model_state = state["model"] if isinstance(state.get("model"), dict) else state
    model = stft_from_state(model_state, num_heads, str(path))
    iteration = state.get("iteration")
    ignored = sorted(str(k) for k in state if k != "model") if model_state is not state else []
    return LoadedFinetuned("detect", model, STFT_INPUT, str(path), MODEL_NAME,
                           {"source": "original KUMC STFT detector", "classes": list(KUMCDataset.classes),
                            "iteration": iteration if isinstance(iteration, int) else None,
                            "num_heads": model.config.backbone.num_heads, "ignored": ignored})


def save_folder(directory: str | os.PathLike, model: STFTDetector, spec: InputSpec = STFT_INPUT,
                metadata: dict[str, Any] | None = None) -> Path:
    """The detector in the package's folder format: ``model.safetensors`` (the original's key names) and
    ``config.json`` (``model: stft``, its sizes at inference, ``metadata`` with ``task: detect`` and the input
    spec), each written atomically, the weights first."""
    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"task": "detect", "input": spec.to_dict(), "classes": list(KUMCDataset.classes), **(metadata or {})}
    config = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": MODEL_NAME,
              "stft": inference_config(model.config).to_dict(),
              "metadata": meta}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_safetensors(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return directory


def save_released(loaded: LoadedFinetuned, directory: Path) -> Path:
    """``endofm convert`` of a released STFT checkpoint."""
    return save_folder(directory, loaded.model, loaded.input_spec,  # type: ignore[arg-type]
                       {"converted_from": loaded.path, "iteration": loaded.metadata.get("iteration")})


def load_folder(directory: Path, config: dict[str, Any]) -> LoadedFinetuned:
    """A folder written by :func:`save_folder`."""
    sizes, metadata, spec, state = read_model_folder(directory, config, "stft", STFTConfig.from_dict, STFT_INPUT)
    model = stft_from_state(state, sizes.backbone.num_heads, str(directory / WEIGHTS_FILE))
    if model.config != sizes:
        raise CheckpointError(f"{directory / CONFIG_FILE}: the recorded sizes {sizes} differ from the weights' "
                              f"{model.config}")
    return LoadedFinetuned("detect", model, spec, str(directory), "endofm-stft", metadata)


LAYOUT = ReleasedLayout(MODEL_NAME, matches_released, load_released, save_released, load_folder)
"""The released ``kumc.pth`` and its package folder."""


def inference_config(config: STFTConfig) -> STFTConfig:
    """The sizes a saved detector records: stochastic depth is a training setting (off at inference)."""
    return dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, drop_path_rate=0.0))
