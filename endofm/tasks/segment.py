"""CVC-12k segmentation: the original TransUNet on Endo-FM, or a lighter decoder on the backbone's patch tokens.

``segmenter: transunet`` (the default) trains the original's model (:mod:`endofm.models.transunet`): Endo-FM's
blocks, final norm and CLS token from ``model.init`` inside an R50-ViT hybrid with a U-Net decoder.
``segmenter: decoder`` is the cheaper alternative: :class:`SegmentationDecoder` turns every frame's
patch-token grid (stride = patch size) into per-pixel logits with ``log2(patch)`` stages of (x2 bilinear
upsampling, 3x3 conv, GroupNorm, ReLU); with ``stem`` a light convolutional stem on the frame gives skip
features at strides 4 and 2 for sharper edges. The loss is 0.5 cross-entropy + 0.5 soft Dice (classes
averaged; squared denominators as the original's, or plain sums). Metrics are Dice and HD95 per sequence,
averaged (:mod:`endofm.metrics.segmentation`), at the network's resolution.
Splits: ``splits/train.txt`` trains, ``splits/test.txt`` tests, and the validation split is
``splits/val.txt`` when present, else ``val_fraction`` of the training sequences (whole sequences); the split
names ``original_train`` / ``original_test`` are the original's lists, which ship with the package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset, default_collate
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from tqdm import tqdm

from endofm.data.datasets.cvc import CVCDataset
from endofm.data.datasets.splits import find_leakage, split_by_case
from endofm.data.synthetic.writers import cvc_layout
from endofm.data.transforms import Resize
from endofm.data.video import VideoReader
from endofm.engine.cpu import loader_workers
from endofm.engine.distributed import all_gather_objects, global_sum, shard, shared_loss, world_size
from endofm.engine.logging import bar_off
from endofm.engine.optim import OptimConfig
from endofm.engine.trainer import RunConfig
from endofm.errors import ConfigError, DatasetError, InputError
from endofm.metrics.segmentation import EMPTY_RULES, segmentation_metrics
from endofm.models.backbone import EndoFMBackbone
from endofm.models.inputs import InputSpec
from endofm.models.transunet import TransUNet
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
from endofm.tasks.finetune import FinetuneRecipe, build_backbone, run_finetune
from endofm.tasks.registry import register_task
from endofm.tasks.segment_transunet import LAYOUT as TRANSUNET_LAYOUT
from endofm.tasks.segment_transunet import save_transunet_folder

SEGMENTERS = ("transunet", "decoder")


@dataclass
class SegmentDataConfig:
    """Where the CVC-ClinicDB-layout data is and how clips are made."""

    root: str = ""
    clip_length: int | None = None
    """Consecutive frames per sample (sequences are cut into windows covering them); null: every sequence
    whole, as one clip (the original; needs ``run.batch_size`` 1)."""
    size: int = 224
    resize: int = 256
    """Training: frames are resized to ``resize`` square, then a random ``size`` crop is taken (the original's
    256 -> 224); 0: resized to ``size`` directly."""
    hflip: float = 0.5
    rotation: float = 5.0
    """Training: a random rotation within +- this many degrees (0: none)."""
    per_frame_augment: bool = True
    """Draw the random crop, flip and rotation for every frame on its own (the original transforms frames one
    by one); false: one draw for the whole clip."""
    channel_order: str = "BGR"
    """The original reads frames with OpenCV and feeds them in BGR order."""
    minmax: bool = True
    """Scale every frame to [0, 1] by its own minimum and maximum (the original) instead of dividing by 255."""
    normalization: str = "half"
    mask_threshold: int = 128
    """A mask pixel is polyp when its grey level is at least this: 128 (above mid-grey) or 255 (only white,
    the original's ``label == 255``). Masks of only 0 and 255 give the same labels either way."""
    splits: SplitsConfig = field(default_factory=lambda: SplitsConfig(test="test"))

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"data.channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.clip_length is not None and self.clip_length < 1:
            raise ConfigError(f"data.clip_length must be positive or null, got {self.clip_length}")
        if not 1 <= self.mask_threshold <= 255:
            raise ConfigError(f"data.mask_threshold must be a grey level in 1..255, got {self.mask_threshold}")
        if self.resize and self.resize < self.size:
            raise ConfigError(f"data.resize {self.resize} is smaller than the crop data.size {self.size}")

    def input_spec(self) -> InputSpec:
        """The model input these settings make."""
        return preset_input(self.normalization, (self.size, self.size), self.clip_length,
                            channel_order=self.channel_order, minmax=self.minmax)


@dataclass
class TransUNetSizes:
    """The TransUNet's own parts (its transformer is the backbone's); the defaults are the original's."""

    resnet_width: int = 64
    resnet_units: tuple[int, int, int] = (3, 4, 9)
    decoder_channels: tuple[int, int, int, int] = (256, 128, 64, 16)
    n_skip: int = 3
    dropout: float = 0.1


@dataclass
class DecoderConfig:
    """The lighter decoder (``segmenter: decoder``)."""

    channels: tuple[int, ...] = (256, 128, 64, 32)
    stem: bool = False
    """A light convolutional stem on the frame for high-resolution skip features."""


@dataclass
class SegmentConfig:
    """A segmentation fine-tuning run; defaults are the original's model and hyper-parameters (TransUNet,
    whole sequences at batch 1, AdamW 1e-4 with weight decay 0.05 on every parameter, poly decay, 150
    epochs, 224 input), with selection on a validation split."""

    segmenter: str = "transunet"
    """``transunet`` (the original's model) or ``decoder`` (the lighter decoder on the patch tokens)."""
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    transunet: TransUNetSizes = field(default_factory=TransUNetSizes)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    data: SegmentDataConfig = field(default_factory=SegmentDataConfig)
    dice_denominator: str = "squared"
    """Soft Dice denominators: ``squared`` (sum p^2 + sum t^2, the original) or ``linear`` (sum p + sum t)."""
    empty_rule: str = "standard"
    """Dice of empty masks (:data:`~endofm.metrics.segmentation.EMPTY_RULES`; ``original``: the original's)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05,
                                                                   schedule="poly", decay_all=True))
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/finetune-segment", epochs=150,
                                                             batch_size=1))

    def __post_init__(self) -> None:
        if self.segmenter not in SEGMENTERS:
            raise ConfigError(f"segmenter must be one of {SEGMENTERS}, got {self.segmenter!r}")
        if self.dice_denominator not in ("squared", "linear"):
            raise ConfigError(f"dice_denominator must be squared or linear, got {self.dice_denominator!r}")
        if self.empty_rule not in EMPTY_RULES:
            raise ConfigError(f"empty_rule must be one of {EMPTY_RULES}, got {self.empty_rule!r}")
        if self.data.clip_length is None and self.run.batch_size != 1:
            raise ConfigError("data.clip_length null (whole sequences of different lengths) needs run.batch_size 1, "
                              f"got {self.run.batch_size}")
        if self.segmenter == "transunet" and (self.model.grad_checkpointing or self.data.size != 224):
            raise ConfigError("segmenter transunet takes data.size 224 (its 14x14 token grid) and no "
                              f"model.grad_checkpointing; got size {self.data.size}")


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.GroupNorm(math.gcd(8, out_ch), out_ch),
                         nn.ReLU(inplace=True))


class SegmentationDecoder(nn.Module):
    """Patch tokens ``[N, D, h, w]`` (and frames ``[N, 3, H, W]`` with ``stem``) -> logits ``[N, K, H, W]``."""

    def __init__(self, embed_dim: int, patch_size: int = 16, num_classes: int = 2,
                 channels: tuple[int, ...] | list[int] = (256, 128, 64, 32), stem: bool = False) -> None:
        super().__init__()
        stages = int(round(math.log2(patch_size)))
        if 2**stages != patch_size:
            raise ConfigError(f"the decoder needs a power-of-two patch size, got {patch_size}")
        channels = list(channels)[:stages] + [channels[-1]] * max(0, stages - len(channels))
        self.config = {"embed_dim": embed_dim, "patch_size": patch_size, "num_classes": num_classes,
                       "channels": list(channels), "stem": stem}
        self.stem = None
        skip = {}
        if stem:
            self.stem = nn.ModuleList([_block(3, 16), _block(16, 32)])
            skip = {2: 16, 4: 32}
        self.proj = _block(embed_dim, channels[0])
        self.stages = nn.ModuleList()
        self.skip_strides: list[int | None] = []
        in_ch = channels[0]
        for i, out_ch in enumerate(channels):
            stride = patch_size // 2 ** (i + 1)
            extra = skip.get(stride, 0)
            self.skip_strides.append(stride if extra else None)
            self.stages.append(_block(in_ch + extra, out_ch))
            in_ch = out_ch
        self.classifier = nn.Conv2d(in_ch, num_classes, 1)

    def forward(self, tokens: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        skips: dict[int, torch.Tensor] = {}
        if self.stem is not None:
            if frames is None:
                raise ConfigError("this decoder has a stem: it needs the frames")
            x = frames
            for stride, block in zip((2, 4), self.stem, strict=True):
                x = block(F.max_pool2d(x, 2) if stride > 2 else F.avg_pool2d(x, 2))
                skips[stride] = x
        x = self.proj(tokens)
        for stage, stride in zip(self.stages, self.skip_strides, strict=True):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if stride is not None:
                x = torch.cat([x, F.interpolate(skips[stride], size=x.shape[-2:], mode="nearest")], dim=1)
            x = stage(x)
        return self.classifier(x)


class SegmentationNetwork(nn.Module):
    """Backbone patch tokens of a clip ``[B, 3, T, H, W]`` -> per-frame logits ``[B, K, T, H', W']`` (H', W':
    H and W cropped to multiples of the patch size)."""

    def __init__(self, backbone: EndoFMBackbone, decoder: SegmentationDecoder) -> None:
        super().__init__()
        self.backbone, self.decoder = backbone, decoder

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        _, patches = self.backbone.forward_tokens(video)
        b, t, h, w, d = patches.shape
        p = self.backbone.patch_size
        tokens = patches.permute(0, 1, 4, 2, 3).reshape(b * t, d, h, w)
        frames = video[..., : h * p, : w * p].permute(0, 2, 1, 3, 4).reshape(b * t, 3, h * p, w * p)
        logits = self.decoder(tokens, frames if self.decoder.stem is not None else None)
        return logits.view(b, t, *logits.shape[1:]).permute(0, 2, 1, 3, 4)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5, squared: bool = True) -> torch.Tensor:
    """1 - soft Dice per class (softmax probabilities vs one-hot over the whole batch), averaged over classes;
    ``squared``: the denominator sums squares (the original TransUNet's ``DiceLoss``), else plain sums.

    In a distributed run the sums run over the global batch (every process's pixels), so the loss and its
    gradient are those of one process with the whole batch."""
    probs = logits.softmax(dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = tuple(d for d in range(probs.ndim) if d != 1)
    intersect = global_sum((probs * one_hot).sum(dims))
    total = (probs * probs).sum(dims) + one_hot.sum(dims) if squared else probs.sum(dims) + one_hot.sum(dims)
    return shared_loss((1 - (2 * intersect + smooth) / (global_sum(total) + smooth)).mean())


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, squared: bool = True) -> torch.Tensor:
    """0.5 cross-entropy + 0.5 Dice; logits ``[B, K, T, H, W]``, target ``[B, T, H, W]`` (cropped to fit)."""
    target = target[..., : logits.shape[-2], : logits.shape[-1]]
    logits = logits.float()
    return 0.5 * F.cross_entropy(logits, target) + 0.5 * dice_loss(logits, target, squared=squared)


def _minmax_uint8(video: torch.Tensor) -> torch.Tensor:
    """Every frame scaled by its own minimum and maximum to 0..255 and truncated to uint8, as the original's
    reader does before its transforms."""
    x = video.float()
    low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - low) / (high - low).clamp_min(1e-12) * 255).to(torch.uint8)


class SegmentTransform:
    """Geometric steps on frames and masks together (one draw per frame or per clip), then the model's input
    normalisation (:class:`~endofm.tasks.finetuned.InputSpec`): uint8 ``[T, 3, H, W]`` + mask ``[T, H, W]`` ->
    ``{"video": [3, T, h, w], "mask": long [T, h, w]}``."""

    def __init__(self, geometric: v2.Transform, spec: InputSpec, per_frame: bool = False) -> None:
        self.geometric, self.spec, self.per_frame = geometric, spec, per_frame

    def __call__(self, video: torch.Tensor, *, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if video.ndim != 4 or video.shape[1] != 3 or video.dtype != torch.uint8:
            raise InputError(f"expected a uint8 [T, 3, H, W] video, got {video.dtype} {tuple(video.shape)}")
        if self.spec.minmax:
            video = _minmax_uint8(video)
        masks = torch.zeros(video.shape[0], *video.shape[2:], dtype=torch.uint8) if mask is None else mask
        pairs = ([(video[t : t + 1], masks[t : t + 1]) for t in range(len(video))] if self.per_frame
                 else [(video, masks)])
        outs = [self.geometric({"video": tv_tensors.Video(v), "mask": tv_tensors.Mask(m.to(torch.uint8))})
                for v, m in pairs]
        frames = torch.cat([out["video"].as_subclass(torch.Tensor) for out in outs])
        result = {"video": self.spec.normalize(frames)}
        if mask is not None:
            result["mask"] = torch.cat([out["mask"].as_subclass(torch.Tensor) for out in outs]).long()
        return result


def segment_transforms(data: SegmentDataConfig) -> tuple[SegmentTransform, SegmentTransform]:
    """Train (resize to ``resize``, random crop to ``size``, flip, rotation) and eval (resize to ``size``)
    transforms, with the input normalisation of ``data``."""
    size = [data.size, data.size]
    steps: list[v2.Transform] = ([Resize([data.resize] * 2, antialias=True), v2.RandomCrop(size)] if data.resize
                                 else [Resize(size, antialias=True)])
    steps.append(v2.RandomHorizontalFlip(data.hflip))
    if data.rotation:
        steps.append(v2.RandomRotation(data.rotation, interpolation=InterpolationMode.BILINEAR))
    spec = data.input_spec()
    return (SegmentTransform(v2.Compose(steps), spec, data.per_frame_augment),
            SegmentTransform(Resize(size, antialias=True), spec))


def _keep(dataset: CVCDataset, names: set[str]) -> CVCDataset:
    dataset.samples = [s for s in dataset.samples if s[0].name in names]
    dataset.sequences = [s for s in dataset.sequences if s.name in names]
    return dataset


def segment_datasets(data: SegmentDataConfig, select_on_test: bool = False,
                     seed: int = 0) -> tuple[CVCDataset, CVCDataset, CVCDataset, dict[str, str]]:
    """Train, validation and test datasets and the names of their splits (see the module docstring)."""
    if not data.root:
        raise ConfigError("data.root is not set: give the CVC-ClinicDB folder (--data ROOT)")
    train_tf, eval_tf = segment_transforms(data)
    splits = data.splits
    test_name = "test" if splits.test == "auto" else splits.test

    def make(split: str, transform: SegmentTransform) -> CVCDataset:
        return CVCDataset(data.root, split, clip_length=data.clip_length, transform=transform,
                          mask_threshold=data.mask_threshold)

    train, test = make(splits.train, train_tf), make(test_name, eval_tf)
    names = {"train": splits.train, "test": test_name}
    report = find_leakage({"train": [s.name for s in train.sequences], "test": [s.name for s in test.sequences]})
    if report.leaks:
        names["leakage"] = str(report)
    if select_on_test:
        return train, test, test, {**names, "val": test_name}
    val_name = splits.val
    if val_name == "auto":
        val_name = "val" if (Path(train.root) / "splits" / "val.txt").exists() else ""
    if val_name:
        return train, make(val_name, eval_tf), test, {**names, "val": val_name}
    parts = split_by_case([s.name for s in train.sequences], None,
                          {"train": 1 - splits.val_fraction, "val": splits.val_fraction}, seed=seed)
    if not parts["train"] or not parts["val"]:
        raise DatasetError(f"{train.root / 'splits' / (splits.train + '.txt')}: too few sequences to hold out a "
                           "validation split; add splits/val.txt")
    val = _keep(make(splits.train, eval_tf), set(parts["val"]))
    _keep(train, set(parts["train"]))
    names.update(train=f"{splits.train} (rest)", val=f"{splits.val_fraction:g} of {splits.train} sequences (held out)")
    return train, val, test, names


@torch.inference_mode()
def evaluate_segmenter(network: nn.Module, dataset: CVCDataset, batch_size: int = 2,
                       device: str | torch.device = "cpu", num_workers: int = 0,
                       empty_rule: str = "standard", progress: bool = False) -> dict[str, Any]:
    """Per-sequence Dice (empty masks by ``empty_rule``) and HD95, averaged, of a segmentation network on a
    dataset (frames of overlapping windows are counted once; whole sequences go one at a time; in a
    distributed run each process segments its :func:`~endofm.engine.distributed.shard` of the clips)."""
    if any(len(frames) != len(dataset.samples[0][1]) for _, frames in dataset.samples):
        batch_size = 1
    was_training = network.training
    network.eval()
    pred_frames: dict[str, dict[int, np.ndarray]] = {}
    true_frames: dict[str, dict[int, np.ndarray]] = {}
    loader = DataLoader(Subset(dataset, shard(len(dataset))), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=default_collate)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=bar_off(progress), leave=False):
        logits = network(batch["video"].to(device))
        pred = logits.argmax(1).cpu().numpy().astype(bool)
        mask = batch["mask"][..., : pred.shape[-2], : pred.shape[-1]].numpy().astype(bool)
        for b, name in enumerate(batch["meta"]["sequence"]):
            for t, frame in enumerate(batch["meta"]["frame_indices"][b].tolist()):
                pred_frames.setdefault(name, {})[frame] = pred[b, t]
                true_frames.setdefault(name, {})[frame] = mask[b, t]
    network.train(was_training)
    if world_size() > 1:  # every process's clips
        for part in all_gather_objects((pred_frames, true_frames)):
            for mine, theirs in zip((pred_frames, true_frames), part, strict=True):
                for name, frames in theirs.items():
                    mine.setdefault(name, {}).update(frames)
    sequences = {name: (np.stack([frames[i] for i in sorted(frames)]),
                        np.stack([true_frames[name][i] for i in sorted(frames)]))
                 for name, frames in pred_frames.items()}
    result = segmentation_metrics(sequences, empty_rule)
    result["frames"] = int(sum(len(f) for f in pred_frames.values()))
    return result


class SegmentRecipe(FinetuneRecipe):
    """0.5 CE + 0.5 Dice on per-frame logits."""

    task = "segment"
    default_metric = "dice"
    evaluator = evaluate_segmenter

    def build_network(self) -> nn.Module:
        config = self.config
        backbone = build_backbone(config.model)
        if config.segmenter == "transunet":
            sizes = config.transunet
            return TransUNet.from_backbone(backbone, resnet_width=sizes.resnet_width, resnet_units=sizes.resnet_units,
                                           decoder_channels=sizes.decoder_channels, n_skip=sizes.n_skip,
                                           dropout=sizes.dropout, drop_path_rate=config.model.drop_path_rate)
        decoder = SegmentationDecoder(backbone.embed_dim, backbone.patch_size, 2, config.decoder.channels,
                                      config.decoder.stem)
        return SegmentationNetwork(backbone, decoder)

    def evaluate(self, dataset: Any) -> dict[str, Any]:
        run = self.config.run
        return evaluate_segmenter(self.network, dataset, run.batch_size, self.device,
                                  loader_workers(run.num_workers), self.config.empty_rule)

    def compute_loss(self, network: nn.Module, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = network(batch["video"].to(self.device, non_blocking=True))
        squared = self.config.dice_denominator == "squared"
        return segmentation_loss(logits, batch["mask"].to(self.device), squared=squared), {}

    def batch_size(self, batch: dict) -> int:
        return len(batch["video"])

    def parts(self) -> tuple[EndoFMBackbone, nn.Module]:
        return self.network.backbone, self.network.decoder

    def save_model(self, directory: Path, extra: dict[str, Any]) -> Path:
        if isinstance(self.network, TransUNet):
            return save_transunet_folder(directory, self.network, self.config.data.input_spec(),
                                         {"data": self.data_config(), **extra})
        return super().save_model(directory, extra)

    def data_config(self) -> dict[str, Any]:
        data = self.config.data
        return {"clip_length": data.clip_length, "size": data.size, "normalization": data.normalization,
                "channel_order": data.channel_order, "minmax": data.minmax, "empty_rule": self.config.empty_rule,
                "mask_threshold": data.mask_threshold}


def finetune_segment(config: SegmentConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune a segmentation model; the run folder gets ``model/``, ``metrics.json`` and plots."""
    datasets = segment_datasets(config.data, config.selection.select_on_test, config.run.seed)
    return run_finetune(config, SegmentRecipe, datasets, default_collate, resume)


PREDICT_WINDOW = 25
"""Frames per clip when a model takes whole sequences (the original's longest CVC sequence): a long video is
cut into windows of this many frames."""


def input_transform(spec: InputSpec) -> SegmentTransform:
    """The evaluation transform of a model's input: resize (stretch) to its size (PIL's arithmetic, as in
    training) and normalise as it expects."""
    return SegmentTransform(Resize(list(spec.size), antialias=True), spec)


def evaluate_segment_model(loaded: LoadedFinetuned, root: str, split: str = "test", device: str = "cpu",
                           batch_size: int = 1, empty_rule: str | None = None,
                           progress: bool = False) -> dict[str, Any]:
    """Metrics of a segmentation model (:func:`~endofm.tasks.finetuned.load_finetuned`) on one split of a
    CVC-ClinicDB-layout dataset, with the model's own input; Dice of empty masks by ``empty_rule`` (default:
    the rule the model was trained with, else ``standard``; the metrics name the rule applied), masks read with
    the grey-level threshold it was trained with (else 128)."""
    data = loaded.metadata.get("data") or {}
    rule = empty_rule or data.get("empty_rule", "standard")
    dataset = CVCDataset(root, split, clip_length=loaded.input.frames, transform=input_transform(loaded.input),
                         mask_threshold=data.get("mask_threshold", 128))
    return {**evaluate_segmenter(loaded.model.to(device), dataset, batch_size, device, empty_rule=rule,
                                 progress=progress), "empty_rule": rule}


def predict_segment(loaded: LoadedFinetuned, reader: VideoReader, device: torch.device,
                    progress: bool = False) -> Prediction:
    """Per-frame masks of a video (at the model's input size, the array ``masks``) and each frame's polyp
    fraction and box, by clips of the model's frame count (whole-sequence models, as the original's TransUNet:
    windows of :data:`PREDICT_WINDOW` frames)."""
    from endofm.data.datasets.cvc import _windows

    transform = input_transform(loaded.input)
    network = loaded.model.to(device).eval()
    count = len(reader)
    masks = np.zeros((count, *loaded.input.size), dtype=np.uint8)
    length = loaded.input.frames or min(PREDICT_WINDOW, count)
    windows = _windows(list(range(count)), length)
    for window in tqdm(windows, desc="windows", unit="window", disable=bar_off(progress)):
        video = transform(reader.read(window))["video"].unsqueeze(0).to(device)
        with torch.inference_mode():
            masks[window] = network(video).argmax(1)[0].cpu().numpy().astype(np.uint8)
    sy, sx = reader.info.height / masks.shape[1], reader.info.width / masks.shape[2]
    frames = []
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = [cols[0] * sx, rows[0] * sy, (cols[-1] + 1) * sx, (rows[-1] + 1) * sy] if rows.size else None
        frames.append({"frame": i, "time": i / reader.info.fps, "polyp_fraction": float(mask.mean()), "box": box})
    return Prediction({"mask_size": list(masks.shape[1:]), "frames": frames}, {"masks": masks})


def draw_frame(image: Image.Image, frame: dict[str, Any], scale: tuple[float, float],
               arrays: dict[str, np.ndarray]) -> Image.Image:
    """The predicted mask blended in green, and the share of the frame it covers on a dark box."""
    mask = arrays.get("masks")
    if mask is None:
        return image
    overlay = np.asarray(Image.fromarray(mask * 255).resize(image.size, Image.NEAREST)) > 0
    pixels = np.asarray(image).copy()
    pixels[overlay] = (0.5 * pixels[overlay] + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw_label(image, (0, 0), f"polyp area {100 * frame['polyp_fraction']:.1f}%")
    return image


def csv_rows(frames: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per frame: the polyp fraction and the box around the mask (empty without one)."""
    return ["frame", "time", "polyp_fraction", "x1", "y1", "x2", "y2"], [
        [f["frame"], f"{f['time']:.3f}", f"{f['polyp_fraction']:.6f}",
         *([f"{v:.1f}" for v in f["box"]] if f["box"] else ["", "", "", ""])] for f in frames]


def _assemble(found: FinetunedModel) -> tuple[nn.Module, InputSpec]:
    data = found.data
    spec = preset_input(data["normalization"], (int(data["size"]),) * 2, int(data["clip_length"]),
                        channel_order=data.get("channel_order", "RGB"), minmax=bool(data.get("minmax", False)))
    return SegmentationNetwork(found.backbone, found.head), spec


def _original_lists_missing(folder: Path) -> list[int]:
    """Frames of the original CVC sequence lists (``original_train``/``original_test``) missing in ``folder``."""
    from endofm.data.datasets.cvc import ORIGINAL_SPLITS

    frames = folder / "Original"
    present = {path.stem for path in frames.iterdir()} if frames.is_dir() else set()
    needed = sorted({frame for split in ORIGINAL_SPLITS.values() for seq in split for frame in seq.frames})
    return [frame for frame in needed if str(frame) not in present]


def dataset_overrides(recipe: str, folder: Path) -> tuple[list[str], str]:
    """Overrides a CVC folder needs to run ``recipe``, and the note that says so: a folder without the frames
    of the original's sequence lists (a synthetic corpus) runs ``segment_original`` on its own splits."""
    if recipe != "segment_original":
        return [], ""
    missing = _original_lists_missing(folder)
    if not missing:
        return [], ""
    return (["data.splits.train=train", "data.splits.test=test"],
            f"{folder} lacks {len(missing)} frames of the original sequence lists (e.g. Original/{missing[0]}): "
            "its own train/test splits ran")


def model_name(config: Mapping[str, Any]) -> str:
    """The segmenter a run's config trains, in words (``endofm reproduce``'s table)."""
    if config.get("segmenter") == "transunet":
        return "TransUNet (R50-ViT hybrid on Endo-FM's blocks)"
    return "Endo-FM ViT + the package's decoder on patch tokens (not TransUNet)"


def caveat(test: Mapping[str, Any]) -> str | None:
    """A sentence when the test metrics show the segmenter did not learn."""
    return None if test.get("dice") else "The segmenter's Dice is 0: it predicts (almost) no polyp pixels."


TASK = register_task(Task(
    name="segment",
    help="CVC-ClinicDB-layout segmentation (the original TransUNet, or segmenter=decoder on the patch tokens; "
         "Dice/HD95 per sequence)",
    title="CVC-12k segmentation",
    dataset="CVC-ClinicDB",
    dataset_folders=("cvc", "CVC-ClinicDB", "CVC-12k", "CVC"),
    config_class=SegmentConfig,
    finetune=finetune_segment,
    build_head=lambda config, backbone: SegmentationDecoder(**config),
    assemble=_assemble,
    evaluate=evaluate_segment_model,
    predict=predict_segment,
    draw=draw_frame,
    csv_rows=csv_rows,
    paper=PaperResult(metric="dice", label="Dice", paper=73.9, released=76.6, split="test"),
    model_name=model_name,
    released_file="cvc.pth",
    layouts=(TRANSUNET_LAYOUT,),
    evaluate_options=(TaskOption("--empty-rule", "Dice of empty masks (default: the model's training rule, else "
                                                 "standard)", choices=("standard", "original")),),
    dataset_overrides=dataset_overrides,
    caveat=caveat,
    synthetic=SyntheticLayout("cvc", cvc_layout),
    demo=DemoSettings(folder="cvc", recipe="segment_cpu", epochs=12, quick_epochs=4,
                      original_recipe="segment_transunet_cpu"),
))
"""The segmentation task (:mod:`endofm.tasks.base`)."""
