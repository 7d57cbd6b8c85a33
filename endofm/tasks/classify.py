"""PolypDiag classification: the CLS embedding (or the mean or maximum of the patch tokens) and a linear head,
fully fine-tuned or as a linear probe.

:func:`finetune_classify` trains on the shared engine, selects the best epoch on a validation split and
reports binary F1 (the original's metric), macro F1, accuracy and AUROC of that model on the test split.
Split rules (``data.splits``): with ``splits/test.txt`` present, ``val.txt`` selects and ``test.txt`` tests;
in the original layout (``train.txt`` and ``val.txt`` only, ``val.txt`` being what the original tested on)
``val_fraction`` of the training videos (stratified by label) select and ``val.txt`` tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader, Subset, default_collate
from tqdm import tqdm

from endofm.data.datasets.polypdiag import SAMPLINGS, PolypDiagDataset, evenly_spaced
from endofm.data.datasets.splits import split_by_case
from endofm.data.synthetic.writers import polypdiag_layout
from endofm.data.transforms import eval_transform, original_view, train_transform
from endofm.data.video import VideoReader
from endofm.engine.distributed import gather_shards, shard
from endofm.engine.logging import bar_off
from endofm.engine.optim import OptimConfig
from endofm.engine.trainer import RunConfig
from endofm.errors import CheckpointError, ConfigError, DatasetError
from endofm.metrics.classification import classification_metrics
from endofm.models.backbone import POOLS, EndoFMBackbone
from endofm.models.checkpoint import (
    IGNORED_BACKBONE_KEYS,
    LoadedCheckpoint,
    _load_strict,
    _split_original,
    infer_backbone_config,
)
from endofm.models.heads import LinearClassifier
from endofm.models.inputs import InputSpec
from endofm.report.labels import draw_label, font_size
from endofm.tasks.base import (
    DemoSettings,
    FinetunedModel,
    LoadedFinetuned,
    PaperResult,
    Prediction,
    ReleasedLayout,
    SyntheticLayout,
    Task,
    preset_input,
)
from endofm.tasks.config import FinetuneModelConfig, SelectionConfig, SplitsConfig
from endofm.tasks.finetune import FinetuneRecipe, build_backbone, run_finetune
from endofm.tasks.registry import register_task

CLASSIFY_DEFAULT_DATA = {"num_frames": 8, "size": 224, "normalization": "polypdiag", "sampling": "original",
                         "sampling_rate": 32, "target_fps": 30.0, "view": "original"}
"""Preprocessing of the original PolypDiag fine-tuning (used for the original's fine-tuned checkpoints)."""
VIEWS = ("original", "center")


@dataclass
class ClassifyDataConfig:
    """Where the PolypDiag-layout data is and how clips are made (defaults: the original's)."""

    root: str = ""
    num_frames: int = 8
    """``DATA.NUM_FRAMES`` of the original's TimeSformer config."""
    size: int = 224
    """``DATA.TRAIN_CROP_SIZE`` / ``TEST_CROP_SIZE``."""
    normalization: str = "polypdiag"
    sampling: str = "original"
    """``original``: ``num_frames`` frames over a window of ``sampling_rate * num_frames`` frames at
    ``target_fps`` (scaled by the video's frame rate), starting at random in training and at the first frame
    at test time, the last frame repeated for a short video; ``spread``: evenly over the whole video."""
    sampling_rate: int = 32
    """``DATA.SAMPLING_RATE`` of the original's config (frames at ``target_fps`` between two sampled frames)."""
    target_fps: float = 30.0
    """``DATA.TARGET_FPS``."""
    view: str = "original"
    """``original``: training resizes the short side to 256-320 (at 224; bilinear, no antialiasing), crops at
    random and flips; test resizes it to ``size`` and takes the first crop (left, or top), as the original's
    test set (``TEST.NUM_SPATIAL_CROPS`` is 3 when it reads, so spatial index 0). ``center``: antialiased
    resizes, at test time the short side to ``size * 8/7`` and the centre crop."""
    splits: SplitsConfig = field(default_factory=SplitsConfig)

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"data.sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.view not in VIEWS:
            raise ConfigError(f"data.view must be one of {', '.join(VIEWS)}, got {self.view!r}")
        if self.sampling_rate < 1 or self.target_fps <= 0:
            raise ConfigError(f"data.sampling_rate and data.target_fps must be positive, got {self.sampling_rate} "
                              f"and {self.target_fps}")


@dataclass
class ClassifyConfig:
    """A classification fine-tuning run; defaults are the original's hyper-parameters."""

    mode: str = "finetune"
    """``finetune`` (all weights) or ``linear`` (frozen backbone, linear probe)."""
    pool: str = "cls"
    """The clip embedding the linear head reads: ``cls`` (the original's), or ``mean`` or ``max`` over the patch
    tokens (the gradient reaches the patches directly: from random weights and few labels these learn far
    faster; ``max`` suits a small finding such as a polyp)."""
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=1e-3, scale_lr=True))
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/finetune-classify", epochs=20,
                                                             batch_size=4))

    def __post_init__(self) -> None:
        if self.mode not in ("finetune", "linear"):
            raise ConfigError(f"mode must be finetune or linear, got {self.mode!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")


class ClassifierNetwork(nn.Module):
    """Backbone clip embedding (the head's ``pool``) -> linear head; with ``freeze_backbone`` the backbone stays
    frozen in eval mode."""

    def __init__(self, backbone: EndoFMBackbone, head: LinearClassifier, freeze_backbone: bool = False) -> None:
        super().__init__()
        self.backbone, self.head, self.freeze_backbone = backbone, head, freeze_backbone
        if freeze_backbone:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> ClassifierNetwork:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            features = self.backbone.forward_pooled(video, self.head.pool)
        return self.head(features)


def polypdiag_dataset(root: str | Path, split: str, data: Mapping[str, Any], train: bool = False) -> PolypDiagDataset:
    """One split with the preprocessing ``data`` names (a :class:`ClassifyDataConfig` as a dict, or a model
    folder's record; a record without ``sampling``/``view`` is of a model trained with ``spread``/``center``);
    ``train`` gives the training view and window."""
    size, normalization = int(data["size"]), data["normalization"]
    if data.get("view", "center") == "original":
        transform = original_view(size, train, normalization)
    else:
        transform = (train_transform(size, normalization=normalization) if train
                     else eval_transform(size, normalization=normalization))
    return PolypDiagDataset(root, split, num_frames=int(data["num_frames"]), transform=transform,
                            sampling=data.get("sampling", "spread"), random_start=train,
                            sampling_rate=int(data.get("sampling_rate", 32)),
                            target_fps=float(data.get("target_fps", 30.0)))


def classify_datasets(data: ClassifyDataConfig, select_on_test: bool = False,
                      seed: int = 0) -> tuple[PolypDiagDataset, PolypDiagDataset, PolypDiagDataset, dict[str, str]]:
    """Train, validation and test datasets, and the names of their splits (see the module docstring)."""
    root = Path(data.root)
    if not data.root:
        raise ConfigError("data.root is not set: give the PolypDiag folder (--data ROOT)")
    splits = data.splits
    record = dataclasses.asdict(data)
    has_test = (root / "splits" / "test.txt").exists()
    test_name = splits.test if splits.test != "auto" else ("test" if has_test else "val")

    def make(split: str, train: bool = False) -> PolypDiagDataset:
        return polypdiag_dataset(root, split, record, train)

    train = make(splits.train, train=True)
    test = make(test_name)
    if select_on_test:
        return train, test, test, {"train": splits.train, "val": test_name, "test": test_name}
    val_name = splits.val
    if val_name == "auto":
        val_name = "val" if test_name != "val" and (root / "splits" / "val.txt").exists() else ""
    if val_name:
        return train, make(val_name), test, {"train": splits.train, "val": val_name, "test": test_name}
    parts = split_by_case(train.items, lambda item: str(item[0]),
                          {"train": 1 - splits.val_fraction, "val": splits.val_fraction}, seed=seed,
                          stratify=lambda item: item[1])
    if not parts["train"] or not parts["val"]:
        raise DatasetError(f"{root / 'splits' / (splits.train + '.txt')}: too few videos to hold out a validation "
                           "split; add splits/test.txt or give data.splits.val")
    val = make(splits.train)
    train.items, val.items = parts["train"], parts["val"]
    held_out = f"{splits.val_fraction:g} of {splits.train} (held out, stratified)"
    return train, val, test, {"train": f"{splits.train} (rest)", "val": held_out, "test": test_name}


@torch.inference_mode()
def predict_probabilities(network: nn.Module, dataset: Any, batch_size: int, device: torch.device,
                          num_workers: int = 0, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, C]`` and labels ``[N]`` of every sample of a dataset (in a distributed run,
    each process predicts its :func:`~endofm.engine.distributed.shard` and every process gets them all)."""
    was_training = network.training
    network.eval()
    probs, labels = [], []
    loader = DataLoader(Subset(dataset, shard(len(dataset))), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=default_collate)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=bar_off(progress), leave=False):
        probs += F.softmax(network(batch["video"].to(device)).float(), dim=1).cpu().unbind(0)
        labels += torch.as_tensor(batch["label"]).unbind(0)
    network.train(was_training)
    return torch.stack(gather_shards(probs)).numpy(), torch.stack(gather_shards(labels)).numpy()


def evaluate_classifier(network: nn.Module, dataset: Any, batch_size: int = 4, device: str | torch.device = "cpu",
                        num_workers: int = 0, progress: bool = False) -> dict[str, Any]:
    """Binary F1, macro F1, accuracy and AUROC (and the sample count) of a classifier on a dataset."""
    probs, labels = predict_probabilities(network, dataset, batch_size, torch.device(device), num_workers, progress)
    return {**classification_metrics(labels, probs), "samples": int(len(labels))}


class ClassifyRecipe(FinetuneRecipe):
    """Cross-entropy on the linear head's logits."""

    task = "classify"
    default_metric = "binary_f1"
    evaluator = evaluate_classifier

    def build_network(self) -> ClassifierNetwork:
        linear = self.config.mode == "linear"
        model = dataclasses.replace(self.config.model, drop_path_rate=0.0) if linear else self.config.model
        backbone = build_backbone(model)
        head = LinearClassifier(backbone.embed_dim, len(PolypDiagDataset.classes), pool=self.config.pool)
        return ClassifierNetwork(backbone, head, freeze_backbone=linear)

    def compute_loss(self, network: nn.Module, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = network(batch["video"].to(self.device, non_blocking=True))
        labels = torch.as_tensor(batch["label"], device=self.device)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"train_accuracy": float((logits.argmax(1) == labels).float().mean())}

    def batch_size(self, batch: dict) -> int:
        return len(batch["label"])

    def parts(self) -> tuple[EndoFMBackbone, nn.Module]:
        return self.network.backbone, self.network.head

    def data_config(self) -> dict[str, Any]:
        data = self.config.data
        return {"num_frames": data.num_frames, "size": data.size, "normalization": data.normalization,
                "sampling": data.sampling, "sampling_rate": data.sampling_rate, "target_fps": data.target_fps,
                "view": data.view, "classes": list(PolypDiagDataset.classes)}


def finetune_classify(config: ClassifyConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune (or linear-probe) a classifier; the run folder gets ``model/``, ``metrics.json`` and plots."""
    datasets = classify_datasets(config.data, config.selection.select_on_test, config.run.seed)
    return run_finetune(config, ClassifyRecipe, datasets, default_collate, resume)


# --- the saved model, evaluation and prediction --------------------------------------------------------------


def input_spec(data: Mapping[str, Any]) -> InputSpec:
    """The input of a classifier trained with the preprocessing ``data`` records."""
    return preset_input(data["normalization"], (int(data["size"]),) * 2, int(data["num_frames"]),
                        resize="short_side_center_crop")


def _assemble(found: FinetunedModel) -> tuple[nn.Module, InputSpec]:
    return ClassifierNetwork(found.backbone, found.head), input_spec(found.data)


def _adopt(loaded: LoadedCheckpoint, path: str) -> FinetunedModel | None:
    """A model folder or checkpoint that records no task but holds a classifier (the original's fine-tuned
    PolypDiag classifier, converted or not): a classifier with the original's preprocessing."""
    if loaded.classifier is None:
        return None
    return FinetunedModel("classify", loaded.backbone, loaded.classifier, loaded.classifier.config,
                          original_data(loaded.backbone), path, {"source": "original fine-tuned classifier"})


def original_data(backbone: EndoFMBackbone) -> dict[str, Any]:
    """The preprocessing of the original's fine-tuned classifier at the clip size its backbone stores (8 x 224 for
    the released model): a file records no input size but its embeddings do."""
    return {**CLASSIFY_DEFAULT_DATA, "num_frames": backbone.config.num_frames, "size": backbone.config.img_size[0]}


def _load_polypdiag(state: dict[str, Any], path: Path, num_heads: int | None) -> LoadedFinetuned:
    """The released PolypDiag classifier (``backbone_state_dict`` + ``state_dict`` with ``linear.*``)."""
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
    data = original_data(backbone)
    return LoadedFinetuned("classify", ClassifierNetwork(backbone, head).eval(), input_spec(data), str(path),
                           "polypdiag", {"source": "original fine-tuned PolypDiag classifier", "data": data})


POLYPDIAG_LAYOUT = ReleasedLayout("polypdiag", lambda state: "backbone_state_dict" in state, _load_polypdiag)


def evaluate_classify_model(loaded: LoadedFinetuned, root: str, split: str = "test", device: str = "cpu",
                            batch_size: int = 2, progress: bool = False) -> dict[str, Any]:
    """Metrics of a classifier (:func:`~endofm.tasks.finetuned.load_finetuned`) on one split of a
    PolypDiag-layout dataset, with the preprocessing it was trained with."""
    dataset = polypdiag_dataset(root, split, loaded.metadata["data"])
    return evaluate_classifier(loaded.model.to(device), dataset, batch_size, device, progress=progress)


def predict_classify(loaded: LoadedFinetuned, reader: VideoReader, device: torch.device,
                     progress: bool = False) -> Prediction:
    """Per-frame and whole-video polyp probabilities: each frame gets the mean polyp probability of the
    sliding windows covering it (``num_frames`` frames spread over ``4 * num_frames`` consecutive frames,
    half-overlapping), and the video gets one prediction from ``num_frames`` frames spread over all of it (as
    in training)."""
    data = loaded.metadata["data"]
    num_frames, transform = int(data["num_frames"]), eval_transform(int(data["size"]),
                                                                     normalization=data["normalization"])
    network = loaded.model.to(device).eval()
    count = len(reader)

    def probability(indices: list[int]) -> np.ndarray:
        video = transform(reader.read(indices))["video"].unsqueeze(0).to(device)
        with torch.inference_mode():
            return torch.softmax(network(video).float(), dim=1)[0].cpu().numpy()

    span = min(count, 4 * num_frames)
    starts = list(range(0, max(count - span, 0) + 1, max(span // 2, 1)))
    if starts[-1] + span < count:
        starts.append(count - span)
    total, covered = np.zeros(count), np.zeros(count)
    for start in tqdm(starts, desc="windows", unit="window", disable=bar_off(progress)):
        indices = [start + i for i in evenly_spaced(span, num_frames)]
        total[start : start + span] += probability(indices)[1]
        covered[start : start + span] += 1
    per_frame = total / np.maximum(covered, 1)
    video_probs = probability(evenly_spaced(count, num_frames))
    classes = data.get("classes") or [str(i) for i in range(len(video_probs))]
    return Prediction({
        "video": {"label": classes[int(video_probs.argmax())], "probabilities": dict(zip(classes, video_probs.tolist(),
                                                                                       strict=True))},
        "frames": [{"frame": i, "time": i / reader.info.fps, "polyp_probability": float(p),
                    "label": classes[int(p >= 0.5)]} for i, p in enumerate(per_frame)],
    })


def draw_frame(image: Image.Image, frame: dict[str, Any], scale: tuple[float, float],
               arrays: dict[str, np.ndarray]) -> Image.Image:
    """The label and the polyp probability on a dark band along the top, a bar of the probability under it."""
    p = frame["polyp_probability"]
    size = font_size(image)
    _, _, _, bottom = draw_label(image, (0, 0), f"{frame['label']}   P(polyp) {100 * p:.1f}%", size=size)
    draw = ImageDraw.Draw(image)
    bar = max(3, size // 4)
    draw.rectangle([0, bottom, image.width, bottom + bar], fill=(16, 16, 16))
    draw.rectangle([0, bottom, round(image.width * p), bottom + bar],
                   fill=(255, 90, 90) if p >= 0.5 else (90, 220, 90))
    return image


def csv_rows(frames: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per frame."""
    return ["frame", "time", "polyp_probability", "label"], [
        [f["frame"], f"{f['time']:.3f}", f"{f['polyp_probability']:.6f}", f["label"]] for f in frames]


def caveat(test: Mapping[str, Any]) -> str | None:
    """A sentence when the test metrics show the classifier did not learn."""
    if (test.get("accuracy") or 0.0) <= 0.5:
        return "The classifier is no better than chance on the test split."
    return None


TASK = register_task(Task(
    name="classify",
    help="PolypDiag-layout video classification (CLS + linear head; mode=linear for a probe)",
    title="PolypDiag classification",
    dataset="PolypDiag",
    dataset_folders=("polypdiag", "PolypDiag"),
    config_class=ClassifyConfig,
    finetune=finetune_classify,
    build_head=lambda config, backbone: LinearClassifier(**config),
    assemble=_assemble,
    evaluate=evaluate_classify_model,
    predict=predict_classify,
    draw=draw_frame,
    csv_rows=csv_rows,
    paper=PaperResult(metric="binary_f1", label="F1", paper=90.7, released=91.5, split="val"),
    model_name=lambda config: "Endo-FM ViT + linear head on the CLS token",
    released_file="polypdiag.pth",
    layouts=(POLYPDIAG_LAYOUT,),
    adopt=_adopt,
    caveat=caveat,
    synthetic=SyntheticLayout("polypdiag", polypdiag_layout),
    demo=DemoSettings(folder="probe", recipe="classify_cpu", epochs=10, quick_epochs=5),
))
"""The classification task (:mod:`endofm.tasks.base`)."""
