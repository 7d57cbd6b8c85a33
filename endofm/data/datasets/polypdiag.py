"""PolypDiag: video-level polyp classification from the original ``videos/`` + ``splits/*.txt`` layout.

Split files hold ``<path>,<label>`` lines; paths are relative to ``videos/`` and labels are 0 (no polyp)
or 1 (polyp). A sample is ``{"video": float [C, T, H, W], "label": int, "meta": {"path",
"frame_indices"}}`` with ``T`` frames (8 by default), sampled as ``sampling`` says:

- ``original`` (the original's ``datasets/ucf101.py`` + ``datasets/decoder.py`` with ``DATA.SAMPLING_RATE``
  32 and ``DATA.TARGET_FPS`` 30): ``T`` frames evenly over a window of ``sampling_rate * T`` frames at
  ``target_fps``, i.e. ``sampling_rate * T / target_fps * fps`` frames of the video; in training the window
  starts at a random point of the video, at test time at its first frame; indices past the video's end
  repeat its last frame (a short video);
- ``spread``: ``T`` frames evenly over the whole video.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from endofm.data.transforms import eval_transform
from endofm.data.video import VideoReader
from endofm.data.windows import PTS_PER_FRAME, decoded_window, window_span
from endofm.errors import DatasetError, InputError


def evenly_spaced(num_available: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread evenly over ``[0, num_available - 1]`` (repeating if too few)."""
    if num_available < 1:
        raise InputError("cannot sample frames from an empty video")
    return torch.linspace(0, num_available - 1, num_frames).round().long().tolist()


SAMPLINGS = ("original", "spread")


def original_window(num_available: int, fps: float, num_frames: int = 8, sampling_rate: int = 32,
                    target_fps: float = 30.0, start: float = 0.0, pts_per_frame: int = PTS_PER_FRAME) -> list[int]:
    """The original's frame indices of a window starting at frame ``start`` (a float, as its decoder draws it).

    The window spans ``sampling_rate * num_frames / target_fps * fps`` frames; the decoder reads from the first
    frame its timestamps keep (:func:`~endofm.data.windows.decoded_window`: ``floor(start)`` when the start is
    less than one timestamp past it, else ``ceil(start)``) and takes ``num_frames`` offsets evenly over the
    window, truncated to integers; indices past the end repeat the last frame.
    """
    span = window_span(fps, num_frames, sampling_rate, target_fps)
    first, count = decoded_window(num_available, span, start, pts_per_frame)
    offsets = torch.linspace(0, span - 1, num_frames).long()
    return (first + offsets).clamp(max=first + count - 1).tolist()


def original_start(num_available: int, fps: float, num_frames: int = 8, sampling_rate: int = 32,
                   target_fps: float = 30.0) -> float:
    """A random window start as the original's training draws it: uniform over the frames the window leaves."""
    span = window_span(fps, num_frames, sampling_rate, target_fps)
    return float(torch.rand(()).item()) * max(num_available - span, 0.0)


class PolypDiagDataset(Dataset):
    """Videos and labels of one split (``train``, ``val`` or any ``splits/<name>.txt``) of PolypDiag."""

    classes = ("normal", "polyp")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        num_frames: int = 8,
        transform: Callable[..., dict[str, torch.Tensor]] | None = None,
        sampling: str = "spread",
        random_start: bool = False,
        sampling_rate: int = 32,
        target_fps: float = 30.0,
    ):
        """``sampling`` as the module docstring says; ``random_start`` (training) draws the ``original``
        window's start, else it starts at the first frame."""
        if sampling not in SAMPLINGS:
            raise InputError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        if sampling_rate < 1 or target_fps <= 0:
            raise InputError(f"sampling_rate and target_fps must be positive, got {sampling_rate} and {target_fps}")
        self.root = Path(root)
        self.num_frames = num_frames
        self.sampling, self.random_start = sampling, random_start
        self.sampling_rate, self.target_fps = sampling_rate, target_fps
        self.transform = transform or eval_transform(224, normalization="polypdiag")
        videos, split_file = self.root / "videos", self.root / "splits" / f"{split}.txt"
        for needed in (videos, split_file):
            if not needed.exists():
                held = sorted(path.stem for path in (self.root / "splits").glob("*.txt"))
                hint = " (expected videos/ and splits/)"
                if needed == split_file and held:  # the original's release has train and val only
                    hint = f"; the splits here are {', '.join(held)} (--split {'val' if 'val' in held else held[0]})"
                raise DatasetError(f"PolypDiag layout: {needed} is missing{hint}")
        self.items: list[tuple[Path, int]] = []
        for lineno, line in enumerate(split_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(",", 1)
            if len(parts) != 2 or not parts[1].strip().lstrip("-").isdigit():
                raise DatasetError(f"{split_file}:{lineno}: expected '<path>,<label>', got {line!r}")
            label = int(parts[1])
            if not 0 <= label < len(self.classes):
                raise DatasetError(f"{split_file}:{lineno}: label {label} is not 0 or 1 ({line!r})")
            path = videos / parts[0].strip()
            if not path.exists():
                raise DatasetError(f"{split_file}:{lineno}: video {path} is missing")
            self.items.append((path, label))
        if not self.items:
            raise DatasetError(f"{split_file} lists no videos")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.items[index]
        with VideoReader(path) as reader:
            indices = self.frame_indices(len(reader), reader.info.fps)
            frames = reader.read(indices)
        out = self.transform(frames)
        return {
            "video": out["video"],
            "label": label,
            "meta": {"path": str(path), "frame_indices": torch.tensor(indices)},
        }

    def frame_indices(self, num_available: int, fps: float) -> list[int]:
        """The frames a sample of a video of ``num_available`` frames at ``fps`` reads."""
        if self.sampling == "spread":
            return evenly_spaced(num_available, self.num_frames)
        window = (self.num_frames, self.sampling_rate, self.target_fps)
        start = original_start(num_available, fps, *window) if self.random_start else 0.0
        return original_window(num_available, fps, *window, start=start)
