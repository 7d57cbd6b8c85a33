"""Feature extraction: clip embeddings of a user's videos from any Endo-FM backbone.

A video is cut into clips (one clip spanning the whole video by default, or sliding windows of
``window`` frames every ``stride`` frames); each clip is ``num_frames`` frames evenly spaced over its span,
resized (short side ``size``), centre-cropped to ``size x size``, normalised and embedded by the backbone's
CLS token. Frame count, size, mean and std are the model's own (``model.input_spec``, as
:func:`~endofm.models.factory.create_model` sets it) unless given.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from endofm.data.normalization import NORMALIZATION
from endofm.data.video import FRAME_EXTENSIONS, VIDEO_EXTENSIONS, VideoReader
from endofm.errors import InputError
from endofm.models.backbone import EndoFMBackbone
from endofm.models.inputs import InputSpec
from endofm.models.registry import pretraining_input


@dataclass
class VideoEmbedding:
    """Embeddings of one video: ``features [N, D]`` for clips spanning frames ``[starts[i], ends[i])``."""

    path: str
    features: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def clip_spans(num_frames: int, window: int | None = None, stride: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` frame spans: the whole video, or windows of ``window`` frames every ``stride``.

    The last window is aligned to the end of the video, so no tail is left out.

    Example:
        >>> clip_spans(10, window=4, stride=3)
        [(0, 4), (3, 7), (6, 10)]
    """
    if num_frames < 1:
        raise InputError("a video with no frames has no clips")
    if window is None:
        if stride is not None:
            raise InputError(f"stride={stride} steps between windows: give window too (without it, one clip)")
        return [(0, num_frames)]
    stride = window if stride is None else stride
    if window < 1 or stride < 1:
        raise InputError(f"window and stride must be positive, got window={window} stride={stride}")
    if window >= num_frames:
        return [(0, num_frames)]
    spans = [(start, start + window) for start in range(0, num_frames - window + 1, stride)]
    if spans[-1][1] < num_frames:
        spans.append((num_frames - window, num_frames))
    return spans


def sample_indices(start: int, end: int, count: int) -> list[int]:
    """``count`` frame indices evenly spaced over ``[start, end)`` (repeating frames of short spans)."""
    return np.linspace(start, end - 1, count).round().astype(int).tolist()


def center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``size x size`` crop of ``[T, C, H, W]`` frames (both sides must be at least ``size``)."""
    height, width = frames.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return frames[..., top : top + size, left : left + size]


def model_input(model: EndoFMBackbone) -> InputSpec:
    """The input a backbone expects: its ``input_spec`` (:func:`~endofm.models.factory.create_model`), else the
    pretraining input at its stored sizes (:func:`~endofm.models.registry.pretraining_input`)."""
    spec = getattr(model, "input_spec", None)
    return spec if isinstance(spec, InputSpec) else pretraining_input(model.config)


@torch.inference_mode()
def embed_video(
    path: str | os.PathLike,
    model: EndoFMBackbone,
    num_frames: int | None = None,
    size: int | None = None,
    window: int | None = None,
    stride: int | None = None,
    normalization: str | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> VideoEmbedding:
    """Embed one video file or frame folder with ``model``.

    Args:
        path: the video (any container PyAV reads) or a folder of frames.
        model: a backbone, e.g. ``load_checkpoint(...).backbone``.
        num_frames: frames per clip; default: the model's (:func:`model_input`; 8 for the released model).
        size: crop size; default: the model's image height (224 for the released model).
        window, stride: clip length and step in frames; default one clip over the whole video.
        normalization: a preset of :data:`endofm.data.normalization.NORMALIZATION` instead of the model's mean and std.
        batch_size: clips per forward pass.
        device: where to run; default the model's device.

    Example:
        >>> model = create_model("endofm_vit_base", pretrained="endo_fm.pth")  # doctest: +SKIP
        >>> embed_video("colonoscopy.mp4", model, window=32, stride=16).features.shape  # doctest: +SKIP
        (12, 768)
    """
    spec = model_input(model)
    num_frames = (spec.frames or model.config.num_frames) if num_frames is None else num_frames
    size = spec.size[0] if size is None else size
    if normalization is not None:
        if normalization not in NORMALIZATION:
            raise InputError(f"unknown normalisation preset {normalization!r}; choose from {sorted(NORMALIZATION)}")
        mean, std = NORMALIZATION[normalization]
        spec = dataclasses.replace(spec, mean=mean, std=std)
    if num_frames < 1 or size < model.patch_size:
        raise InputError(f"need num_frames >= 1 and size >= {model.patch_size}, got {num_frames} and {size}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    features = []
    with VideoReader(path, size=size) as reader:
        spans = clip_spans(len(reader), window, stride)
        for first in range(0, len(spans), batch_size):
            batch_spans = spans[first : first + batch_size]
            clips = []
            for start, end in batch_spans:
                frames = center_crop(reader.read(sample_indices(start, end, num_frames)), size)
                clips.append(spec.normalize(frames))
            features.append(model(torch.stack(clips).to(device)).float().cpu())
    return VideoEmbedding(
        path=str(path),
        features=torch.cat(features).numpy(),
        starts=np.array([s for s, _ in spans], dtype=np.int64),
        ends=np.array([e for _, e in spans], dtype=np.int64),
    )


def find_videos(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Video files and frame folders named by ``inputs``; folders are searched recursively.

    A folder that directly holds image frames (and no videos) counts as one video.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise InputError(f"no such file or folder: {item}")
        if item.is_file():
            found.append(item)
            continue
        videos = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        frame_dirs = sorted(
            {p.parent for p in item.rglob("*") if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS}
        )
        video_dirs = {video.parent for video in videos}
        found.extend(videos + [folder for folder in frame_dirs if folder not in video_dirs])
    if not found:
        raise InputError(f"no videos or frame folders found in {', '.join(map(str, inputs))}")
    return found
