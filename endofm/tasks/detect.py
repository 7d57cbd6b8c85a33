"""KUMC detection: the original STFT detector (``detector: stft``, the default) or a lighter alternative,
torchvision's FCOS on a simple pyramid of the backbone (``detector: fcos``).

``detector: stft`` trains the original's model as the original does
(:func:`~endofm.tasks.detect_stft.finetune_stft`: the key frame and two references as one clip, the FCOS and
STFT losses, SGD with the original's parameter groups and iteration schedule, evaluation through the
original's test-time video path).

``detector: fcos``: the input of a sample is the current frame and its reference frames (``data.ref_offsets``,
the current frame last), stacked as channels ``[3T, H, W]`` so that torchvision's detection transform batches them like
images; :class:`VideoPyramid` unstacks them into a clip ``[B, 3, T, H, W]``, runs the backbone, takes the
current frame's patch tokens (stride = patch size) and builds the original's simple pyramid: deconv x2
(stride 8), identity (stride 16), max-pool (stride 32), each followed by a 1x1 and a 3x3 convolution to
``out_channels``. Frames are normalised by the dataset transform; the detector's own transform neither
renormalises nor (for frames already at ``short_side``) resizes.

Metrics: the original's frame-level F1 at score >= 0.5 (``frame_f1_original``: no IoU check), box-level
precision/recall/F1 at IoU 0.5, and COCO mAP through pycocotools (:mod:`endofm.metrics.detection`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.transforms import v2
from tqdm import tqdm

from endofm.data.datasets.kumc import KUMCDataset
from endofm.data.synthetic.writers import kumc_layout
from endofm.data.transforms import VideoTransform
from endofm.data.video import VideoReader
from endofm.engine.distributed import all_reduce_sum, gather_shards, shard, world_size
from endofm.engine.logging import bar_off
from endofm.engine.optim import OptimConfig
from endofm.engine.trainer import RunConfig
from endofm.errors import ConfigError, InputError
from endofm.metrics.detection import detection_metrics
from endofm.models.backbone import EndoFMBackbone
from endofm.models.inputs import InputSpec
from endofm.models.stft import STFTDetector
from endofm.report.labels import draw_label
from endofm.tasks.base import (
    DemoSettings,
    FinetunedModel,
    LoadedFinetuned,
    PaperResult,
    Prediction,
    SyntheticLayout,
    Task,
    TaskOption,
    preset_input,
)
from endofm.tasks.config import FinetuneModelConfig, SelectionConfig, SplitsConfig
from endofm.tasks.detect_stft import LAYOUT as STFT_LAYOUT
from endofm.tasks.detect_stft import (
    IterationSchedule,
    STFTSizes,
    evaluate_loaded_stft,
    finetune_stft,
    predict_stft,
)
from endofm.tasks.finetune import FinetuneRecipe, build_backbone, run_finetune
from endofm.tasks.registry import register_task

DETECTORS = ("stft", "fcos")


@dataclass
class DetectDataConfig:
    """Where the KUMC/PolypsSet-layout data is and how samples are made (``ref_offsets``, ``short_side``,
    ``max_size`` and ``normalization`` are the FCOS's; the STFT's input is ``stft.size``)."""

    root: str = ""
    ref_offsets: tuple[int, ...] = (-2, -1)
    """FCOS: reference frames relative to the current one (the current frame last)."""
    short_side: int = 600
    max_size: int = 640
    normalization: str = "imagenet"
    hflip: float = 0.5
    """Horizontal-flip probability of a training sample (its frames flipped together)."""
    splits: SplitsConfig = field(default_factory=lambda: SplitsConfig(val="val", test="test"))


@dataclass
class DetectorConfig:
    """Pyramid and FCOS head (``detector: fcos``)."""

    out_channels: int = 256
    head_convs: int = 4
    score_thresh: float = 0.05
    """Lowest score kept at inference (the metrics apply their own 0.5 threshold; mAP uses all)."""
    nms_thresh: float = 0.6
    detections_per_img: int = 100


@dataclass
class DetectConfig:
    """A detection fine-tuning run; the defaults are the original's model and hyper-parameters (STFT, SGD lr
    0.0025 with weight decay 1e-4, batch 1, 96000 iterations with warm-up and steps, 640 x 640), with the
    model chosen on a validation split kept apart from the test split."""

    detector: str = "stft"
    """``stft`` (the original's model) or ``fcos`` (torchvision's FCOS on a simple pyramid, lighter)."""
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    stft: STFTSizes = field(default_factory=STFTSizes)
    fcos: DetectorConfig = field(default_factory=DetectorConfig)
    data: DetectDataConfig = field(default_factory=DetectDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.0025, momentum=0.9,
                                                                   weight_decay=1e-4, warmup_epochs=1))
    """stft: ``lr``, ``momentum`` and ``weight_decay`` (SGD); its schedule is ``iterations``."""
    iterations: IterationSchedule = field(default_factory=IterationSchedule)
    """stft: the original's iteration-based schedule and evaluation period."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/finetune-detect", epochs=96000,
                                                             batch_size=1, checkpoint_every=4000))
    """stft: ``epochs`` bounds the passes over the training frames (see
    :func:`~endofm.tasks.detect_stft.finetune_stft`); fcos: the epochs."""

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ConfigError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.detector == "stft" and self.optim.name != "sgd":
            raise ConfigError(f"detector stft trains as the original, with optim.name sgd, got {self.optim.name!r} "
                              "(without --config, an optim.* override starts the optim section from its own "
                              "defaults: pass --config detect)")


class VideoPyramid(nn.Module):
    """Stacked clip ``[B, 3T, H, W]`` -> ``{"p8", "p16", "p32"}`` feature maps of the current (last) frame."""

    def __init__(self, backbone: EndoFMBackbone, num_frames: int, out_channels: int = 256) -> None:
        super().__init__()
        dim = backbone.embed_dim
        self.backbone, self.num_frames, self.out_channels = backbone, num_frames, out_channels
        self.up = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.down = nn.MaxPool2d(kernel_size=2, stride=2)
        groups = math.gcd(32, out_channels)
        self.outputs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, out_channels, 1, bias=False), nn.GroupNorm(groups, out_channels),
                          nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                          nn.GroupNorm(groups, out_channels))
            for _ in range(3)
        )

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        b, c, h, w = x.shape
        if c != 3 * self.num_frames:
            raise InputError(f"expected {3 * self.num_frames} stacked channels ({self.num_frames} frames), got {c}")
        video = x.view(b, self.num_frames, 3, h, w).transpose(1, 2)
        _, patches = self.backbone.forward_tokens(video)
        current = patches[:, -1].permute(0, 3, 1, 2)
        maps = (self.up(current), current, self.down(current))
        return OrderedDict((name, block(m)) for name, block, m in zip(("p8", "p16", "p32"), self.outputs, maps,
                                                                      strict=True))


class GlobalFCOSHead(FCOSHead):
    """torchvision's FCOS head, its losses divided by the positives of the global batch: in a distributed run
    each process's share is scaled so that DDP's average of the gradients is that of one process with the
    whole batch (one process: unchanged)."""

    def compute_loss(self, targets: list[dict[str, torch.Tensor]], head_outputs: dict[str, torch.Tensor],
                     anchors: list[torch.Tensor], matched_idxs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        processes = world_size()
        if processes == 1:
            return losses
        local = sum(int((matched >= 0).sum()) for matched in matched_idxs)
        total = float(all_reduce_sum(torch.tensor(float(local), device=anchors[0].device)))
        scale = max(1, local) * processes / max(1.0, total)
        return {name: value * scale for name, value in losses.items()}


def build_detector(backbone: EndoFMBackbone, num_classes: int = 2, num_frames: int = 3, out_channels: int = 256,
                   head_convs: int = 4, short_side: int = 600, max_size: int = 640, score_thresh: float = 0.05,
                   nms_thresh: float = 0.6, detections_per_img: int = 100) -> FCOS:
    """FCOS on a :class:`VideoPyramid` (``num_classes`` foreground classes; FCOS's labels are 1-based)."""
    pyramid = VideoPyramid(backbone, num_frames, out_channels)
    stride = backbone.patch_size
    anchors = AnchorGenerator(sizes=((stride // 2,), (stride,), (stride * 2,)), aspect_ratios=((1.0,),) * 3)
    head = GlobalFCOSHead(out_channels, 1, num_classes + 1, num_convs=head_convs)
    channels = 3 * num_frames
    model = FCOS(pyramid, num_classes + 1, min_size=short_side, max_size=max_size, image_mean=[0.0] * channels,
                 image_std=[1.0] * channels, anchor_generator=anchors, head=head, score_thresh=score_thresh,
                 nms_thresh=nms_thresh, detections_per_img=detections_per_img)
    model.config = {"num_classes": num_classes, "num_frames": num_frames, "out_channels": out_channels,
                    "head_convs": head_convs, "short_side": short_side, "max_size": max_size,
                    "score_thresh": score_thresh, "nms_thresh": nms_thresh, "detections_per_img": detections_per_img}
    return model


def detect_transforms(data: DetectDataConfig) -> tuple[VideoTransform, VideoTransform]:
    """Train (resize + flip) and eval (resize) transforms: short side ``short_side``, long side <= ``max_size``."""
    max_size = data.max_size if data.max_size > data.short_side else None
    resize = v2.Resize(data.short_side, max_size=max_size, antialias=True)
    train = VideoTransform(v2.Compose([resize, v2.RandomHorizontalFlip(data.hflip)]), data.normalization)
    return train, VideoTransform(resize, data.normalization)


def stack_clip(video: torch.Tensor) -> torch.Tensor:
    """``[3, T, H, W]`` -> ``[3T, H, W]`` (frame-major), the detector's input."""
    return video.transpose(0, 1).reshape(-1, *video.shape[-2:])


def collate_detection(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Lists of stacked clips and targets (labels stay 0-based), plus the metadata lists."""
    return {"images": [stack_clip(s["video"]) for s in samples],
            "targets": [{"boxes": s["boxes"], "labels": s["labels"]} for s in samples],
            "meta": [s["meta"] for s in samples]}


def detect_datasets(data: DetectDataConfig, select_on_test: bool = False,
                    seed: int = 0) -> tuple[KUMCDataset, KUMCDataset, KUMCDataset, dict[str, str]]:
    """Train, validation and test datasets of the KUMC layout and the names of their splits."""
    if not data.root:
        raise ConfigError("data.root is not set: give the KUMC/PolypsSet folder (--data ROOT)")
    train_tf, eval_tf = detect_transforms(data)
    splits = data.splits
    test_name = "test" if splits.test == "auto" else splits.test
    val_name = test_name if select_on_test else ("val" if splits.val == "auto" else splits.val)

    def make(split: str, transform: VideoTransform) -> KUMCDataset:
        return KUMCDataset(data.root, split, ref_offsets=data.ref_offsets, transform=transform)

    test = make(test_name, eval_tf)
    val = test if select_on_test else make(val_name, eval_tf)
    return make(splits.train, train_tf), val, test, {"train": splits.train, "val": val_name, "test": test_name}


@torch.inference_mode()
def detect_frames(model: FCOS, images: list[torch.Tensor], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Detections (boxes xyxy, scores, 0-based labels) of a list of stacked clips, on the CPU."""
    outputs = model([image.to(device) for image in images])
    return [{"boxes": o["boxes"].cpu(), "scores": o["scores"].cpu(), "labels": o["labels"].cpu() - 1}
            for o in outputs]


def evaluate_detector(model: FCOS, dataset: KUMCDataset, batch_size: int = 2, device: str | torch.device = "cpu",
                      num_workers: int = 0, score_threshold: float = 0.5, progress: bool = False) -> dict[str, Any]:
    """Frame-level F1 (original), box P/R/F1 at IoU 0.5 and COCO mAP of a detector on a dataset (in a
    distributed run each process detects in its :func:`~endofm.engine.distributed.shard` of the frames)."""
    was_training = model.training
    model.eval()
    predictions, targets = [], []
    loader = DataLoader(Subset(dataset, shard(len(dataset))), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_detection)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=bar_off(progress), leave=False):
        predictions += detect_frames(model, batch["images"], torch.device(device))
        targets += batch["targets"]
    model.train(was_training)
    predictions, targets = gather_shards(predictions), gather_shards(targets)  # every process's frames
    num_classes = len(dataset.classes)
    return {**detection_metrics(predictions, targets, num_classes, score_threshold=score_threshold),
            "frames": len(targets)}


class DetectRecipe(FinetuneRecipe):
    """FCOS losses (focal classification, GIoU regression, centreness), summed."""

    task = "detect"
    default_metric = "map_50"
    evaluator = evaluate_detector

    def build_network(self) -> FCOS:
        det, data = self.config.fcos, self.config.data
        return build_detector(build_backbone(self.config.model), len(KUMCDataset.classes), len(data.ref_offsets) + 1,
                              det.out_channels, det.head_convs, data.short_side, data.max_size, det.score_thresh,
                              det.nms_thresh, det.detections_per_img)

    def compute_loss(self, network: nn.Module, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = [image.to(self.device, non_blocking=True) for image in batch["images"]]
        targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device) + 1}
                   for t in batch["targets"]]
        losses = network(images, targets)
        return sum(losses.values()), {k: float(v.detach()) for k, v in losses.items()}

    def batch_size(self, batch: dict) -> int:
        return len(batch["images"])

    def parts(self) -> tuple[EndoFMBackbone, nn.Module]:
        return self.network.backbone.backbone, self.network

    def data_config(self) -> dict[str, Any]:
        data = self.config.data
        return {"ref_offsets": list(data.ref_offsets), "short_side": data.short_side, "max_size": data.max_size,
                "normalization": data.normalization, "classes": list(KUMCDataset.classes)}


def finetune_detect(config: DetectConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune a detector; the run folder gets ``model/``, ``metrics.json`` and plots."""
    if config.detector == "stft":
        return finetune_stft(config, resume)
    datasets = detect_datasets(config.data, config.selection.select_on_test, config.run.seed)
    return run_finetune(config, DetectRecipe, datasets, collate_detection, resume)


# --- the saved model, evaluation and prediction (either detector) --------------------------------------------


def _assemble(found: FinetunedModel) -> tuple[nn.Module, InputSpec]:
    data = found.data
    spec = preset_input(data["normalization"], (int(data["short_side"]), int(data["max_size"])),
                        len(data["ref_offsets"]) + 1, resize="short_side")
    return found.head, spec


def evaluate_detect_model(loaded: LoadedFinetuned, root: str, split: str = "test", device: str = "cpu",
                          batch_size: int = 2, reference_seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Metrics of a detector (:func:`~endofm.tasks.finetuned.load_finetuned`) on one split of a KUMC-layout
    dataset: the STFT through the original's test-time video path (``reference_seed`` seeds its reference
    draws), the FCOS frame by frame with the preprocessing it was trained with."""
    if isinstance(loaded.model, STFTDetector):
        return evaluate_loaded_stft(loaded, root, split, device, reference_seed, progress)
    data = loaded.metadata["data"]
    config = DetectDataConfig(root=root, ref_offsets=tuple(data["ref_offsets"]), short_side=int(data["short_side"]),
                              max_size=int(data["max_size"]), normalization=data["normalization"])
    dataset = KUMCDataset(root, split, ref_offsets=config.ref_offsets, transform=detect_transforms(config)[1])
    return evaluate_detector(loaded.model.to(device), dataset, batch_size, device, progress=progress)


def _chunks(count: int, size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def predict_fcos(loaded: LoadedFinetuned, reader: VideoReader, device: torch.device, score_threshold: float = 0.5,
                 progress: bool = False) -> dict[str, Any]:
    """Boxes (input-video pixels) of an FCOS detector scoring at least ``score_threshold``, per frame (every
    frame with its reference frames)."""
    data = loaded.metadata["data"]
    max_size = data["max_size"] if data["max_size"] > data["short_side"] else None
    transform = VideoTransform(v2.Resize(int(data["short_side"]), max_size=max_size, antialias=True),
                               data["normalization"])
    detector = loaded.model.to(device).eval()
    offsets = [int(o) for o in data["ref_offsets"]]
    classes = data.get("classes") or [str(i) for i in range((loaded.metadata.get("head") or {}).get("num_classes", 1))]
    count = len(reader)
    frames = []
    for chunk in tqdm(_chunks(count, 8), desc="frames", unit="batch", disable=bar_off(progress)):
        clips = []
        for k in chunk:
            indices = [min(max(k + o, 0), count - 1) for o in offsets] + [k]
            clips.append(stack_clip(transform(reader.read(indices))["video"]))
        outputs = detect_frames(detector, clips, device)
        for k, clip, out in zip(chunk, clips, outputs, strict=True):
            sy, sx = reader.info.height / clip.shape[-2], reader.info.width / clip.shape[-1]
            keep = out["scores"] >= score_threshold
            boxes = (out["boxes"][keep] * torch.tensor([sx, sy, sx, sy])).tolist()
            frames.append({"frame": k, "time": k / reader.info.fps, "boxes": [
                {"box": box, "score": float(score), "label": classes[int(label)]}
                for box, score, label in zip(boxes, out["scores"][keep].tolist(), out["labels"][keep].tolist(),
                                             strict=True)]})
    return {"score_threshold": score_threshold, "frames": frames}


def predict_detect(loaded: LoadedFinetuned, reader: VideoReader, device: torch.device, progress: bool = False,
                   score_threshold: float = 0.5, reference_seed: int = 0) -> Prediction:
    """Boxes (input-video pixels) scoring at least ``score_threshold`` in every frame of a video: the STFT
    with its test-time queue of 19 frames and 10 references drawn with ``reference_seed``
    (:func:`~endofm.tasks.detect_stft.predict_stft`), the FCOS with its reference frames."""
    if not 0.0 <= score_threshold <= 1.0:
        raise InputError(f"score_threshold (--score-threshold) is a box score in [0, 1], got {score_threshold}")
    if isinstance(loaded.model, STFTDetector):
        return Prediction(predict_stft(loaded, reader, device, score_threshold, reference_seed, progress))
    return Prediction(predict_fcos(loaded, reader, device, score_threshold, progress))


BOX_COLOUR = (255, 230, 0)
"""Predicted boxes and their tabs: yellow stands out on red and pink tissue."""


def draw_frame(image: Image.Image, frame: dict[str, Any], scale: tuple[float, float],
               arrays: dict[str, np.ndarray]) -> Image.Image:
    """Every box in yellow with its label and score in dark text on a yellow tab above it (inside it at the top
    of the frame)."""
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 180))
    for item in frame["boxes"]:
        x1, y1, x2, y2 = item["box"]
        box = [x1 * scale[1], y1 * scale[0], x2 * scale[1], y2 * scale[0]]
        draw.rectangle(box, outline=BOX_COLOUR, width=width)
        draw_label(image, (box[0], box[1]), f"{item['label']} {100 * item['score']:.1f}%", fill=(0, 0, 0),
                   background=BOX_COLOUR, anchor_bottom=True)
    return image


def csv_rows(frames: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per box."""
    return ["frame", "time", "label", "score", "x1", "y1", "x2", "y2"], [
        [f["frame"], f"{f['time']:.3f}", b["label"], f"{b['score']:.6f}", *[f"{v:.1f}" for v in b["box"]]]
        for f in frames for b in f["boxes"]]


def model_name(config: Mapping[str, Any]) -> str:
    """The detector a run's config trains, in words (``endofm reproduce``'s table)."""
    if config.get("detector") == "stft":
        return "STFT (FCOS with spatial-temporal feature transformation)"
    return "Endo-FM ViT + the package's pyramid and FCOS head (not STFT)"


def caveat(test: Mapping[str, Any]) -> str | None:
    """A sentence when the test metrics show the detector did not learn."""
    return None if test.get("box_f1") else "The detector finds no polyp box at score >= 0.5 and IoU >= 0.5 (box F1 0)."


TASK = register_task(Task(
    name="detect",
    help="KUMC/PolypsSet-layout detection (the original STFT, or detector=fcos; frame F1, box F1, COCO mAP)",
    title="KUMC detection",
    dataset="KUMC/PolypsSet",
    dataset_folders=("kumc", "KUMC", "PolypsSet"),
    config_class=DetectConfig,
    finetune=finetune_detect,
    build_head=lambda config, backbone: build_detector(backbone, **config),
    assemble=_assemble,
    evaluate=evaluate_detect_model,
    predict=predict_detect,
    draw=draw_frame,
    csv_rows=csv_rows,
    paper=PaperResult(metric="frame_f1_original", label="F1", paper=84.1, released=84.0, split="val"),
    model_name=model_name,
    released_file="kumc.pth",
    layouts=(STFT_LAYOUT,),
    evaluate_options=(TaskOption("--reference-seed", "STFT detector: seed of the test-time reference draws (the "
                                                     "original never seeds them)", type=int, default=0),),
    predict_options=(
        TaskOption("--score-threshold", "detection: lowest box score reported", type=float, default=0.5),
        TaskOption("--reference-seed", "STFT detector: seed of the reference-frame draws (the original never "
                                       "seeds them)", type=int, default=0)),
    caveat=caveat,
    synthetic=SyntheticLayout("kumc", kumc_layout),
    demo=DemoSettings(folder="kumc", recipe="detect_cpu", epochs=4, quick_epochs=2,
                      original_recipe="detect_stft_cpu"),
))
"""The detection task (:mod:`endofm.tasks.base`)."""
