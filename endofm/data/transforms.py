"""Fine-tuning transforms that move frames, masks and boxes together.

A :class:`VideoTransform` takes a uint8 ``[T, 3, H, W]`` video and, optionally, a ``[T, H, W]`` mask and
``[N, 4]`` xyxy boxes (with ``labels``), applies one draw of the same geometric transform
(``torchvision.transforms.v2`` on ``tv_tensors``) to all of them, then normalises the video with a named
preset and returns it as float ``[C, T, H, W]``; masks come back as long ``[T, H, W]``, boxes as float
``[N, 4]`` with boxes that fell outside the crop dropped together with their labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from endofm.data.normalization import NORMALIZATION, normalize
from endofm.errors import InputError

# Boxes cut away by a crop are dropped together with their labels.
_BOX_CLEANUP = v2.Compose([v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)])


class VideoTransform:
    """Geometric transform shared by a video, its masks and boxes, followed by normalisation."""

    def __init__(self, geometric: Callable[[dict], dict], normalization: str = "imagenet"):
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


class ShortSideScaleCrop:
    """The original PolypDiag view (SlowFast's ``spatial_sampling`` in ``datasets/data_utils.py``), for a video
    alone: resize so the short side is an integer drawn uniformly from ``short_side`` (bilinear, no
    antialiasing, the long side floored), then crop ``size`` x ``size``, at random (``crop="random"``, then a
    horizontal flip with probability ``hflip``) or the first crop (``crop="first"``: the left one of a
    landscape frame, the top one of a portrait frame: spatial index 0, which the original's test set uses).
    Resized frames come back as floats in [0, 1] (:func:`~endofm.data.normalization.normalize` takes both)."""

    def __init__(self, size: int, short_side: tuple[int, int], crop: str = "random", hflip: float = 0.5) -> None:
        if crop not in ("random", "first"):
            raise InputError(f"crop must be random or first, got {crop!r}")
        if not 0 < short_side[0] <= short_side[1] or short_side[0] < size:
            raise InputError(f"short_side {short_side} must be an increasing pair of sizes of at least {size}")
        self.size, self.short_side, self.crop, self.hflip = size, short_side, crop, hflip

    def __repr__(self) -> str:
        return f"ShortSideScaleCrop(size={self.size}, short_side={self.short_side}, crop={self.crop!r})"

    def __call__(self, sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if set(sample) != {"video"}:
            raise InputError("the original PolypDiag view transforms a video alone (no masks or boxes)")
        video = sample["video"].as_subclass(torch.Tensor)
        low, high = self.short_side
        side = round(low + (high - low) * float(torch.rand(()))) if high > low else low
        height, width = video.shape[-2:]
        if min(height, width) != side:
            if width < height:
                height, width = math.floor(height / width * side), side
            else:
                height, width = side, math.floor(width / height * side)
            video = F.interpolate(video.float() / 255.0, size=(height, width), mode="bilinear", align_corners=False)
        top = left = 0
        if self.crop == "random":  # offsets below height - size, as the original's np.random.randint
            top = int(torch.randint(0, height - self.size, ())) if height > self.size else 0
            left = int(torch.randint(0, width - self.size, ())) if width > self.size else 0
        video = video[..., top: top + self.size, left: left + self.size]
        if self.crop == "random" and float(torch.rand(())) < self.hflip:
            video = video.flip(-1)
        return {"video": tv_tensors.Video(video)}


def original_view(size: int = 224, train: bool = True, normalization: str = "polypdiag") -> VideoTransform:
    """The original PolypDiag fine-tuning's view (:class:`ShortSideScaleCrop`): in training the short side is
    drawn from ``size * 8/7`` to ``size * 10/7`` (``DATA.TRAIN_JITTER_SCALES`` 256-320 at 224), a random crop and
    a flip; at test time the short side is ``size`` (``DATA.TEST_CROP_SIZE``) and the first crop is taken."""
    if train:
        geometric = ShortSideScaleCrop(size, (round(size * 8 / 7), round(size * 10 / 7)), "random", 0.5)
    else:
        geometric = ShortSideScaleCrop(size, (size, size), "first")
    return VideoTransform(geometric, normalization)


def nearest_source(in_size: int, out_size: int) -> torch.Tensor:
    """For each of ``out_size`` output rows (or columns), the source row a nearest-neighbour resize from
    ``in_size`` reads, with PIL's arithmetic (the original's masks: ``Image.resize(..., NEAREST)``): the
    coordinate starts at half a step and grows by ``in_size / out_size`` per output pixel, added up in double
    precision, and is truncated. Torch's ``nearest`` starts at 0 instead (half a source pixel off) and
    ``nearest-exact`` computes each coordinate anew, which differs where a sum lands next to an integer."""
    step = in_size / out_size
    position, rows = step * 0.5, []
    for _ in range(out_size):
        rows.append(min(int(position), in_size - 1))
        position += step
    return torch.tensor(rows)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``[..., H, W]`` mask resized to ``size`` (height, width) by :func:`nearest_source` (PIL's nearest)."""
    rows, cols = nearest_source(mask.shape[-2], size[0]), nearest_source(mask.shape[-1], size[1])
    return mask[..., rows[:, None], cols[None, :]]


def resize_frames_pil(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` frames resized to ``size`` (height, width) one by one with PIL's bilinear filter
    (antialiased, PIL's rounding), as the original resizes its PIL images."""
    from PIL import Image

    flat = frames.reshape(-1, *frames.shape[-3:]).permute(0, 2, 3, 1).contiguous().numpy()
    out = [np.asarray(Image.fromarray(frame).resize(size[::-1], Image.BILINEAR)) for frame in flat]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).reshape(*frames.shape[:-2], *size).contiguous()


class Resize(v2.Resize):
    """``v2.Resize`` to a (height, width) size with PIL's arithmetic, as the original's ``Resize`` of PIL images:
    uint8 frames by :func:`resize_frames_pil`, masks by :func:`resize_mask` (nearest neighbour); anything else
    as ``v2.Resize`` does."""

    def transform(self, inpt: object, params: dict) -> object:
        if len(self.size or ()) == 2 and isinstance(inpt, tv_tensors.Mask):
            return tv_tensors.wrap(resize_mask(inpt.as_subclass(torch.Tensor), tuple(self.size)), like=inpt)
        if (len(self.size or ()) == 2 and isinstance(inpt, (tv_tensors.Video, tv_tensors.Image))
                and inpt.dtype == torch.uint8 and inpt.shape[-3] == 3):
            return tv_tensors.wrap(resize_frames_pil(inpt.as_subclass(torch.Tensor), tuple(self.size)), like=inpt)
        return super().transform(inpt, params)
