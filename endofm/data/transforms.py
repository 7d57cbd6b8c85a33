"""Fine-tuning transforms that move frames, masks and boxes together.

A :class:`VideoTransform` takes a uint8 ``[T, 3, H, W]`` video and, optionally, a ``[T, H, W]`` mask and
``[N, 4]`` xyxy boxes (with ``labels``), applies one draw of the same geometric transform
(``torchvision.transforms.v2`` on ``tv_tensors``) to all of them, then normalises the video with a named
preset and returns it as float ``[C, T, H, W]``; masks come back as long ``[T, H, W]``, boxes as float
``[N, 4]`` with boxes that fell outside the crop dropped together with their labels.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from endofm.data.video import NORMALIZATION, normalize
from endofm.errors import InputError

# Boxes cut away by a crop are dropped together with their labels.
_BOX_CLEANUP = v2.Compose([v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)])


class VideoTransform:
    """Geometric transform shared by a video, its masks and boxes, followed by normalisation."""

    def __init__(self, geometric: v2.Transform, normalization: str = "imagenet"):
        if normalization not in NORMALIZATION:
            raise InputError(f"unknown normalisation preset {normalization!r}; choose from {sorted(NORMALIZATION)}")
        self.geometric = geometric
        self.normalization = normalization

    def __repr__(self) -> str:
        return f"VideoTransform({self.geometric!r}, normalization={self.normalization!r})"

    def __call__(
        self,
        video: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Transform ``video`` uint8 [T, 3, H, W] with its optional ``mask`` [T, H, W] and ``boxes``."""
        if video.ndim != 4 or video.shape[1] != 3 or video.dtype != torch.uint8:
            raise InputError(f"expected a uint8 [T, 3, H, W] video, got {video.dtype} {tuple(video.shape)}")
        t, _, h, w = video.shape
        sample: dict[str, torch.Tensor] = {"video": tv_tensors.Video(video)}
        if mask is not None:
            if tuple(mask.shape) != (t, h, w):
                raise InputError(f"mask shape {tuple(mask.shape)} does not match the video's {(t, h, w)}")
            sample["mask"] = tv_tensors.Mask(mask.to(torch.uint8))
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            sample["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))
            sample["labels"] = (
                torch.zeros(len(boxes), dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
            )
            if len(sample["labels"]) != len(boxes):
                raise InputError(f"{len(boxes)} boxes but {len(sample['labels'])} labels")
        out = self.geometric(sample)
        if boxes is not None:
            out = _BOX_CLEANUP(out)
        result = {"video": normalize(out["video"].as_subclass(torch.Tensor), self.normalization).permute(1, 0, 2, 3)}
        if mask is not None:
            result["mask"] = out["mask"].as_subclass(torch.Tensor).long()
        if boxes is not None:
            result["boxes"] = out["boxes"].as_subclass(torch.Tensor).float()
            result["labels"] = out["labels"]
        return result


def train_transform(
    size: int = 224,
    *,
    short_side: tuple[int, int] | None = None,
    hflip: float = 0.5,
    normalization: str = "imagenet",
) -> VideoTransform:
    """Scale jitter (short side drawn from ``short_side``, default ``(size*8/7, size*10/7)``, i.e. 256-320
    for 224), random ``size`` x ``size`` crop and horizontal flip with probability ``hflip``."""
    lo, hi = short_side or (round(size * 8 / 7), round(size * 10 / 7))
    if not 0 < lo <= hi:
        raise InputError(f"short_side must be an increasing pair of positive ints, got {(lo, hi)}")
    geometric = v2.Compose(
        [
            v2.RandomShortestSize(min_size=list(range(lo, hi + 1)), antialias=True),
            v2.RandomCrop(size, pad_if_needed=True),
            v2.RandomHorizontalFlip(hflip),
        ]
    )
    return VideoTransform(geometric, normalization)


def eval_transform(
    size: int | None = 224,
    *,
    short_side: int | None = None,
    max_size: int | None = None,
    normalization: str = "imagenet",
) -> VideoTransform:
    """Resize the short side to ``short_side`` (default ``size*8/7``, i.e. 256 for 224; long side capped at
    ``max_size``) and take the centre ``size`` x ``size`` crop; ``size=None`` keeps the whole frame."""
    if size is None and short_side is None:
        raise InputError("eval_transform needs a crop size, a short side, or both")
    side = short_side or round(size * 8 / 7)
    steps: list[v2.Transform] = [v2.Resize(side, max_size=max_size, antialias=True)]
    if size is not None:
        steps.append(v2.CenterCrop(size))
    return VideoTransform(v2.Compose(steps), normalization)
