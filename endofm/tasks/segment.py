"""CVC-12k segmentation: a progressive-upsampling decoder on the backbone's patch tokens, per frame.

:class:`SegmentationDecoder` turns every frame's patch-token grid (stride = patch size) into per-pixel logits
with ``log2(patch)`` stages of (x2 bilinear upsampling, 3x3 conv, GroupNorm, ReLU); with ``stem`` a light
convolutional stem on the frame gives skip features at strides 4 and 2 for sharper edges. The loss is
0.5 cross-entropy + 0.5 soft Dice (classes averaged, as the original's TransUNet-style code). Metrics are
Dice and HD95 per sequence, averaged (:mod:`endofm.metrics.segmentation`), at the network's resolution.
Splits: ``splits/train.txt`` trains, ``splits/test.txt`` tests, and the validation split is
``splits/val.txt`` when present, else ``val_fraction`` of the training sequences (whole sequences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms import v2

from endofm.data.datasets.cvc import CVCDataset
from endofm.data.datasets.splits import find_leakage, split_by_case
from endofm.data.transforms import VideoTransform
from endofm.engine.trainer import RunConfig
from endofm.errors import ConfigError, DatasetError
from endofm.metrics.segmentation import segmentation_metrics
from endofm.models.backbone import EndoFMBackbone
from endofm.tasks.common import (
    FinetuneModelConfig,
    FinetuneRecipe,
    OptimConfig,
    SelectionConfig,
    SplitsConfig,
    build_backbone,
    run_finetune,
)


@dataclass
class SegmentDataConfig:
    """Where the CVC-ClinicDB-layout data is and how clips are made."""

    root: str = ""
    clip_length: int = 8
    """Consecutive frames per sample (sequences are cut into windows covering them)."""
    size: int = 224
    normalization: str = "half"
    hflip: float = 0.5
    splits: SplitsConfig = field(default_factory=lambda: SplitsConfig(test="test"))


@dataclass
class DecoderConfig:
    """The segmentation decoder."""

    channels: tuple[int, ...] = (256, 128, 64, 32)
    stem: bool = False
    """A light convolutional stem on the frame for high-resolution skip features."""


@dataclass
class SegmentConfig:
    """A segmentation fine-tuning run; defaults are the original's hyper-parameters (AdamW 1e-4, wd 0.05,
    poly decay, 150 epochs, 224 input)."""

    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    data: SegmentDataConfig = field(default_factory=SegmentDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05,
                                                                   schedule="poly"))
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/finetune-segment", epochs=150,
                                                             batch_size=4))


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


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - soft Dice per class (softmax probabilities vs one-hot), averaged over classes."""
    probs = logits.softmax(dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = tuple(d for d in range(probs.ndim) if d != 1)
    intersect = (probs * one_hot).sum(dims)
    total = probs.sum(dims) + one_hot.sum(dims)
    return (1 - (2 * intersect + smooth) / (total + smooth)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5 cross-entropy + 0.5 Dice; logits ``[B, K, T, H, W]``, target ``[B, T, H, W]`` (cropped to fit)."""
    target = target[..., : logits.shape[-2], : logits.shape[-1]]
    logits = logits.float()
    return 0.5 * F.cross_entropy(logits, target) + 0.5 * dice_loss(logits, target)


def segment_transforms(data: SegmentDataConfig) -> tuple[VideoTransform, VideoTransform]:
    """Train (resize + flip) and eval (resize) transforms to ``size x size``."""
    size = [data.size, data.size]
    train = VideoTransform(v2.Compose([v2.Resize(size, antialias=True), v2.RandomHorizontalFlip(data.hflip)]),
                           data.normalization)
    return train, VideoTransform(v2.Resize(size, antialias=True), data.normalization)


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

    def make(split: str, transform: VideoTransform) -> CVCDataset:
        return CVCDataset(data.root, split, clip_length=data.clip_length, transform=transform)

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
                       device: str | torch.device = "cpu", num_workers: int = 0) -> dict[str, Any]:
    """Per-sequence Dice and HD95 (averaged) of a segmentation network on a dataset (frames of overlapping
    windows are counted once)."""
    was_training = network.training
    network.eval()
    pred_frames: dict[str, dict[int, np.ndarray]] = {}
    true_frames: dict[str, dict[int, np.ndarray]] = {}
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=default_collate)
    for batch in loader:
        logits = network(batch["video"].to(device))
        pred = logits.argmax(1).cpu().numpy().astype(bool)
        mask = batch["mask"][..., : pred.shape[-2], : pred.shape[-1]].numpy().astype(bool)
        for b, name in enumerate(batch["meta"]["sequence"]):
            for t, frame in enumerate(batch["meta"]["frame_indices"][b].tolist()):
                pred_frames.setdefault(name, {})[frame] = pred[b, t]
                true_frames.setdefault(name, {})[frame] = mask[b, t]
    network.train(was_training)
    sequences = {name: (np.stack([frames[i] for i in sorted(frames)]),
                        np.stack([true_frames[name][i] for i in sorted(frames)]))
                 for name, frames in pred_frames.items()}
    result = segmentation_metrics(sequences)
    result["frames"] = int(sum(len(f) for f in pred_frames.values()))
    return result


class SegmentRecipe(FinetuneRecipe):
    """0.5 CE + 0.5 Dice on per-frame logits."""

    task = "segment"
    default_metric = "dice"
    evaluator = evaluate_segmenter

    def build_network(self) -> SegmentationNetwork:
        backbone = build_backbone(self.config.model)
        decoder = SegmentationDecoder(backbone.embed_dim, backbone.patch_size, 2, self.config.decoder.channels,
                                      self.config.decoder.stem)
        return SegmentationNetwork(backbone, decoder)

    def compute_loss(self, network: nn.Module, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = network(batch["video"].to(self.device, non_blocking=True))
        return segmentation_loss(logits, batch["mask"].to(self.device)), {}

    def batch_size(self, batch: dict) -> int:
        return len(batch["video"])

    def parts(self) -> tuple[EndoFMBackbone, nn.Module]:
        return self.network.backbone, self.network.decoder

    def data_config(self) -> dict[str, Any]:
        data = self.config.data
        return {"clip_length": data.clip_length, "size": data.size, "normalization": data.normalization}


def finetune_segment(config: SegmentConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune a segmentation model; the run folder gets ``model/``, ``metrics.json`` and plots."""
    datasets = segment_datasets(config.data, config.selection.select_on_test, config.run.seed)
    return run_finetune(config, SegmentRecipe, datasets, default_collate, resume)
