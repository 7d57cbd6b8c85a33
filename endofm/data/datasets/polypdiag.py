"""PolypDiag: video-level polyp classification from the original ``videos/`` + ``splits/*.txt`` layout.

Split files hold ``<path>,<label>`` lines; paths are relative to ``videos/`` and labels are 0 (no polyp)
or 1 (polyp). A sample is ``{"video": float [C, T, H, W], "label": int, "meta": {"path",
"frame_indices"}}`` with ``T`` frames (8 by default) evenly spaced over the whole video.
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
from endofm.errors import DatasetError, InputError


def evenly_spaced(num_available: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread evenly over ``[0, num_available - 1]`` (repeating if too few)."""
    if num_available < 1:
        raise InputError("cannot sample frames from an empty video")
    return torch.linspace(0, num_available - 1, num_frames).round().long().tolist()


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
    ):
        self.root = Path(root)
        self.num_frames = num_frames
        self.transform = transform or eval_transform(224, normalization="polypdiag")
        videos, split_file = self.root / "videos", self.root / "splits" / f"{split}.txt"
        for needed in (videos, split_file):
            if not needed.exists():
                raise DatasetError(f"PolypDiag layout: {needed} is missing (expected videos/ and splits/)")
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
            indices = evenly_spaced(len(reader), self.num_frames)
            frames = reader.read(indices)
        out = self.transform(frames)
        return {
            "video": out["video"],
            "label": label,
            "meta": {"path": str(path), "frame_indices": torch.tensor(indices)},
        }
