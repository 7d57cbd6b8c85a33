"""Checkpoint loading and saving: every layout the original Endo-FM released, and the package's own.

Layouts recognised by :func:`load_checkpoint`:

- ``pretrain``: a full original training checkpoint (``teacher``/``student``; the student's keys carry the
  DDP ``module.`` prefix; ``backbone.``/``head.`` split the two parts; ``args`` is an argparse Namespace);
- ``teacher_flat``: a flat ``backbone.*`` + ``head.*`` dict (``endo_fm.pth``, SVT's Kinetics weights);
- ``polypdiag``: a fine-tuned classifier (``backbone_state_dict`` + ``state_dict`` with ``linear.*``);
- ``backbone``: a bare backbone state dict (keys such as ``cls_token``, ``blocks.0.attn.qkv.weight``);
- ``endofm``: the package's own format, a folder with ``config.json`` and ``model.safetensors``;
- ``training``: a checkpoint of an ``endofm pretrain`` run (``runs/*/checkpoints/*.pt``): the EMA teacher
  or the student at that step, with the architecture's head count from the run's stored config.

The architecture is read off the tensor shapes. Loading is strict: a missing or unexpected backbone key
is an error naming it, never a silent partial load. Files are read safely (:mod:`endofm.models.state`).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file as save_safetensors

from endofm.errors import CheckpointError, InputError
from endofm.io import atomic_write, atomic_write_text
from endofm.models.backbone import BackboneConfig, EndoFMBackbone
from endofm.models.heads import DINOHead, LinearClassifier
from endofm.models.registry import MODEL_CONFIGS
from endofm.models.state import (
    infer_backbone_config,
    infer_dino_head,
    is_stft_state,
    is_transunet_state,
    load_strict,
    read_state,
    strip_module,
)

FORMAT_NAME = "endofm"
TRAINING_FORMAT = "endofm-training"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# The original VisionTransformer's own classifier (``head.*``) is unused by Endo-FM; ignored if present.
IGNORED_BACKBONE_KEYS = ("head.weight", "head.bias")
USED_TOP_LEVEL_KEYS = {"pretrain": (), "polypdiag": ("backbone_state_dict", "state_dict"),
                       "training": ("format", "config", "recipe", "network", "epoch")}


@dataclass
class CheckpointInfo:
    """What :func:`load_checkpoint` found: the layout, which network, epoch and what it left out."""

    path: str
    layout: str
    which: str = "teacher"
    epoch: int | None = None
    ignored: list[str] = field(default_factory=list)
    args: dict | None = None


@dataclass
class LoadedCheckpoint:
    """The networks of a checkpoint; ``backbone`` is in eval mode, the heads are ``None`` when absent."""

    backbone: EndoFMBackbone
    dino_head: DINOHead | None
    classifier: LinearClassifier | None
    info: CheckpointInfo


def _strip(state: Mapping, prefix: str) -> dict:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _is_backbone_dict(state: Mapping) -> bool:
    return "cls_token" in state and "patch_embed.proj.weight" in state


def _split_training(state: Mapping, path: str, which: str) -> tuple[str, dict, dict, dict, dict]:
    """The teacher (the recipe's EMA copy) or the student (the trained network) of a pretraining run's
    training checkpoint; a fine-tuning run's checkpoint has no teacher and is refused with a pointer."""
    recipe = state.get("recipe")
    if not isinstance(recipe, Mapping) or "teacher" not in recipe:
        raise CheckpointError(f"{path}: a fine-tuning run's training checkpoint; load the run's model/ folder "
                              "(or pass it to --resume) instead")
    net = recipe["teacher"] if which == "teacher" else state["network"]
    return "training", _strip(net, "backbone."), _strip(net, "head."), {}, dict(state)


def _stored_num_heads(state: Mapping) -> int | None:
    """The head count of the architecture a training checkpoint's run config names, if it names a known one."""
    model = state.get("config", {}).get("model", {})
    arch = MODEL_CONFIGS.get(model.get("arch"))
    return model.get("num_heads") or (arch.num_heads if arch else None)


def split_original(state: Mapping, path: str, which: str) -> tuple[str, dict, dict, dict, dict]:
    """(layout, backbone dict, head dict, classifier dict, extras) of an original-layout checkpoint."""
    if which not in ("teacher", "student"):
        raise InputError(f"which must be 'teacher' or 'student', got {which!r}")
    if state.get("format") == TRAINING_FORMAT:
        return _split_training(state, path, which)
    if "teacher" in state or "student" in state:
        if which not in state:
            raise CheckpointError(f"{path}: pretraining checkpoint without a {which!r} entry")
        net = strip_module(state[which])
        return "pretrain", _strip(net, "backbone."), _strip(net, "head."), {}, state
    if which == "student":
        raise CheckpointError(f"{path}: which='student' needs a full pretraining checkpoint (teacher + student)")
    if "backbone_state_dict" in state:
        classifier = strip_module(state.get("state_dict", {}))
        return "polypdiag", strip_module(state["backbone_state_dict"]), {}, _strip(classifier, "linear."), state
    for wrapper in ("model", "state_dict", "teacher_backbone"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    flat = strip_module(state)
    if any(key.startswith("backbone.") for key in flat):
        return "teacher_flat", _strip(flat, "backbone."), _strip(flat, "head."), {}, {}
    if _is_backbone_dict(flat):
        return "backbone", flat, {}, {}, {}
    sample = sorted(str(k) for k in state)[:8]
    raise CheckpointError(f"{path}: not an Endo-FM checkpoint layout (top-level keys start {sample})")


def _info_args(state: Mapping) -> dict | None:
    args = state.get("args")
    if isinstance(args, argparse.Namespace):
        return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))}
    return None


def load_checkpoint(
    path: str | os.PathLike, num_heads: int | None = None, which: str = "teacher"
) -> LoadedCheckpoint:
    """Load any Endo-FM checkpoint into a backbone (eval mode) and its heads.

    Args:
        path: an original ``.pth`` (any released layout), a ``.safetensors`` file, a folder written by
            :func:`save_pretrained`, or a pretraining run's training checkpoint.
        num_heads: attention heads; default ``embed_dim // 64`` (the package's own format stores it, and a
            different value is refused; for a training checkpoint the default is its run's architecture).
        which: ``"teacher"`` (default, as the original downstream code) or ``"student"``.

    Example:
        >>> ckpt = load_checkpoint("endo_fm.pth")  # doctest: +SKIP
        >>> ckpt.backbone(video).shape, ckpt.info.layout  # doctest: +SKIP
    """
    path = Path(path)
    if num_heads is not None and num_heads < 1:
        raise InputError(f"num_heads must be at least 1, got {num_heads}")
    if path.is_dir() and (path / CONFIG_FILE).exists():
        return load_backbone_folder(path, read_header(path), num_heads)
    return load_state(read_state(path), path, num_heads, which)


def load_state(state: Mapping, path: str | os.PathLike, num_heads: int | None = None,
               which: str = "teacher") -> LoadedCheckpoint:
    """:func:`load_checkpoint` of a file already read (``state``, from ``path``): the one reader of the
    original's layouts, which the released fine-tuned classifier's loader also takes."""
    path = Path(path)
    _refuse_finetuned_model(state, path)
    layout, backbone_state, head_state, classifier_state, extras = split_original(state, str(path), which)
    if layout == "training":
        num_heads = num_heads or _stored_num_heads(state)
    ignored = [key for key in IGNORED_BACKBONE_KEYS if key in backbone_state]
    for key in ignored:
        backbone_state.pop(key)
    backbone = EndoFMBackbone(infer_backbone_config(backbone_state, num_heads))
    load_strict(backbone, backbone_state, "backbone", str(path))
    dino_head = None
    if head_state:
        dino_head = infer_dino_head(head_state)
        load_strict(dino_head, head_state, "DINO head", str(path))
        dino_head.eval()
    classifier = None
    if classifier_state:
        weight = classifier_state.get("weight")
        if weight is None or weight.ndim != 2:
            raise CheckpointError(f"{path}: classifier state without a 2-D linear.weight")
        classifier = LinearClassifier(weight.shape[1], weight.shape[0])
        load_strict(classifier.linear, classifier_state, "classifier", str(path))
        classifier.eval()
    epoch = extras.get("epoch")
    info = CheckpointInfo(
        path=str(path),
        layout=layout,
        which=which,
        epoch=int(epoch) if isinstance(epoch, (int, float)) else None,
        ignored=ignored + sorted(k for k in extras if k not in USED_TOP_LEVEL_KEYS.get(layout, ()) + (which,)),
        args=_info_args(extras),
    )
    return LoadedCheckpoint(backbone.eval(), dino_head, classifier, info)


def save_pretrained(
    directory: str | os.PathLike,
    backbone: EndoFMBackbone,
    dino_head: DINOHead | None = None,
    classifier: LinearClassifier | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write the package's format: ``config.json`` plus ``model.safetensors`` (keys ``backbone.*``,
    ``head.*``, ``classifier.*``). Both files are written atomically; the weights first."""
    directory = Path(directory)
    tensors = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    if dino_head is not None:
        tensors.update({f"head.{k}": v for k, v in dino_head.state_dict().items()})
    if classifier is not None:
        tensors.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    config = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "backbone": backbone.config.to_dict(),
        "dino_head": dino_head.config if dino_head is not None else None,
        "classifier": classifier.config if classifier is not None else None,
        "metadata": metadata or {},
    }
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_safetensors(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return directory


RELEASED_FINETUNED = {"stft": ("detect", is_stft_state), "transunet": ("segment", is_transunet_state)}
"""The released fine-tuned models that hold no Endo-FM backbone with heads: name -> (task, recogniser)."""


def _refuse_finetuned_model(state: Mapping, path: Path) -> None:
    """A released fine-tuned model that holds no Endo-FM backbone with heads (the CVC TransUNet, the KUMC STFT
    detector) is refused with the readers that take it."""
    for name, (task, matches) in RELEASED_FINETUNED.items():
        if matches(state):
            raise CheckpointError(
                f"{path}: a fine-tuned {name} model ({task}), not a backbone checkpoint; read it "
                f"with endofm.load_finetuned, endofm predict or endofm evaluate {task}")


def read_header(directory: str | os.PathLike) -> dict[str, Any]:
    """A model folder's ``config.json``, parsed and checked once: the folder's header (``format``, ``version``,
    ``backbone`` or ``model`` with its sizes, ``metadata`` with ``task``, ``input`` and ``data``) that every
    folder reader takes, so a folder's file is read once however many readers it passes through."""
    path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not an endofm model config")
    if config.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{directory}: format version {config['version']} is newer than this endofm")
    return config


def load_backbone_folder(directory: str | os.PathLike, config: Mapping[str, Any],
                         num_heads: int | None = None) -> LoadedCheckpoint:
    """A folder of the package's format (:func:`save_pretrained`) whose ``config.json`` is ``config`` (as
    :func:`read_header` read it): its backbone and heads, strictly loaded."""
    directory = Path(directory)
    if "backbone" not in config:
        if config.get("model"):
            raise CheckpointError(f"{directory}: a fine-tuned {config['model']} model, not a backbone checkpoint; "
                                  "read it with endofm.load_finetuned (or endofm predict / evaluate)")
        raise CheckpointError(f"{directory / CONFIG_FILE}: not an endofm model config")
    state = read_state(directory / WEIGHTS_FILE) if (directory / WEIGHTS_FILE).exists() else None
    if state is None:
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    try:
        backbone = EndoFMBackbone(BackboneConfig.from_dict(config["backbone"]))
    except InputError as error:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {error}") from error
    if num_heads is not None and num_heads != backbone.config.num_heads:
        raise InputError(f"num_heads={num_heads} (--num-heads) differs from the {backbone.config.num_heads} heads "
                         f"{directory / CONFIG_FILE} stores; leave it out for a folder")
    load_strict(backbone, _strip(state, "backbone."), "backbone", str(directory))
    dino_head = classifier = None
    if config.get("dino_head"):
        dino_head = DINOHead(**config["dino_head"])
        load_strict(dino_head, _strip(state, "head."), "DINO head", str(directory))
        dino_head.eval()
    if config.get("classifier"):
        classifier = LinearClassifier(**config["classifier"])
        load_strict(classifier, _strip(state, "classifier."), "classifier", str(directory))
        classifier.eval()
    info = CheckpointInfo(path=str(directory), layout="endofm", args=config.get("metadata") or None)
    return LoadedCheckpoint(backbone.eval(), dino_head, classifier, info)


def export_original(path: str | os.PathLike, backbone: EndoFMBackbone, dino_head: DINOHead | None = None) -> Path:
    """Write a flat ``backbone.*`` (+ ``head.*``) dict, the ``endo_fm.pth`` layout the original code reads."""
    path = Path(path)
    state = {f"backbone.{k}": v.detach().cpu() for k, v in backbone.state_dict().items()}
    if dino_head is not None:
        state.update({f"head.{k}": v.detach().cpu() for k, v in dino_head.state_dict().items()})
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path
