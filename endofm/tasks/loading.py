"""One entry point for every fine-tuned model: :func:`load_finetuned`, with :func:`save_finetuned` and
:func:`evaluate_finetuned`.

It reads the original's released fine-tuned checkpoints and ``endofm``'s own fine-tuned folders, and returns
the task, the model (an ``nn.Module`` in eval mode) and the input the model expects
(:class:`~endofm.models.inputs.InputSpec`), so a user can prepare frames the way the model was trained.

Released layouts are those the tasks declare (:attr:`Task.layouts <endofm.tasks.base.Task.layouts>`), tried
in the registry's order on the file's top-level dict: ``polypdiag`` (the PolypDiag classifier,
:mod:`endofm.tasks.classify`), ``transunet`` (the CVC-12k TransUNet, :mod:`endofm.tasks.segment.io`)
and ``stft`` (the KUMC STFT detector, :mod:`endofm.tasks.detect.io`).

Folders: a folder of such a layout (``config.json`` with ``model: transunet`` or ``model: stft``) or a
fine-tuned model folder of ``endofm finetune`` (:func:`read_finetuned`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from endofm.errors import CheckpointError, InputError
from endofm.io import atomic_write
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import CONFIG_FILE, read_header, save_pretrained
from endofm.models.heads import LinearClassifier
from endofm.models.state import read_state
from endofm.tasks.base import FinetunedModel, LoadedFinetuned, ReleasedLayout, Task
from endofm.tasks.folder import read_folder


def _tasks() -> dict[str, Task]:
    """The registry, imported when first needed (``import endofm`` stays light)."""
    from endofm.tasks.registry import TASKS

    return TASKS


def released_layouts() -> list[ReleasedLayout]:
    """Every task's released layouts, in the order :func:`load_finetuned` tries them."""
    return [layout for task in _tasks().values() for layout in task.layouts]


def read_finetuned(path: str | os.PathLike) -> FinetunedModel:
    """A fine-tuned model folder read back as backbone and head (or an original fine-tuned PolypDiag
    classifier checkpoint); :func:`load_finetuned` makes it a runnable model."""
    return read_folder(path, _tasks())


def _from_folder(path: Path, header: dict[str, Any]) -> LoadedFinetuned:
    """An ``endofm finetune`` model folder (backbone + task head) as a runnable model; its metadata holds the
    head's arguments (``head``) and the preprocessing (``data``)."""
    found = read_folder(path, _tasks(), header)
    model, spec = _tasks()[found.task].assemble(found)
    metadata = {**found.metadata, "head": found.head_config, "data": found.data}
    return LoadedFinetuned(found.task, model.eval(), spec, str(path), "endofm", metadata)


def released_layout(path: str | os.PathLike) -> tuple[ReleasedLayout, dict[str, Any]] | None:
    """The released layout of a checkpoint file and its contents, or None (a folder, or no known layout)."""
    if Path(path).is_dir():
        return None
    state = read_state(path)
    for layout in released_layouts():
        if layout.matches(state):
            return layout, state
    return None


def convert_released(path: str | os.PathLike, directory: str | os.PathLike,
                     num_heads: int | None = None) -> LoadedFinetuned | None:
    """Write a released fine-tuned model that is not an Endo-FM backbone with heads (the TransUNet, the STFT)
    as a package folder; None when ``path`` is not such a file (``endofm convert`` then reads it as a
    checkpoint)."""
    found = released_layout(path)
    if found is None or found[0].save is None:
        return None
    layout, state = found
    loaded = layout.load(state, Path(path), num_heads)
    layout.save(loaded, Path(directory))
    return loaded


def describe_finetuned(path: str | os.PathLike, num_heads: int | None = None) -> dict[str, Any] | None:
    """What ``endofm info`` prints of a released model that is not an Endo-FM backbone with heads (a TransUNet,
    an STFT detector; released file or folder); None for anything else."""
    path = Path(path)
    header = None
    if path.is_dir():
        try:
            header = read_header(path)
        except (OSError, CheckpointError):
            return None
        name = header.get("model")
    else:
        found = released_layout(path)
        name = found[0].name if found is not None else None
    if name not in {layout.name for layout in released_layouts() if layout.save is not None}:
        return None
    loaded = _load_folder(path, header, num_heads) if header is not None else load_finetuned(path, num_heads)
    return {"layout": loaded.layout, "task": loaded.task, "model": name,
            name: loaded.model.config.to_dict(),  # type: ignore[union-attr]
            "parameters_millions": round(sum(p.numel() for p in loaded.model.parameters()) / 1e6, 3),
            "input": loaded.input_spec.to_dict()}


def _load_folder(path: Path, header: dict[str, Any], num_heads: int | None) -> LoadedFinetuned:
    """A fine-tuned model folder whose ``config.json`` is ``header`` (:func:`read_header`)."""
    loaded = next((layout.load_folder(path, header) for layout in released_layouts()
                   if layout.load_folder is not None and header.get("model") == layout.name), None)
    loaded = loaded or _from_folder(path, header)
    stored = _stored_num_heads(loaded.model)
    if num_heads is not None and stored is not None and num_heads != stored:
        raise InputError(f"num_heads={num_heads} (--num-heads) differs from the {stored} heads "
                         f"{path / CONFIG_FILE} stores; leave it out for a folder")
    return loaded


def _stored_num_heads(model: Any) -> int | None:
    """The attention heads a folder's model was built with (its config's, or its backbone's)."""
    config = getattr(model, "config", None) or getattr(getattr(model, "backbone", None), "config", None)
    config = getattr(config, "backbone", config)
    heads = getattr(config, "num_heads", None)
    return heads if isinstance(heads, int) else None


def load_finetuned(path: str | os.PathLike, num_heads: int | None = None) -> LoadedFinetuned:
    """Load any fine-tuned model: a released checkpoint (:func:`released_layouts`) or an ``endofm`` folder.

    Args:
        path: the released ``.pth`` (PolypDiag classifier, CVC-12k TransUNet, KUMC STFT), or a model folder.
        num_heads: attention heads of a released checkpoint (not stored in it); default ``hidden // 64``. A
            folder stores them: a different value is refused.

    Loading is strict: a missing, unexpected or misshapen key is a :class:`CheckpointError` naming it.

    Example:
        >>> seg = load_finetuned("cvc.pth")  # doctest: +SKIP
        >>> seg.task, seg.input_spec.channel_order  # doctest: +SKIP
        ('segment', 'BGR')
        >>> logits = seg.model(clip)  # clip [1, 3, T, 224, 224] -> [1, 2, T, 224, 224]  # doctest: +SKIP
    """
    path = Path(path)
    if num_heads is not None and num_heads < 1:
        raise InputError(f"num_heads must be at least 1, got {num_heads}")
    if path.is_dir() and (path / CONFIG_FILE).exists():
        return _load_folder(path, read_header(path), num_heads)
    state = read_state(path)
    layouts = released_layouts()
    for layout in layouts:
        if layout.matches(state):
            return layout.load(state, path, num_heads)
    sample = sorted(str(k) for k in state)[:8]
    known = ", ".join(layout.name for layout in layouts)
    raise CheckpointError(f"{path}: not a fine-tuned model in a known layout ({known}, or an endofm folder); "
                          f"top-level keys start {sample}")


def save_finetuned(directory: str | os.PathLike, loaded: LoadedFinetuned) -> Path:
    """Write a fine-tuned model (:func:`load_finetuned`) in the package's folder format, which
    :func:`load_finetuned` reads back to the same outputs: a TransUNet or STFT detector (released or not) as
    its layout saves it (``endofm convert`` writes the same), a PolypDiag-layout classifier as backbone and
    classifier, and a model folder as its files are.

    Example:
        >>> save_finetuned("models/cvc", load_finetuned("cvc.pth"))  # doctest: +SKIP
    """
    directory = Path(directory)
    for layout in released_layouts():
        if layout.save is not None and layout.name in (loaded.layout, loaded.layout.removeprefix("endofm-")):
            return layout.save(loaded, directory)
    source = Path(loaded.path)
    if source.is_dir():  # an endofm folder: its files as they are, config.json last
        files = sorted((f for f in source.iterdir() if f.is_file()), key=lambda f: f.name == CONFIG_FILE)
        for file in files:
            atomic_write(directory / file.name, lambda tmp, file=file: shutil.copyfile(file, tmp))
        return directory
    backbone, head = getattr(loaded.model, "backbone", None), getattr(loaded.model, "head", None)
    if not isinstance(backbone, EndoFMBackbone) or not isinstance(head, LinearClassifier):
        raise InputError(f"{loaded.path}: a {loaded.layout} model has no folder format")
    return save_pretrained(directory, backbone, classifier=head, metadata={"converted_from": str(source)})


def evaluate_finetuned(loaded: LoadedFinetuned, root: str | os.PathLike, split: str = "test", device: str = "cpu",
                       batch_size: int = 2, progress: bool = False, **options: Any) -> dict[str, Any]:
    """Metrics of a fine-tuned model (:func:`load_finetuned`) on one split of a dataset in its task's original
    layout, with the input the model was trained with; ``progress`` draws a progress bar; ``options`` are the
    task's own (:attr:`Task.evaluate_options <endofm.tasks.base.Task.evaluate_options>`, e.g. ``empty_rule``)."""
    return _tasks()[loaded.task].evaluate(loaded, str(root), split, device, batch_size, progress=progress,
                                          **options)
