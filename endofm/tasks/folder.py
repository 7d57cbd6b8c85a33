"""The fine-tuned model folder: what ``endofm finetune`` saves and :func:`~endofm.tasks.loading.load_finetuned`
reads.

A fine-tuned model folder is the package's model format (``config.json`` + ``model.safetensors``, so
:func:`~endofm.models.checkpoint.load_checkpoint` reads its backbone) plus ``task_head.safetensors`` (the
task's head); ``config.json``'s metadata records ``task``, ``head`` (the head's constructor arguments) and
``data`` (the preprocessing the model was trained with).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn

from endofm.errors import CheckpointError, InputError
from endofm.io import atomic_write
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_backbone_folder, load_checkpoint, save_pretrained
from endofm.models.heads import LinearClassifier
from endofm.models.inputs import InputSpec
from endofm.models.state import read_state
from endofm.tasks.base import FinetunedModel, Task

HEAD_FILE = "task_head.safetensors"


def _backbone_keys(head: nn.Module, backbone: EndoFMBackbone) -> set[str]:
    """Keys of ``head``'s state dict that are the backbone's own tensors (a detector holds its backbone)."""
    shared = {id(t) for t in (*backbone.parameters(), *backbone.buffers())}
    return {name for name, t in head.state_dict(keep_vars=True).items() if id(t) in shared}


def save_task_folder(directory: str | Path, task: str, backbone: EndoFMBackbone, head: nn.Module,
                     head_config: dict[str, Any], data: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write a task's backbone and head as a fine-tuned model folder (see the module docstring);
    ``config.json`` is written last. The head file leaves out the backbone's tensors, which the folder stores
    once. :func:`~endofm.tasks.loading.save_finetuned` writes any loaded fine-tuned model."""
    directory = Path(directory)
    skipped = _backbone_keys(head, backbone)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items() if k not in skipped}
    atomic_write(directory / HEAD_FILE, lambda tmp: save_safetensors(tensors, tmp))
    classifier = head if isinstance(head, LinearClassifier) else None
    metadata = {"task": task, "head": head_config, "data": data, **(extra or {})}
    return save_pretrained(directory, backbone, classifier=classifier, metadata=metadata)


def read_folder(path: str | Path, tasks: Mapping[str, Task], header: Mapping[str, Any] | None = None
                ) -> FinetunedModel:
    """Read a fine-tuned model folder of one of ``tasks`` (each rebuilds its head, :attr:`Task.build_head`), or a
    model that records no task but one of them adopts (:attr:`Task.adopt`: an original fine-tuned
    classifier). ``header`` is the folder's ``config.json`` when the caller has read it
    (:func:`~endofm.models.checkpoint.read_header`)."""
    path = Path(path)
    loaded = load_checkpoint(path) if header is None else load_backbone_folder(path, header)
    metadata = dict(loaded.info.args or {}) if loaded.info.layout == "endofm" else {}
    task = metadata.get("task")
    if task is None:
        for candidate in tasks.values():
            adopted = candidate.adopt(loaded, str(path)) if candidate.adopt is not None else None
            if adopted is not None:
                return adopted
        raise CheckpointError(f"{path}: not a fine-tuned model (no task recorded and no classifier); fine-tune it "
                              f"with `endofm finetune {{{','.join(tasks)}}} --init ...` first")
    if task not in tasks:
        raise CheckpointError(f"{path / CONFIG_FILE}: unknown task {task!r}")
    head_file = path / HEAD_FILE
    if not head_file.exists():
        raise CheckpointError(f"{path}: {HEAD_FILE} is missing (the {task} head)")
    try:
        head = tasks[task].build_head(metadata.get("head") or {}, loaded.backbone)
    except (TypeError, ValueError) as error:
        message = f"{path / CONFIG_FILE}: the recorded {task} head config does not fit ({error})"
        raise CheckpointError(message) from error
    try:
        state = load_safetensors(str(head_file))
    except Exception as error:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{head_file}: unreadable ({error})") from error
    missing, unexpected = head.load_state_dict(state, strict=False)
    stored_once = _backbone_keys(head, loaded.backbone)
    missing = [key for key in missing if key not in stored_once]
    if missing or unexpected:
        raise CheckpointError(f"{head_file}: does not fit the {task} head (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    return FinetunedModel(task, loaded.backbone.eval(), head.eval(), metadata.get("head") or {},
                          metadata.get("data") or {}, str(path), metadata)


Sizes = TypeVar("Sizes")


def read_model_folder(directory: Path, config: Mapping[str, Any], key: str, sizes: Callable[[Any], Sizes],
                      default_input: InputSpec) -> tuple[Sizes, dict[str, Any], InputSpec, dict[str, Any]]:
    """A folder of a model kept in its original key names (the TransUNet, the STFT detector): the sizes recorded
    under ``config[key]`` (``sizes(config[key])``), its metadata, its input (``default_input`` when none is
    recorded) and its weights; a recorded value that does not fit or missing weights is one error naming it."""
    where = str(directory / CONFIG_FILE)
    try:
        recorded = sizes(config[key])
        metadata = dict(config.get("metadata") or {})
        spec = InputSpec.from_dict(metadata["input"]) if "input" in metadata else default_input
    except (InputError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: the recorded {key} config does not fit ({error})") from error
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    return recorded, metadata, spec, read_state(weights)
