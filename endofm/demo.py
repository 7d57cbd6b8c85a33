"""The main job on the embedded synthetic endoscopy corpus, from pretraining to a report.

Stages: write a synthetic corpus (unlabelled pretraining videos and the PolypDiag, CVC-ClinicDB and KUMC
layouts); pretrain the micro backbone (the ``cpu_micro`` recipe) for a step budget; compare the
frozen features of the pretrained teacher with three random backbones of the same architecture (k-NN and
linear probe, of the CLS token and of the max-pooled patch tokens, on a separate held-out PolypDiag-layout
set); fine-tune classification (on that set: 60 test videos rather than the 20 of the corpus's PolypDiag
layout), segmentation and detection from the teacher (the ``*_cpu`` recipes, or with ``original_models`` the
original's TransUNet and STFT); run ``predict`` with
the segmenter on a CVC test sequence (drawn beside its ground truth) and draw the classifier's confusion
matrix, ROC and precision-recall curves; draw the teacher's attention on one clip; and write ``report.md`` and
``report.html`` (see :mod:`endofm.report.report`). Everything lands in one run folder.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from endofm.config import load_config
from endofm.data.datasets.cvc import read_sequence_list
from endofm.data.datasets.kumc import POLYP_CLASSES, read_voc
from endofm.data.synthetic import write_polypdiag
from endofm.data.video import VideoReader
from endofm.engine.logging import curve_name, read_jsonl
from endofm.errors import InputError
from endofm.io import atomic_write, atomic_write_text, claim_output
from endofm.models.checkpoint import load_checkpoint
from endofm.models.registry import build_model
from endofm.pretrain import PretrainConfig, pretrain
from endofm.report.attention import attention_maps, save_attention
from endofm.report.figures import classification_figure, segmentation_figure
from endofm.report.labels import draw_label
from endofm.report.report import FROZEN_PROBES, write_report
from endofm.tasks.base import DemoSettings
from endofm.tasks.classify import polypdiag_dataset, predict_probabilities
from endofm.tasks.corpus import write_synthetic_corpus
from endofm.tasks.loading import load_finetuned
from endofm.tasks.predict import predict_video
from endofm.tasks.probe import evaluate_frozen_pools
from endofm.tasks.registry import TASKS

PRETRAIN_RECIPE = "cpu_micro"
RANDOM_BASELINES = 3
"""Random initialisations the pretrained teacher's frozen features are compared with (they spread by several
points of accuracy, so one is not a baseline)."""
PRETRAIN_WORKERS = 2
"""DataLoader processes that decode pretraining clips while the model trains (the teacher is the same with any
number)."""
CLIP_FRAMES, CLIP_SIZE = 16, 64
"""Frames and pixels of the pretraining clips and probe videos: the micro backbone's input size."""
SUBFOLDERS = ("data", "pretrain", "finetune", "predict", "attention")
PROBE_FOLDER = "probe"
"""The folder of the demo's data holding the held-out PolypDiag-layout set of the frozen-feature probes (the
classification task fine-tunes on it too: 60 test videos rather than the 20 of the corpus's PolypDiag layout)."""


def demo_tasks() -> dict[str, DemoSettings]:
    """The tasks the demo fine-tunes, in registry order: every registered task with
    :attr:`~endofm.tasks.base.Task.demo` settings (each on its folder of the demo's data)."""
    return {name: task.demo for name, task in TASKS.items() if task.demo is not None}


def stages() -> tuple[str, ...]:
    """The demo's stages, in order: one per fine-tuned task between the frozen probes and ``predict``."""
    return ("data", "pretrain", "frozen", *demo_tasks(), "predict", "attention", "report")


def default_epochs(quick: bool = False) -> dict[str, int]:
    """Fine-tuning epochs of each demo task (:attr:`DemoSettings.epochs <endofm.tasks.base.DemoSettings.epochs>`,
    or ``quick_epochs``)."""
    return {name: demo.quick_epochs if quick else demo.epochs for name, demo in demo_tasks().items()}


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo` (the defaults are the full run; ``endofm demo --quick`` sets fewer videos,
    steps and epochs)."""

    out_dir: str = "runs/demo"
    overwrite: bool = False
    """Replace an earlier demo in ``out_dir`` (otherwise a folder holding anything is refused)."""
    videos: int = 100
    """Videos per labelled synthetic layout (CVC and KUMC get a fifth of this, at least 4 and 3)."""
    pretrain_clips: int = 1000
    """Unlabelled pretraining clips (``CLIP_FRAMES`` at ``CLIP_SIZE``): many short clips, each seen a few times."""
    pretrain_steps: int = 1240
    probe_videos: int = 300
    """Labelled videos (``CLIP_FRAMES`` at ``CLIP_SIZE``) of a separate PolypDiag-layout set, drawn with another
    seed, on which the frozen features are compared: 60 test videos, so that one video is 0.017 of accuracy."""
    epochs: dict[str, int] = field(default_factory=default_epochs)
    """Fine-tuning epochs by task; a demo task left out gets its default (:func:`default_epochs`)."""
    original_models: bool = False
    """Fine-tune the original's segmenter and detector (each task's
    :attr:`~endofm.tasks.base.DemoSettings.original_recipe`; slower on a CPU)."""
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


def _save_png(path: Path, image: Image.Image) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def quick_config(**settings: Any) -> DemoConfig:
    """The settings of ``endofm demo --quick``: fewer videos, steps and epochs (``settings`` set the rest)."""
    return DemoConfig(**{"videos": 40, "pretrain_clips": 200, "pretrain_steps": 60, "probe_videos": 60,
                         "epochs": default_epochs(quick=True), **settings})


def recipe_name(task: str, config: DemoConfig) -> str:
    """The shipped recipe the demo fine-tunes ``task`` with."""
    demo = demo_tasks()[task]
    return (demo.original_recipe or demo.recipe) if config.original_models else demo.recipe


def finetune_task(task: str, config: DemoConfig, teacher: Path, data: Path, out: Path) -> dict[str, Any]:
    """Fine-tune one task with its demo recipe from the teacher for its ``config.epochs``; returns its
    ``metrics.json``."""
    epochs = config.epochs.get(task, demo_tasks()[task].epochs)
    recipe = load_config(TASKS[task].config_class, recipe_name(task, config), kind="finetune", overrides=[
        f"model.init={teacher}", f"data.root={data}", f"run.out_dir={out}", f"run.epochs={epochs}",
        f"run.seed={config.seed}", f"run.device={config.device}", f"run.progress={str(config.progress).lower()}"])
    TASKS[task].finetune(recipe)
    return json.loads((out / "metrics.json").read_text())


def _frozen_scores(backbone: torch.nn.Module, probe_set: Path, options: dict[str, Any]) -> dict[str, Any]:
    """k-NN and linear-probe accuracy of the CLS embedding and of the max-pooled patch tokens (where the gain of
    a short pretraining run shows more clearly)."""
    scores = evaluate_frozen_pools(backbone, probe_set, ("cls", "max"), **options)
    return {**scores["cls"], "knn_accuracy_max_pool": scores["max"]["knn_accuracy"],
            "linear_probe_accuracy_max_pool": scores["max"]["linear_probe_accuracy"]}


def _polyp_video(polypdiag: Path) -> Path:
    """The first polyp video of the PolypDiag test split."""
    lines = (polypdiag / "splits" / "test.txt").read_text().split()
    items = [line.rsplit(",", 1) for line in lines]
    name = next((path for path, label in items if label == "1"), items[0][0])
    return polypdiag / "videos" / name


def cvc_test_sequence(cvc: Path, out: Path) -> Path:
    """The frames of the first test sequence of a CVC-ClinicDB-layout set, copied into the frame folder ``out``
    (a video ``endofm predict`` reads); their ground-truth masks stay in the set."""
    sequence = read_sequence_list(cvc / "splits" / "test.txt")[0]
    out.mkdir(parents=True, exist_ok=True)
    for k, number in enumerate(sequence.frames):
        shutil.copyfile(cvc / "Original" / f"{number}.tif", out / f"{k + 1:04d}.tif")
    return out


def segmentation_overlay(cvc: Path, frames_dir: Path, masks: np.ndarray, path: Path, count: int = 4) -> Path:
    """``count`` frames of the CVC test sequence in ``frames_dir`` with the predicted masks and the ground
    truth, each column titled with its Dice (:func:`~endofm.report.figures.segmentation_figure`)."""
    sequence = read_sequence_list(cvc / "splits" / "test.txt")[0]
    with VideoReader(frames_dir) as reader:
        indices = np.linspace(0, len(reader) - 1, count).round().astype(int).tolist()
        frames = reader.read(indices).permute(0, 2, 3, 1).numpy()
    size = frames.shape[2], frames.shape[1]
    predicted = np.stack([np.asarray(Image.fromarray(masks[i] * 255).resize(size, Image.NEAREST)) for i in indices])
    truth = np.stack([np.asarray(Image.open(cvc / "Ground Truth" / f"{sequence.start + i}.tif").convert("L")
                                 .resize(size, Image.NEAREST)) for i in indices])
    return segmentation_figure(frames, predicted, truth, indices, path,
                               title=f"segmenter on CVC test sequence {sequence.name}")


def classification_results(model_dir: Path, root: Path, split: str, device: str, path: Path) -> Path:
    """The fine-tuned classifier's confusion matrix, ROC and precision-recall curves on a split."""
    model = load_finetuned(model_dir)
    data = model.metadata["data"]
    probabilities, labels = predict_probabilities(model.model, polypdiag_dataset(root, split, data), 4,
                                                  torch.device(device))
    return classification_figure(labels, probabilities, data.get("classes") or ["normal", "polyp"], path,
                                 title=f"fine-tuned classifier on the {split} split")


def detection_frames(model_dir: Path, kumc: Path, device: str, count: int = 4) -> Image.Image:
    """``count`` frames of the first KUMC test video with ground-truth boxes (green) and the highest-scoring
    predicted box (red, with its score)."""
    image_dir = sorted((kumc / "test2019" / "Image").iterdir())[0]
    model = load_finetuned(model_dir)
    with VideoReader(image_dir) as reader:
        prediction = TASKS[model.task].predict(model, reader, torch.device(device), score_threshold=0.0)
        predicted = prediction.report["frames"]
        indices = np.linspace(0, len(reader) - 1, count).round().astype(int).tolist()
        frames = reader.read(indices).permute(0, 2, 3, 1).numpy()
    tiles = []
    for frame, index in zip(frames, indices, strict=True):
        image = Image.fromarray(frame).resize((frame.shape[1] * 2, frame.shape[0] * 2))
        draw = ImageDraw.Draw(image)
        truth, _, _ = read_voc(kumc / "test2019" / "Annotation" / image_dir.name / f"{index + 1}.xml",
                               POLYP_CLASSES)
        for box in truth.tolist():
            draw.rectangle([2 * v for v in box], outline=(0, 255, 0), width=2)
        boxes = predicted[index]["boxes"]
        if boxes:
            best = max(boxes, key=lambda b: b["score"])
            draw.rectangle([2 * v for v in best["box"]], outline=(255, 0, 0), width=2)
            draw_label(image, (2 * best["box"][0], 2 * best["box"][1]), f"{best['label']} {100 * best['score']:.1f}%",
                       background=(200, 0, 0), anchor_bottom=True)
        tiles.append(np.asarray(image))
    return Image.fromarray(np.concatenate(tiles, axis=1))


def _pretrain_summary(run_dir: Path, recipe: PretrainConfig) -> dict[str, Any]:
    records = [r for r in read_jsonl(run_dir / "log.jsonl") if "loss" in r]
    return {"steps": len(records), "head_out_dim": recipe.model.head_out_dim, "centering": recipe.loss.centering,
            "loss_first": records[0]["loss"] if records else None,
            "loss_last": records[-1]["loss"] if records else None,
            "entropy_last": records[-1].get("teacher_entropy") if records else None}


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage into ``config.out_dir`` (refused if it holds anything, unless ``config.overwrite``: then
    the subfolders of an earlier demo are replaced); returns the results (also in ``results.json``) after
    writing ``report.md`` and ``report.html``."""
    tasks = demo_tasks()
    unknown = sorted(set(config.epochs) - set(tasks))
    if unknown:
        raise InputError(f"epochs names {unknown}, which the demo does not fine-tune; its tasks are {list(tasks)}")
    out = claim_output(config.out_dir, config.overwrite, folder=True, option="out_dir")
    for name in SUBFOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))
    timings: dict[str, float] = {}
    total = len(stages())
    started = time.perf_counter()

    @contextmanager
    def stage(name: str, what: str) -> Iterator[None]:
        log(f"[{len(timings) + 1}/{total}] {what} ...")
        begin = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - begin, 1)
        log(f"[{len(timings)}/{total}] {what}: {timings[name]:.1f} s")

    data = out / "data"
    with stage("data", f"synthetic corpus ({config.pretrain_clips} pretraining clips, {config.videos} videos per "
                       "labelled layout)"):
        write_synthetic_corpus(data, config.videos, config.seed, pretrain_videos=config.pretrain_clips,
                               pretrain_frames=CLIP_FRAMES, pretrain_size=CLIP_SIZE)
        write_polypdiag(data / PROBE_FOLDER, config.probe_videos, seed=config.seed + 1, num_frames=CLIP_FRAMES,
                        size=CLIP_SIZE)

    pre_dir = out / "pretrain"
    with stage("pretrain", f"pretraining the micro backbone ({config.pretrain_steps} steps)"):
        recipe = load_config(PretrainConfig, PRETRAIN_RECIPE, kind="pretrain", overrides=[
            f"data.manifest={data / 'pretrain'}", f"run.out_dir={pre_dir}", f"run.max_steps={config.pretrain_steps}",
            f"run.seed={config.seed}", f"run.device={config.device}", f"run.num_workers={PRETRAIN_WORKERS}",
            f"run.progress={str(config.progress).lower()}"])
        steps_per_epoch = max(1, config.pretrain_clips // recipe.run.batch_size)
        epochs = max(1, math.ceil(config.pretrain_steps / steps_per_epoch))
        recipe = replace(recipe, run=replace(recipe.run, epochs=epochs))
        pretrain(recipe)
    teacher = pre_dir / "teacher"
    arch = recipe.model.arch

    with stage("frozen", "frozen-feature k-NN and linear probe, pretrained vs random"):
        backbone = load_checkpoint(teacher).backbone
        probe = {"num_frames": backbone.config.num_frames, "size": backbone.config.img_size[0],
                 "device": config.device}
        frozen = {"pretrained": _frozen_scores(backbone, data / PROBE_FOLDER, probe)}
        for seed in range(config.seed, config.seed + RANDOM_BASELINES):
            torch.manual_seed(seed)
            frozen[f"random (seed {seed})"] = _frozen_scores(build_model(arch), data / PROBE_FOLDER, probe)

    finetune: dict[str, Any] = {}
    for task, demo in tasks.items():
        with stage(task, f"fine-tuning {task}"):
            finetune[task] = finetune_task(task, config, teacher, data / demo.folder, out / "finetune" / task)

    with stage("predict", "predict with the segmenter on a CVC test sequence"):
        sequence = cvc_test_sequence(data / "cvc", out / "predict" / "sequence")
        written = predict_video(sequence, out / "finetune" / "segment" / "model", out / "predict",
                                device=config.device)
        masks = np.load(out / "predict" / "masks.npz")["masks"]
        segmentation_overlay(data / "cvc", sequence, masks, out / "predict" / "segmentation_overlay.png")
        _save_png(out / "predict" / "detection_frames.png",
                  detection_frames(out / "finetune" / "detect" / "model", data / "kumc", config.device))
        classification_results(out / "finetune" / "classify" / "model", data / PROBE_FOLDER,
                               finetune["classify"]["splits"]["test"], config.device,
                               out / "predict" / "classification.png")
        predict = {"task": json.loads(Path(written["json"]).read_text())["task"],
                   "video": str(sequence.relative_to(out)), "frames": len(masks),
                   "mean predicted polyp fraction": float(masks.mean())}
        video = _polyp_video(data / "polypdiag")

    with stage("attention", "attention maps of the pretrained backbone"):
        maps = attention_maps(video, backbone, device=config.device)
        save_attention(maps, out / "attention")
        attention = {"video": str(video.relative_to(out)), "frames": maps.indices}

    with stage("report", "writing report.md and report.html"):
        plots = [("loss", "loss"), ("teacher_entropy", "teacher entropy"), ("lr", "learning rate")]
        figures = {
            "pretraining": [(f"pretraining {caption}", f"pretrain/plots/{key}.png") for key, caption in plots
                            if (pre_dir / "plots" / f"{key}.png").exists()],
            "finetuning": [(f"{task}: {curve_name(key)}", f"finetune/{task}/plots/{key}.png")
                           for task, metrics in finetune.items()
                           for key in ("loss", f"val_{metrics['selection_metric']}")
                           if (out / "finetune" / task / "plots" / f"{key}.png").exists()],
            "classification": [("classifier on the held-out test videos: confusion matrix, ROC and precision-recall "
                                "curves", "predict/classification.png")],
            "segmentation": [("segmenter on a CVC test sequence: frames (top), predicted mask in green (middle), "
                              "ground truth in blue (bottom)", "predict/segmentation_overlay.png")],
            "detection": [("KUMC test frames: ground truth green, highest-scoring prediction red (score shown, "
                           "any score)", "predict/detection_frames.png")],
            "attention": [("frames (top) and attention (bottom)", "attention/attention_grid.png")],
        }
        results = {
            "settings": {**asdict(config), "backbone": arch,
                         "pretrain recipe": PRETRAIN_RECIPE,
                         "fine-tune recipes": ", ".join(recipe_name(task, config) for task in tasks)},
            "pretrain": _pretrain_summary(pre_dir, recipe), "frozen": frozen,
            "finetune": finetune, "predict": predict, "attention": attention, "figures": figures, "timings": timings,
        }
        results["total_seconds"] = round(time.perf_counter() - started, 1)
        write_report(results, out)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    return results


def format_table(results: dict[str, Any]) -> str:
    """The headline numbers as plain text."""
    frozen = results["frozen"]
    shown = {key: len(title) + 2 for key, title in FROZEN_PROBES.items() if key in frozen["pretrained"]}
    lines = [f"{'frozen features':<24}" + "".join(f"{FROZEN_PROBES[key]:>{width}}" for key, width in shown.items())]
    lines += [f"{name:<24}" + "".join(f"{scores[key]:>{width}.3f}" for key, width in shown.items())
              for name, scores in frozen.items()]
    for task, metrics in results["finetune"].items():
        test = {k: v for k, v in metrics["test"].items() if isinstance(v, float)}
        lines.append(f"{task:<10}" + ", ".join(f"{k} {v:.3f}" for k, v in list(test.items())[:4]))
    return "\n".join(lines)
