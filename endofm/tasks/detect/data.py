"""The detection data: KUMC/PolypsSet-layout samples for the FCOS (current frame and references stacked,
:func:`detect_datasets`) and the original STFT's training samples (:class:`STFTTrainFrames`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from endofm.data.datasets.kumc import KUMCDataset, load_rgb, read_voc
from endofm.data.transforms import VideoTransform
from endofm.errors import ConfigError
from endofm.models.detection.transform import STFT_INPUT, resize_frames
from endofm.tasks.detect.config import DetectDataConfig

MIN_OFFSET, MAX_OFFSET, TEST_REF_NUM = -9, 9, 10
"""The original STFT's reference window: frames ``-9 .. +9`` around the key, 10 references at test time."""


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


class STFTTrainFrames(torch.utils.data.Dataset):
    """Training samples of the original: the key frame, one reference 1-9 frames before it and one 1-9 after
    it (ids clamped to the video), all resized to ``size`` x ``size`` (PIL bilinear), flipped together with
    probability ``hflip`` and normalised as :data:`STFT_INPUT`. Boxes are clipped to the image (empty ones
    dropped), scaled to the input and flipped with the original's ``+ 1`` convention; labels are 1-based.
    Draws come from torch's generator (seeded per sample in training: :class:`~endofm.tasks.finetune.KeyedSamples`)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", size: int = 640, hflip: float = 0.5,
                 skip_empty: bool = False) -> None:
        self.index = KUMCDataset(root, split, skip_unannotated=True)
        self.size, self.hflip = size, hflip
        if skip_empty:  # stft.empty_frames=leave_out
            self.index.samples = [s for s in self.index.samples if len(read_voc(s[2], KUMCDataset.classes)[0])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, Any]:
        v, k, xml = self.index.samples[item]
        _, paths = self.index.videos[v]
        left = int(torch.randint(MIN_OFFSET, 0, ()))
        right = int(torch.randint(1, MAX_OFFSET + 1, ()))
        ids = [k] + [min(max(k + offset, 0), len(paths) - 1) for offset in (left, right)]
        frames = np.stack([load_rgb(paths[i]) for i in ids])
        boxes, labels, (height, width) = read_voc(xml, KUMCDataset.classes)
        boxes = torch.stack((boxes[:, 0].clamp(0, width - 1), boxes[:, 1].clamp(0, height - 1),
                             boxes[:, 2].clamp(0, width - 1), boxes[:, 3].clamp(0, height - 1)), dim=1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep], labels[keep] + 1
        resized = resize_frames(frames, self.size)
        boxes = boxes * torch.tensor([self.size / width, self.size / height] * 2)
        if float(torch.rand(())) < self.hflip:
            resized = resized.flip(-1)
            boxes = torch.stack((self.size - boxes[:, 2] - 1, boxes[:, 1], self.size - boxes[:, 0] - 1, boxes[:, 3]),
                                dim=1)
        return {"frames": STFT_INPUT.normalize(resized).transpose(0, 1), "boxes": boxes, "labels": labels,
                "meta": {"path": str(paths[k]), "frame_ids": [i + 1 for i in ids]}}


def collate_one(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The original trains at batch 1: the one sample as it is."""
    if len(samples) != 1:
        raise ConfigError(f"the STFT trains one sample per iteration (run.batch_size 1), got {len(samples)}")
    return samples[0]
