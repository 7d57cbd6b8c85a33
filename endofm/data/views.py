"""Multi-view spatio-temporal sampling for pretraining: 2 global and 8 local views of a clip.

The default :class:`MultiViewConfig` is the original Endo-FM recipe. For a clip of ``L`` frames:

- global view 1: 8 frames evenly spaced over frames ``[0, L-5]``; global view 2: 16 frames evenly spaced
  over ``[5, L]`` (clamped to the last frame); both cropped to 224 with scale (0.4, 1);
- local views: 2, 2, 4, 4, 8, 8, 16, 16 frames evenly spaced over a random window of ``L // 8`` frames
  (the window's start drawn uniformly from ``[0, L - L//8 - 1]``), cropped to 96 with scale (0.05, 0.4).

A clip longer than the original decoder's window (256 frames at 30 fps) is first cut to a random window of
that length (``clip_window``), as the original reads it. "Evenly spaced" is ``linspace(first, last, n)``
truncated to integers, so a clip shorter than a view's frame count repeats frames, as the original does.
Each view gets one random-resized-crop box for all its frames (:func:`sample_crop_boxes`), resized as floats
(:func:`resize_crop`: bicubic, no antialiasing, overshoot kept), then a horizontal flip (p 0.5), a colour
jitter (p 0.8; brightness 0.4, contrast 0.4, saturation 0.2, hue 0, in random order) and grayscale (p 0.2),
the same for every frame of the view, then normalisation. The colour ops (:func:`adjust_brightness`,
:func:`adjust_contrast`, :func:`adjust_saturation`, :func:`grayscale`) are the original's: its grayscale
weights are meant for BGR but the frames are RGB, and nothing clamps. ``crop``, ``colour``, ``resize`` and
``clip_window`` name the alternatives (``first_fit``, ``rgb``, ``uint8``, ``false``). Every random draw comes
from the ``torch.Generator`` passed in, so a seed fixes the views.

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

from endofm.data.normalization import NORMALIZATION
from endofm.data.video import VideoReader
from endofm.data.windows import decoded_window, window_span
from endofm.errors import ConfigError, InputError

WINDOWS = ("global_first", "global_second", "local")
CROP_MODES = ("original", "first_fit")
DECODER_WINDOW = (8, 32, 30.0)
"""The original decoder's window: ``NUM_FRAMES`` 8 x ``SAMPLING_RATE`` 32 frames at ``TARGET_FPS`` 30."""
COLOUR_MODES = ("original", "rgb")


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
    crop: str = "original"
    """Crop-box sampler (:func:`sample_crop_boxes`): ``original`` (all 10 tries, the last fitting one's
    position with the 10th try's size, cut at the frame border) or ``first_fit`` (the first try that fits:
    every box within ``ratio``)."""
    colour: str = "original"
    """Colour ops (:func:`adjust_brightness` and the others): ``original`` (grayscale weights of BGR on the
    RGB frames, no clamping) or ``rgb`` (RGB luma weights, each op clamped to [0, 1])."""
    resize: str = "float"
    """``float``: the crop resized as floats, bicubic overshoot kept (:func:`resize_crop`, the original);
    ``uint8``: resized as 8-bit pixels (rounded and clamped), then made floats."""
    clip_window: bool = True
    """Views from the original decoder's window (:mod:`endofm.data.windows`: 32 x 8 frames at 30 fps, i.e.
    256 frames of a 30 fps clip, drawn at random in a longer clip); ``false``: from the whole clip."""
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
        for name, allowed in (("crop", CROP_MODES), ("colour", COLOUR_MODES), ("resize", ("float", "uint8"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"views.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
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


def sample_crop_boxes(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    count: int = 1,
    mode: str = "original",
) -> torch.Tensor:
    """``count`` random-resized-crop boxes ``(top, left, height, width)``, long ``[count, 4]``, inside the frame.

    Each box makes 10 tries of an area fraction uniform in ``scale`` and a log-uniform aspect in ``ratio``
    (width and height rounded), a try fitting the frame getting a uniform position. ``mode="original"`` (the
    original's ``random_resized_crop``): all 10 tries are made, the box has the position of the last try that
    fitted and the size of the 10th try, cut at the frame border when that try does not fit (so its aspect
    may leave ``ratio``). ``mode="first_fit"``: the first try that fits. With no try fitting, both take the
    largest centred box whose aspect is within ``ratio``.
    """
    if mode not in CROP_MODES:
        raise InputError(f"crop mode must be one of {', '.join(CROP_MODES)}, got {mode!r}")
    u = torch.rand(count, 10, 4, generator=generator, dtype=torch.float64)
    target = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * u[..., 1])
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    top = (u[..., 2] * (height - h + 1)).floor().long()
    left = (u[..., 3] * (width - w + 1)).floor().long()
    tries = torch.arange(10).expand(count, 10)
    if mode == "original":
        pick = torch.where(fits, tries, -1).amax(dim=1).clamp(min=0)
        rows = torch.arange(count)
        box_top, box_left = top[rows, pick], left[rows, pick]
        box_h = torch.minimum(h[:, -1], height - box_top)
        box_w = torch.minimum(w[:, -1], width - box_left)
    else:
        pick = torch.where(fits, tries, 10).amin(dim=1).clamp(max=9)
        rows = torch.arange(count)
        box_top, box_left, box_h, box_w = top[rows, pick], left[rows, pick], h[rows, pick], w[rows, pick]
    boxes = torch.stack([box_top, box_left, box_h, box_w], dim=1)
    fallback = ~fits.any(dim=1)
    if fallback.any():
        boxes[fallback] = torch.tensor(_centre_box(height, width, ratio))
    return boxes


def _centre_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """The largest centred box whose aspect is within ``ratio``."""
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    mode: str = "original",
) -> tuple[int, int, int, int]:
    """One box of :func:`sample_crop_boxes` as ``(top, left, height, width)``."""
    return tuple(sample_crop_boxes(height, width, scale, ratio, generator, 1, mode)[0].tolist())


def resize_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Float ``[T, 3, h, w]`` frames resized to ``size`` x ``size``: bicubic, no antialiasing, no clamping (the
    overshoot of bicubic interpolation is kept), as the original's views."""
    return torch.nn.functional.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False)


def _check_colour(frames: torch.Tensor, mode: str) -> None:
    if mode not in COLOUR_MODES:
        raise InputError(f"colour mode must be one of {', '.join(COLOUR_MODES)}, got {mode!r}")
    if frames.ndim < 3 or frames.shape[-3] != 3 or not frames.is_floating_point():
        raise InputError(f"expected float frames [..., 3, H, W], got {frames.dtype} {tuple(frames.shape)}")


def grayscale(frames: torch.Tensor, mode: str = "original") -> torch.Tensor:
    """Float ``[..., 3, H, W]`` frames with every channel set to their gray level (a new tensor).

    ``mode="original"``: ``0.299 * c2 + 0.587 * c1 + 0.114 * c0``, the original's weights for BGR frames, which
    on the RGB frames it is given put 0.299 on blue; ``mode="rgb"``: ITU-R 601 luma of RGB.
    """
    _check_colour(frames, mode)
    return _gray(frames, mode).expand_as(frames).contiguous()


def adjust_brightness(frames: torch.Tensor, factor: float, mode: str = "original") -> torch.Tensor:
    """``frames * factor`` (a new tensor); ``mode="rgb"`` clamps to [0, 1], ``original`` does not."""
    _check_colour(frames, mode)
    return _clamp(frames * factor, mode)


def adjust_contrast(frames: torch.Tensor, factor: float, mode: str = "original") -> torch.Tensor:
    """Each frame blended with its mean gray level: ``frames * factor + mean * (1 - factor)`` (a new tensor);
    the gray level and clamping as ``mode`` says (:func:`grayscale`, :func:`adjust_brightness`)."""
    _check_colour(frames, mode)
    mean = _gray(frames, mode).mean(dim=(-3, -2, -1), keepdim=True)
    return _clamp(frames * factor + mean * (1 - factor), mode)


def adjust_saturation(frames: torch.Tensor, factor: float, mode: str = "original") -> torch.Tensor:
    """Each pixel blended with its gray level: ``frames * factor + gray * (1 - factor)`` (a new tensor); the
    gray level and clamping as ``mode`` says."""
    _check_colour(frames, mode)
    return _clamp(frames * factor + _gray(frames, mode) * (1 - factor), mode)


def _clamp(frames: torch.Tensor, mode: str) -> torch.Tensor:
    return frames.clamp_(0.0, 1.0) if mode == "rgb" else frames


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

    def clip_window(self, clip_length: int, fps: float, generator: torch.Generator) -> tuple[int, int]:
        """``(first, count)``: the frames of a clip the views are taken from. With ``clip_window``, a clip
        longer than the original decoder's window (32 x 8 frames at 30 fps, scaled to ``fps``) gives a window
        at a start drawn uniformly over the frames it leaves (:func:`~endofm.data.windows.decoded_window`);
        otherwise the whole clip."""
        if clip_length <= 0:
            raise InputError(f"clip length must be positive, got {clip_length}")
        if not self.config.clip_window:
            return 0, clip_length
        span = window_span(fps, *DECODER_WINDOW)
        start = _rand(generator) * (clip_length - span) if clip_length > span else 0.0
        return decoded_window(clip_length, span, start)

    def frame_indices(self, clip_length: int, generator: torch.Generator,
                      local_starts: list[int] | None = None) -> list[list[int]]:
        """Per view, the frame indices (0-based within the clip of ``clip_length`` frames) it shows; the local
        views' window starts are drawn, or given as ``local_starts``."""
        if clip_length <= 0:
            raise InputError(f"clip length must be positive, got {clip_length}")
        locals_ = [v for v in self.views if v.window == "local"]
        if local_starts is not None and len(local_starts) != len(locals_):
            raise InputError(f"{len(locals_)} local views but {len(local_starts)} local starts")
        given = iter(local_starts or ())
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
                start = next(given) if local_starts is not None else _randint(
                    generator, 0, max(clip_length - width - 1, 0))
                indices.append(_evenly_spaced(start, start + width, view.num_frames, clip_length))
        return indices

    def __call__(
        self,
        reader_or_clip: VideoReader | torch.Tensor | str | os.PathLike,
        start: int,
        length: int,
        generator: torch.Generator,
        fps: float | None = None,
    ) -> list[torch.Tensor]:
        """The views of frames ``[start, start + length)``.

        ``reader_or_clip`` is an open :class:`VideoReader` (only the frames the views need are decoded), a
        path (opened with :meth:`open_video`), or frames already decoded, ``uint8 [T, 3, H, W]``. ``fps`` (of
        a reader: its own; otherwise 30 unless given) scales the decoder's window (:meth:`clip_window`).
        """
        if not isinstance(reader_or_clip, torch.Tensor):
            if not isinstance(reader_or_clip, VideoReader):
                with self.open_video(reader_or_clip) as reader:
                    return self(reader, start, length, generator)
            fps = reader_or_clip.info.fps
        first, length = self.clip_window(length, 30.0 if fps is None else fps, generator)
        indices = self.frame_indices(length, generator)
        union = sorted({i for view in indices for i in view})
        position = {frame: k for k, frame in enumerate(union)}
        frames = self._load(reader_or_clip, [start + first + i for i in union])
        return [
            self._augment(frames[[position[i] for i in view_indices]], spec, generator)
            for view_indices, spec in zip(indices, self.views, strict=True)
        ]

    def _load(self, source: VideoReader | torch.Tensor, frames: list[int]) -> torch.Tensor:
        if isinstance(source, torch.Tensor):
            if source.ndim != 4 or source.shape[1] != 3:
                raise InputError(f"expected a clip of shape [T, 3, H, W], got {tuple(source.shape)}")
            if frames[-1] >= source.shape[0] or frames[0] < 0:
                raise InputError(f"clip has {source.shape[0]} frames, frame {frames[-1]} was asked for")
            return source[frames]
        return source.read(frames)

    def _augment(self, frames: torch.Tensor, spec: ViewSpec, generator: torch.Generator) -> torch.Tensor:
        """Crop, flip, jitter, grayscale and normalise ``uint8 [T, 3, H, W]`` frames into ``[3, T, S, S]``."""
        config = self.config
        top, left, h, w = crop_box(frames.shape[-2], frames.shape[-1], spec.scale, config.ratio, generator,
                                   config.crop)
        crop = frames[..., top : top + h, left : left + w].contiguous()
        if config.resize == "float":
            x = resize_crop(crop.float().div_(255.0), spec.size)
        else:
            crop = F.resize(crop, [spec.size, spec.size], interpolation=InterpolationMode.BICUBIC, antialias=False)
            x = crop.float().div_(255.0)
        if _rand(generator) < config.flip_p:
            x = x.flip(-1)
        if _rand(generator) < config.jitter_p:
            x = self._jitter(x, generator)
        if _rand(generator) < config.grayscale_p:
            x = grayscale(x, config.colour)
        x = x.sub_(self._mean).div_(self._std)
        return x.permute(1, 0, 2, 3)

    def _jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Brightness, contrast, saturation and hue changes with factors drawn once, in random order.

        The first three as :func:`adjust_brightness`, :func:`adjust_contrast` and :func:`adjust_saturation`
        in the ``colour`` mode; hue shifts use torchvision.
        """
        brightness, contrast, saturation, hue = self.config.jitter
        mode = self.config.colour
        for op in torch.randperm(4, generator=generator).tolist():
            if op == 0 and brightness > 0:
                x = adjust_brightness(x, _uniform(generator, max(0.0, 1 - brightness), 1 + brightness), mode)
            elif op == 1 and contrast > 0:
                x = adjust_contrast(x, _uniform(generator, max(0.0, 1 - contrast), 1 + contrast), mode)
            elif op == 2 and saturation > 0:
                x = adjust_saturation(x, _uniform(generator, max(0.0, 1 - saturation), 1 + saturation), mode)
            elif op == 3 and hue > 0:
                x = F.adjust_hue(x, _uniform(generator, -hue, hue))
        return x


_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Gray level of ``[..., 3, H, W]`` as ``[..., 1, H, W]``: the weights (0.299, 0.587, 0.114) on channels
    (0, 1, 2) for ``rgb``, on (2, 1, 0) for ``original``."""
    c0, c1, c2 = x.unbind(-3)
    r, b = (c0, c2) if mode == "rgb" else (c2, c0)
    return (r * _GRAY_WEIGHTS[0]).add_(c1, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2]).unsqueeze(-3)
