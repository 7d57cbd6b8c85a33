"""One entry point for every fine-tuned model: :func:`load_finetuned`.

It reads the original's released fine-tuned checkpoints and ``endofm``'s own fine-tuned folders, and returns
the task, the model (an ``nn.Module`` in eval mode) and the input the model expects (:class:`InputSpec`), so
a user can prepare frames the way the model was trained.

Released layouts are recognised by :data:`RELEASED_LAYOUTS`, a list of :class:`ReleasedLayout` entries tried
in order on the file's top-level dict; a new layout is one more entry (:func:`register_layout`):

- ``polypdiag``: the PolypDiag classifier (``backbone_state_dict`` + ``state_dict`` with ``linear.*``);
- ``transunet``: the CVC-12k TransUNet (a plain state dict with ``transformer.encoder.cls_token``, as
  ``TransUNet/trainer.py`` saves it; a DataParallel ``module.`` prefix is stripped).
- ``stft``: the KUMC STFT detector (``{"model", "optimizer", "scheduler", "iteration"}`` as the original's
  checkpointer saves it; only ``model`` is read; :mod:`endofm.tasks.detect_stft`).

Folders: a TransUNet folder (``config.json`` with ``model: transunet``) or a fine-tuned model folder of
``endofm finetune`` (:func:`~endofm.tasks.folder.read_finetuned`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from endofm.data.video import NORMALIZATION
from endofm.errors import CheckpointError, InputError
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import (
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    IGNORED_BACKBONE_KEYS,
    WEIGHTS_FILE,
    _load_strict,
    _split_original,
    infer_backbone_config,
    read_state,
)
from endofm.models.heads import LinearClassifier
from endofm.models.inputs import InputSpec
from endofm.models.transunet import (
    INPUT_SIZE,
    MODEL_NAME,
    TransUNetConfig,
    infer_transunet_config,
    load_transunet_state,
)

TRANSUNET_INPUT = InputSpec(size=(INPUT_SIZE, INPUT_SIZE), frames=None, channel_order="BGR", mean=(0.5, 0.5, 0.5),
                            std=(0.5, 0.5, 0.5), minmax=True, resize="stretch")
"""The original CVC-12k input: 224 x 224 (stretched), whole sequences, BGR, per-image min-max, then 0.5/0.5."""


def preset_input(normalization: str, size: tuple[int, int], frames: int | None, resize: str = "stretch",
                 channel_order: str = "RGB", minmax: bool = False) -> InputSpec:
    """An :class:`InputSpec` from one of the package's normalisation presets (``imagenet``, ``polypdiag``,
    ``half``)."""
    if normalization not in NORMALIZATION:
        raise InputError(f"unknown normalisation preset {normalization!r}; choose from {sorted(NORMALIZATION)}")
    mean, std = NORMALIZATION[normalization]
    return InputSpec(size=size, frames=frames, channel_order=channel_order, mean=mean, std=std, minmax=minmax,
                     resize=resize)


@dataclass
class LoadedFinetuned:
    """A fine-tuned model ready to run: ``model`` (eval mode) takes what ``input`` describes.

    ``task`` is ``classify`` (``model(clip [B, 3, T, H, W]) -> logits [B, classes]``), ``segment``
    (``-> logits [B, classes, T, H, W]``) or ``detect``; ``layout`` names the file's layout.
    """

    task: str
    model: nn.Module
    input: InputSpec
    path: str
    layout: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReleasedLayout:
    """A released checkpoint layout: ``matches(state)`` recognises the file's top-level dict and
    ``load(state, path, num_heads)`` builds the model from it; ``save(loaded, directory)`` writes it as a
    package folder that :func:`load_finetuned` reads back (None: ``endofm convert`` handles it as an Endo-FM
    checkpoint, as the PolypDiag classifier)."""

    name: str
    matches: Callable[[Mapping[str, Any]], bool]
    load: Callable[[dict[str, Any], Path, int | None], LoadedFinetuned]
    save: Callable[[LoadedFinetuned, Path], Path] | None = None


def _load_polypdiag(state: dict[str, Any], path: Path, num_heads: int | None) -> LoadedFinetuned:
    from endofm.tasks.classify import CLASSIFY_DEFAULT_DATA, ClassifierNetwork

    _, backbone_state, _, classifier_state, _ = _split_original(state, str(path), "teacher")
    for key in IGNORED_BACKBONE_KEYS:
        backbone_state.pop(key, None)
    backbone = EndoFMBackbone(infer_backbone_config(backbone_state, num_heads))
    _load_strict(backbone, backbone_state, "backbone", str(path))
    weight = classifier_state.get("weight")
    if weight is None or weight.ndim != 2:
        raise CheckpointError(f"{path}: state_dict holds no 2-D linear.weight (the PolypDiag classifier)")
    head = LinearClassifier(weight.shape[1], weight.shape[0])
    _load_strict(head.linear, classifier_state, "classifier", str(path))
    data = CLASSIFY_DEFAULT_DATA
    spec = preset_input(data["normalization"], (data["size"], data["size"]), data["num_frames"],
                        resize="short_side_center_crop")
    return LoadedFinetuned("classify", ClassifierNetwork(backbone, head).eval(), spec, str(path), "polypdiag",
                           {"source": "original fine-tuned PolypDiag classifier"})


def _transunet_state(state: Mapping[str, Any]) -> dict[str, Any]:
    if state and all(str(key).startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def _load_transunet(state: dict[str, Any], path: Path, num_heads: int | None) -> LoadedFinetuned:
    state = _transunet_state(state)
    model = load_transunet_state(state, infer_transunet_config(state, num_heads, str(path)), str(path))
    return LoadedFinetuned("segment", model, TRANSUNET_INPUT, str(path), "transunet",
                           {"source": "original CVC-12k TransUNet", "num_heads": model.config.num_heads})


def _stft(name: str) -> Callable[..., Any]:
    """A function of :mod:`endofm.tasks.detect_stft` (the KUMC STFT detector), imported when first called."""

    def call(*args: Any) -> Any:
        from endofm.tasks import detect_stft

        return getattr(detect_stft, name)(*args)

    return call


RELEASED_LAYOUTS: list[ReleasedLayout] = [
    ReleasedLayout("polypdiag", lambda state: "backbone_state_dict" in state, _load_polypdiag),
    ReleasedLayout("transunet", lambda state: "transformer.encoder.cls_token" in _transunet_state(state),
                   _load_transunet,
                   lambda loaded, directory: save_transunet_folder(directory, loaded.model, loaded.input,
                                                                   {"converted_from": loaded.path})),
    ReleasedLayout("stft", _stft("matches_released"), _stft("load_released"), _stft("save_released")),
]
"""Released layouts :func:`load_finetuned` recognises, tried in order."""


def register_layout(layout: ReleasedLayout) -> None:
    """Add a released layout (replacing one of the same name)."""
    RELEASED_LAYOUTS[:] = [entry for entry in RELEASED_LAYOUTS if entry.name != layout.name] + [layout]


def save_transunet_folder(directory: str | os.PathLike, model: nn.Module, spec: InputSpec = TRANSUNET_INPUT,
                          metadata: dict[str, Any] | None = None) -> Path:
    """A TransUNet as a fine-tuned model folder (``task: segment``, its input spec in the metadata)."""
    from endofm.models.transunet import save_transunet

    meta = {"task": "segment", "input": spec.to_dict(), **(metadata or {})}
    return save_transunet(directory, model, meta)  # type: ignore[arg-type]


def _load_transunet_folder(directory: Path, config: Mapping[str, Any]) -> LoadedFinetuned:
    where = str(directory / CONFIG_FILE)
    try:
        sizes = TransUNetConfig.from_dict(config["transunet"])
        metadata = dict(config.get("metadata") or {})
        spec = InputSpec.from_dict(metadata["input"]) if "input" in metadata else TRANSUNET_INPUT
    except (InputError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: the recorded TransUNet config does not fit ({error})") from error
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    model = load_transunet_state(read_state(weights), sizes, str(weights))
    return LoadedFinetuned("segment", model, spec, str(directory), "endofm-transunet", metadata)


def _from_read_finetuned(path: Path) -> LoadedFinetuned:
    """An ``endofm finetune`` model folder (backbone + task head) as a runnable model."""
    from endofm.tasks.classify import ClassifierNetwork
    from endofm.tasks.folder import read_finetuned
    from endofm.tasks.segment import SegmentationNetwork

    found = read_finetuned(path)
    data = found.data
    if found.task == "classify":
        model: nn.Module = ClassifierNetwork(found.backbone, found.head)
        spec = preset_input(data["normalization"], (int(data["size"]),) * 2, int(data["num_frames"]),
                            resize="short_side_center_crop")
    elif found.task == "segment":
        model = SegmentationNetwork(found.backbone, found.head)
        spec = preset_input(data["normalization"], (int(data["size"]),) * 2, int(data["clip_length"]),
                            channel_order=data.get("channel_order", "RGB"), minmax=bool(data.get("minmax", False)))
    else:
        model = found.head
        spec = preset_input(data["normalization"], (int(data["short_side"]), int(data["max_size"])),
                            len(data["ref_offsets"]) + 1, resize="short_side")
    return LoadedFinetuned(found.task, model.eval(), spec, str(path), "endofm", found.metadata)


def released_layout(path: str | os.PathLike) -> tuple[ReleasedLayout, dict[str, Any]] | None:
    """The released layout of a checkpoint file and its contents, or None (a folder, or no known layout)."""
    if Path(path).is_dir():
        return None
    state = read_state(path)
    for layout in RELEASED_LAYOUTS:
        if layout.matches(state):
            return layout, state
    return None


def convert_released(path: str | os.PathLike, directory: str | os.PathLike,
                     num_heads: int | None = None) -> LoadedFinetuned | None:
    """Write a released fine-tuned model that is not an Endo-FM backbone with heads (the TransUNet) as a
    package folder; None when ``path`` is not such a file (``endofm convert`` then reads it as a checkpoint)."""
    found = released_layout(path)
    if found is None or found[0].save is None:
        return None
    layout, state = found
    loaded = layout.load(state, Path(path), num_heads)
    layout.save(loaded, Path(directory))
    return loaded


def describe_finetuned(path: str | os.PathLike, num_heads: int | None = None) -> dict[str, Any] | None:
    """What ``endofm info`` prints of a TransUNet or an STFT detector (released file or folder); None for
    anything else."""
    path = Path(path)
    if path.is_dir():
        try:
            name = json.loads((path / CONFIG_FILE).read_text()).get("model")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
    else:
        found = released_layout(path)
        name = found[0].name if found is not None else None
    if name not in (MODEL_NAME, "stft"):
        return None
    loaded = load_finetuned(path, num_heads=num_heads)
    return {"layout": loaded.layout, "task": loaded.task, "model": name,
            name: loaded.model.config.to_dict(),  # type: ignore[union-attr]
            "parameters_millions": round(sum(p.numel() for p in loaded.model.parameters()) / 1e6, 3),
            "input": loaded.input.to_dict()}


def load_finetuned(path: str | os.PathLike, num_heads: int | None = None) -> LoadedFinetuned:
    """Load any fine-tuned model: a released checkpoint (:data:`RELEASED_LAYOUTS`) or an ``endofm`` folder.

    Args:
        path: the released ``.pth`` (PolypDiag classifier, CVC-12k TransUNet, ...), or a model folder.
        num_heads: attention heads of a released checkpoint (not stored in it); default ``hidden // 64``.

    Loading is strict: a missing, unexpected or misshapen key is a :class:`CheckpointError` naming it.

    Example:
        >>> seg = load_finetuned("cvc.pth")  # doctest: +SKIP
        >>> seg.task, seg.input.channel_order  # doctest: +SKIP
        ('segment', 'BGR')
        >>> logits = seg.model(clip)  # clip [1, 3, T, 224, 224] -> [1, 2, T, 224, 224]  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).exists():
        try:
            config = json.loads((path / CONFIG_FILE).read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path / CONFIG_FILE}: not valid JSON ({error})") from error
        if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{path / CONFIG_FILE}: not an endofm model config")
        if config.get("version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: format version {config['version']} is newer than this endofm")
        if config.get("model") == MODEL_NAME:
            return _load_transunet_folder(path, config)
        if config.get("model") == "stft":
            return _stft("load_folder")(path, config)
        return _from_read_finetuned(path)
    state = read_state(path)
    for layout in RELEASED_LAYOUTS:
        if layout.matches(state):
            return layout.load(state, path, num_heads)
    sample = sorted(str(k) for k in state)[:8]
    known = ", ".join(layout.name for layout in RELEASED_LAYOUTS)
    raise CheckpointError(f"{path}: not a fine-tuned model in a known layout ({known}, or an endofm folder); "
                          f"top-level keys start {sample}")
