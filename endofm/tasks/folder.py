"""The fine-tuned model folder: what ``endofm finetune`` saves and ``endofm predict`` reads.

A fine-tuned model folder is the package's model format (``config.json`` + ``model.safetensors``, so
:func:`~endofm.models.checkpoint.load_checkpoint` reads its backbone) plus ``task_head.safetensors`` (the
task's head); ``config.json``'s metadata records ``task``, ``head`` (the head's constructor arguments) and
``data`` (the preprocessing the model was trained with).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn

from endofm.errors import CheckpointError
from endofm.io import atomic_write
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import CONFIG_FILE, load_checkpoint, save_pretrained
from endofm.models.heads import LinearClassifier

TASKS = ("classify", "segment", "detect")
HEAD_FILE = "task_head.safetensors"


def _backbone_keys(head: nn.Module, backbone: EndoFMBackbone) -> set[str]:
    """Keys of ``head``'s state dict that are the backbone's own tensors (a detector holds its backbone)."""
    shared = {id(t) for t in (*backbone.parameters(), *backbone.buffers())}
    return {name for name, t in head.state_dict(keep_vars=True).items() if id(t) in shared}


def save_finetuned(directory: str | Path, task: str, backbone: EndoFMBackbone, head: nn.Module,
                   head_config: dict[str, Any], data: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write a fine-tuned model folder (see the module docstring); ``config.json`` is written last. The head
    file leaves out the backbone's tensors, which the folder stores once."""
    directory = Path(directory)
    skipped = _backbone_keys(head, backbone)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items() if k not in skipped}
    atomic_write(directory / HEAD_FILE, lambda tmp: save_safetensors(tensors, tmp))
    classifier = head if isinstance(head, LinearClassifier) else None
    metadata = {"task": task, "head": head_config, "data": data, **(extra or {})}
    return save_pretrained(directory, backbone, classifier=classifier, metadata=metadata)


@dataclass
class FinetunedModel:
    """A fine-tuned model read back: its task, backbone, head, and the metadata it was saved with."""

    task: str
    backbone: EndoFMBackbone
    head: nn.Module
    head_config: dict[str, Any]
    data: dict[str, Any]
    path: str
    metadata: dict[str, Any] = field(default_factory=dict)


def read_finetuned(path: str | Path) -> FinetunedModel:
    """Load a fine-tuned model folder, or an original fine-tuned PolypDiag classifier checkpoint."""
    from endofm.tasks.classify import CLASSIFY_DEFAULT_DATA

    path = Path(path)
    loaded = load_checkpoint(path)
    metadata = dict(loaded.info.args or {}) if loaded.info.layout == "endofm" else {}
    task = metadata.get("task")
    if task is None:
        if loaded.classifier is not None:
            config = loaded.classifier.config
            return FinetunedModel("classify", loaded.backbone, loaded.classifier, config, dict(CLASSIFY_DEFAULT_DATA),
                                  str(path), {"source": "original fine-tuned classifier"})
        raise CheckpointError(f"{path}: not a fine-tuned model (no task recorded and no classifier); fine-tune it "
                              "with `endofm finetune {classify,segment,detect} --init ...` first")
    if task not in TASKS:
        raise CheckpointError(f"{path / CONFIG_FILE}: unknown task {task!r}")
    head_file = path / HEAD_FILE
    if not head_file.exists():
        raise CheckpointError(f"{path}: {HEAD_FILE} is missing (the {task} head)")
    try:
        head = build_head(task, metadata.get("head") or {}, loaded.backbone)
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


def build_head(task: str, config: dict[str, Any], backbone: EndoFMBackbone) -> nn.Module:
    """The head of a task from its recorded constructor arguments."""
    if task == "classify":
        return LinearClassifier(**config)
    if task == "segment":
        from endofm.tasks.segment import SegmentationDecoder

        return SegmentationDecoder(**config)
    from endofm.tasks.detect import build_detector

    return build_detector(backbone, **config)
