"""Multi-view spatio-temporal sampling for pretraining: 2 global and 8 local views of a clip.

The default :class:`MultiViewConfig` is the original Endo-FM recipe. For a clip of ``L`` frames:

- global view 1: 8 frames evenly spaced over frames ``[0, L-5]``; global view 2: 16 frames evenly spaced
  over ``[5, L]`` (clamped to the last frame); both cropped to 224 with scale (0.4, 1);
- local views: 2, 2, 4, 4, 8, 8, 16, 16 frames evenly spaced over a random window of ``L // 8`` frames
  (the window's start drawn uniformly from ``[0, L - L//8 - 1]``), cropped to 96 with scale (0.05, 0.4).

"Evenly spaced" is ``linspace(first, last, n)`` truncated to integers, so a clip shorter than a view's
frame count repeats frames, as the original does. Each view gets one random-resized-crop box (bicubic)
for all its frames, then a horizontal flip (p 0.5), a colour jitter (p 0.8; brightness 0.4, contrast 0.4,
saturation 0.2, hue 0, in random order) and grayscale (p 0.2), the same for every frame of the view, then
normalisation. The resize is plain bicubic interpolation without antialiasing, as the original's. Every
random draw comes from the ``torch.Generator`` passed in, so a seed fixes the views.

For speed, :class:`MultiViewSampler` first computes every view's frame indices, decodes the union of
those frames once (shrunk on decode to a short side of ``decode_short_side``, never enlarged:
:meth:`MultiViewSampler.open_video`) and builds each view from them, instead of decoding the whole clip at
full size.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from endofm.data.video import NORMALIZATION, VideoReader
from endofm.errors import ConfigError, InputError

WINDOWS = ("global_first", "global_second", "local")


@dataclass
class ViewSpec:
    """One view: frame count, output size (square), crop scale range, temporal window kind."""

    num_frames: int
    size: int
    scale: tuple[float, float]
    window: str


@dataclass
class MultiViewConfig:
    """The views and augmentations of pretraining; defaults are the original recipe."""

    global_frames: tuple[int, int] = (8, 16)
    global_size: int = 224
    global_scale: tuple[float, float] = (0.4, 1.0)
    global_margin: int = 5
    local_frames: tuple[int, ...] = (2, 2, 4, 4, 8, 8, 16, 16)
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_window_divisor: int = 8
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.0)
    grayscale_p: float = 0.2
    normalization: str = "imagenet"
    decode_short_side: int | None = 256
    views: list[ViewSpec] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.global_frames) != 2:
            raise ConfigError(f"global_frames needs 2 entries (first, second view), got {self.global_frames}")
        if min((*self.global_frames, *self.local_frames), default=1) <= 0:
            raise ConfigError("every view needs at least one frame")
        for name in ("global_scale", "local_scale", "ratio"):
            low, high = getattr(self, name)
            if not 0 < low <= high or (name != "ratio" and high > 1):
                raise ConfigError(f"{name} must be 0 < low <= high (<= 1 for scales), got {(low, high)}")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be a probability, got {getattr(self, name)}")
        if self.normalization not in NORMALIZATION:
            raise ConfigError(f"normalization must be one of {sorted(NORMALIZATION)}, got {self.normalization!r}")
        if self.local_window_divisor <= 0 or self.global_margin < 0:
            raise ConfigError("local_window_divisor must be positive and global_margin non-negative")
        first, second = self.global_frames
        self.views = [
            ViewSpec(first, self.global_size, tuple(self.global_scale), "global_first"),
            ViewSpec(second, self.global_size, tuple(self.global_scale), "global_second"),
            *(ViewSpec(n, self.local_size, tuple(self.local_scale), "local") for n in self.local_frames),
        ]


def _rand(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * _rand(generator)


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _evenly_spaced(first: float, last: float, count: int, length: int) -> list[int]:
    """``count`` indices evenly spaced over ``[first, last]``, truncated and clamped into the clip."""
    values = torch.linspace(first, last, count)
    return values.clamp(0, length - 1).long().tolist()


def crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """A random-resized-crop box ``(top, left, height, width)``, area in ``scale``, aspect in ``ratio``.

    Up to 10 tries; then the largest centred box whose aspect is within ``ratio``.
    """
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, log_low, log_high))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return _randint(generator, 0, height - h), _randint(generator, 0, width - w), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


class MultiViewSampler:
    """Builds the views of a clip: each a float tensor ``[3, T, S, S]``, normalised."""

    def __init__(self, config: MultiViewConfig | None = None):
        self.config = config if config is not None else MultiViewConfig()
        mean, std = NORMALIZATION[self.config.normalization]
        self._mean = torch.tensor(mean).view(1, 3, 1, 1)
        self._std = torch.tensor(std).view(1, 3, 1, 1)

    def open_video(self, path: str | os.PathLike) -> VideoReader:
        """A reader that decodes frames shrunk to a short side of ``decode_short_side`` (never enlarged: the
        views' crops are resized anyway, and a larger frame only costs time)."""
        return VideoReader(path, size=self.config.decode_short_side, upscale=False)

    @property
    def views(self) -> list[ViewSpec]:
        """The view specifications, in output order."""
        return self.config.views

    def frame_indices(self, clip_length: int, generator: torch.Generator) -> list[list[int]]:
        """Per view, the frame indices (0-based within the clip) it shows."""
        if clip_length <= 0:
            raise InputError(f"clip length must be positive, got {clip_length}")
        margin = self.config.global_margin
        width = clip_length // self.config.local_window_divisor
        indices = []
        for view in self.views:
            if view.window == "global_first":
                indices.append(_evenly_spaced(0, max(clip_length - margin, 0), view.num_frames, clip_length))
            elif view.window == "global_second":
                first = min(margin, clip_length - 1)
                indices.append(_evenly_spaced(first, clip_length, view.num_frames, clip_length))
            else:
                start = _randint(generator, 0, max(clip_length - width - 1, 0))
                indices.append(_evenly_spaced(start, start + width, view.num_frames, clip_length))
        return indices

    def __call__(
        self,
        reader_or_clip: VideoReader | torch.Tensor | str | os.PathLike,
        start: int,
        length: int,
        generator: torch.Generator,
    ) -> list[torch.Tensor]:
        """The views of frames ``[start, start + length)``.

        ``reader_or_clip`` is an open :class:`VideoReader` (only the frames the views need are decoded), a
        path (opened with :meth:`open_video`), or frames already decoded, ``uint8 [T, 3, H, W]``.
        """
        indices = self.frame_indices(length, generator)
        union = sorted({i for view in indices for i in view})
        position = {frame: k for k, frame in enumerate(union)}
        frames = self._load(reader_or_clip, [start + i for i in union])
        return [
            self._augment(frames[[position[i] for i in view_indices]], spec, generator)
            for view_indices, spec in zip(indices, self.views, strict=True)
        ]

    def _load(self, source: VideoReader | torch.Tensor | str | os.PathLike, frames: list[int]) -> torch.Tensor:
        if isinstance(source, torch.Tensor):
            if source.ndim != 4 or source.shape[1] != 3:
                raise InputError(f"expected a clip of shape [T, 3, H, W], got {tuple(source.shape)}")
            if frames[-1] >= source.shape[0] or frames[0] < 0:
                raise InputError(f"clip has {source.shape[0]} frames, frame {frames[-1]} was asked for")
            return source[frames]
        if isinstance(source, VideoReader):
            return source.read(frames)
        with self.open_video(source) as reader:
            return reader.read(frames)

    def _augment(self, frames: torch.Tensor, spec: ViewSpec, generator: torch.Generator) -> torch.Tensor:
        """Crop, flip, jitter, grayscale and normalise ``uint8 [T, 3, H, W]`` frames into ``[3, T, S, S]``."""
        config = self.config
        top, left, h, w = crop_box(frames.shape[-2], frames.shape[-1], spec.scale, config.ratio, generator)
        crop = frames[..., top : top + h, left : left + w].contiguous()
        crop = F.resize(crop, [spec.size, spec.size], interpolation=InterpolationMode.BICUBIC, antialias=False)
        x = crop.float().div_(255.0)
        if _rand(generator) < config.flip_p:
            x = x.flip(-1)
        if _rand(generator) < config.jitter_p:
            x = self._jitter(x, generator)
        if _rand(generator) < config.grayscale_p:
            x = _gray(x).expand_as(x).contiguous()
        x = x.sub_(self._mean).div_(self._std)
        return x.permute(1, 0, 2, 3)

    def _jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Brightness, contrast, saturation and hue changes with factors drawn once, in random order.

        Brightness scales the pixels; contrast blends each frame with its mean gray level; saturation blends
        each pixel with its gray value; all clamp to [0, 1]. Hue shifts use torchvision.
        """
        brightness, contrast, saturation, hue = self.config.jitter
        for op in torch.randperm(4, generator=generator).tolist():
            if op == 0 and brightness > 0:
                x = x.mul_(_uniform(generator, max(0.0, 1 - brightness), 1 + brightness)).clamp_(0.0, 1.0)
            elif op == 1 and contrast > 0:
                factor = _uniform(generator, max(0.0, 1 - contrast), 1 + contrast)
                mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
                x = x.mul_(factor).add_(mean * (1 - factor)).clamp_(0.0, 1.0)
            elif op == 2 and saturation > 0:
                factor = _uniform(generator, max(0.0, 1 - saturation), 1 + saturation)
                x = x.mul_(factor).add_(_gray(x).mul_(1 - factor)).clamp_(0.0, 1.0)
            elif op == 3 and hue > 0:
                x = F.adjust_hue(x, _uniform(generator, -hue, hue))
        return x


_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of ``[..., 3, H, W]`` RGB as ``[..., 1, H, W]`` (ITU-R 601 weights)."""
    r, g, b = x.unbind(-3)
    return (r * _GRAY_WEIGHTS[0]).add_(g, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2]).unsqueeze(-3)
