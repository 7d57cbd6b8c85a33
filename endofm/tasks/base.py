"""What a fine-tuning task declares, once: :class:`Task`, and the records it is made of.

Each task module (:mod:`endofm.tasks.classify`, :mod:`~endofm.tasks.segment`, :mod:`~endofm.tasks.detect`)
ends with ``TASK = register_task(Task(...))`` (:func:`endofm.tasks.registry.register_task`), which adds it to
:data:`~endofm.tasks.registry.TASKS`; ``endofm finetune``, ``endofm evaluate``, ``endofm predict``,
:func:`~endofm.tasks.loading.load_finetuned`, ``endofm reproduce``, the synthetic corpus and the demo read a
task from there and nowhere else. A new task is one new module that registers its ``Task``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from endofm.data.normalization import NORMALIZATION
from endofm.errors import InputError
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import LoadedCheckpoint
from endofm.models.inputs import InputSpec


@dataclass
class LoadedFinetuned:
    """A fine-tuned model ready to run: ``model`` (eval mode) takes what ``input_spec`` describes.

    ``task`` names its :class:`Task` (``classify``: ``model(clip [B, 3, T, H, W]) -> logits [B, classes]``;
    ``segment``: ``-> logits [B, classes, T, H, W]``; ``detect``); ``layout`` names the file's layout.
    """

    task: str
    model: nn.Module
    input_spec: InputSpec
    path: str
    layout: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetunedModel:
    """A fine-tuned model folder read back (:func:`~endofm.tasks.folder.read_folder`): its task, backbone,
    head, and the metadata it was saved with."""

    task: str
    backbone: EndoFMBackbone
    head: nn.Module
    head_config: dict[str, Any]
    data: dict[str, Any]
    path: str
    metadata: dict[str, Any] = field(default_factory=dict)


def preset_input(normalization: str, size: tuple[int, int], frames: int | None, resize: str = "stretch",
                 channel_order: str = "RGB", minmax: bool = False) -> InputSpec:
    """An :class:`InputSpec` from one of the package's normalisation presets (``imagenet``, ``polypdiag``,
    ``half``)."""
    if normalization not in NORMALIZATION:
        raise InputError(f"unknown normalisation preset {normalization!r}; choose from {sorted(NORMALIZATION)}")
    mean, std = NORMALIZATION[normalization]
    return InputSpec(size=size, frames=frames, channel_order=channel_order, mean=mean, std=std, minmax=minmax,
                     resize=resize)


@dataclass(frozen=True)
class ReleasedLayout:
    """A released checkpoint layout: ``matches(state)`` recognises the file's top-level dict and
    ``load(state, path, num_heads)`` builds the model from it. A model that is not an Endo-FM backbone with a
    head (the TransUNet, the STFT detector) also has ``save(loaded, directory)``, which writes it as a package
    folder (``config.json`` with ``model: <name>``; ``endofm convert``), and ``load_folder(directory,
    config)``, which reads that folder back; without them ``endofm convert`` reads the file as an Endo-FM
    checkpoint (the PolypDiag classifier)."""

    name: str
    matches: Callable[[Mapping[str, Any]], bool]
    load: Callable[[dict[str, Any], Path, int | None], LoadedFinetuned]
    save: Callable[[LoadedFinetuned, Path], Path] | None = None
    load_folder: Callable[[Path, Mapping[str, Any]], LoadedFinetuned] | None = None


@dataclass
class Prediction:
    """A task's predictions on one video: ``report`` joins ``predictions.json`` (its ``frames`` holds one dict
    per frame, which the task's ``draw`` and ``csv_rows`` read) and each of ``arrays`` (one entry per frame)
    is written as ``<name>.npz``."""

    report: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskOption:
    """A task's own command-line option (``endofm evaluate TASK`` or ``endofm predict``): its value reaches the
    task's function as the keyword :attr:`dest`."""

    flag: str
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    choices: tuple[Any, ...] | None = None

    @property
    def dest(self) -> str:
        """The keyword argument: ``--reference-seed`` -> ``reference_seed``."""
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class PaperResult:
    """The task's row of the paper's table: our ``metric`` (its name in our metrics), the paper's ``label``
    for it, the paper's figure, the original README's figure of the released model, and the split the original
    reports (evaluated by ``endofm reproduce --evaluate-only``)."""

    metric: str
    label: str
    paper: float
    released: float
    split: str


@dataclass(frozen=True)
class SyntheticLayout:
    """The task's dataset in the synthetic corpus (``endofm data synth``, the demo): ``write(root, videos,
    seed)`` writes it into ``root``, the corpus's sub-folder ``folder``, from ``videos`` (the corpus's videos
    per labelled layout) and returns its entry of ``corpus.json``. ``write`` is a module-level function (the
    corpus is written in several processes)."""

    folder: str
    write: Callable[[Path, int, int], dict[str, Any]]


@dataclass(frozen=True)
class DemoSettings:
    """How ``endofm demo`` fine-tunes the task: with the recipe ``recipe`` (``original_recipe``, when set,
    with ``--original-models``) on the sub-folder ``folder`` of the demo's data, for ``epochs`` epochs
    (``quick_epochs`` with ``--quick``)."""

    folder: str
    recipe: str
    epochs: int
    quick_epochs: int
    original_recipe: str = ""


@dataclass(frozen=True)
class Task:
    """Everything the package knows of one fine-tuning task.

    Fine-tuning: ``config_class`` (its YAML recipes are ``configs/finetune/<name>*.yaml``) and
    ``finetune(config, resume)`` (the run folder gets ``model/``, ``metrics.json``, plots).

    The saved model: ``build_head(head_config, backbone)`` rebuilds the head a folder records and
    ``assemble(found)`` makes the runnable network and its input of a folder read back; ``adopt(loaded,
    path)`` reads a model that records no task but holds this task's head (an original fine-tuned
    classifier), else None; ``layouts`` are the original's released files of the task.

    Applying it: ``evaluate(loaded, root, split, device, batch_size, progress=..., **options)`` gives the
    metrics on a split of a dataset in ``dataset`` layout; ``predict(loaded, reader, device, progress,
    **options)`` gives a :class:`Prediction` of a video; ``draw(image, frame, scale, arrays)`` draws one
    frame's predictions (``scale``: display over video pixels, (y, x); ``arrays``: each of the prediction's
    arrays at that frame)
    and ``csv_rows(frames)`` gives the CSV header and rows. ``evaluate_options`` and ``predict_options`` are
    the task's own command-line options.

    ``endofm reproduce``: ``dataset_folders`` (sub-folders of ``--data`` tried in order), ``title``,
    ``paper``, ``model_name(config)`` (the model a run's config trains, in words) and
    ``dataset_overrides(recipe, folder)`` (overrides a dataset needs to run a recipe, and a note saying so).
    ``caveat(test_metrics)``: a sentence when the metrics show the model did not learn the task (the demo's
    report), else None.

    Synthetic data and the demo: ``synthetic`` (the task's layout in the synthetic corpus) and ``demo`` (how
    the demo fine-tunes it); a task without them is left out of the corpus and the demo.
    """

    name: str
    help: str
    title: str
    dataset: str
    dataset_folders: tuple[str, ...]
    config_class: type
    finetune: Callable[..., dict[str, Any]]
    build_head: Callable[[dict[str, Any], EndoFMBackbone], nn.Module]
    assemble: Callable[[FinetunedModel], tuple[nn.Module, InputSpec]]
    evaluate: Callable[..., dict[str, Any]]
    predict: Callable[..., Prediction]
    draw: Callable[[Image.Image, dict[str, Any], tuple[float, float], dict[str, np.ndarray]], Image.Image]
    csv_rows: Callable[[list[dict[str, Any]]], tuple[list[str], list[list[Any]]]]
    paper: PaperResult
    model_name: Callable[[Mapping[str, Any]], str]
    released_file: str = ""
    """The original's released fine-tuned model of the task (e.g. ``cvc.pth``), named in help texts."""
    layouts: tuple[ReleasedLayout, ...] = ()
    adopt: Callable[[LoadedCheckpoint, str], FinetunedModel | None] | None = None
    evaluate_options: tuple[TaskOption, ...] = ()
    predict_options: tuple[TaskOption, ...] = ()
    dataset_overrides: Callable[[str, Path], tuple[list[str], str]] | None = None
    caveat: Callable[[Mapping[str, Any]], str | None] | None = None
    synthetic: SyntheticLayout | None = None
    demo: DemoSettings | None = None
