"""CVC-12k segmentation from the CVC-ClinicDB layout: ``Original/{i}.tif``, ``Ground Truth/{i}.tif``.

Sequences are listed as ``<name> <start> <len> [-1]`` lines (1-based ``start``), the original's format:
``videolist.txt`` lists all, ``splits/<split>.txt`` one split, and ``original_train`` / ``original_test`` are
the original's lists (:data:`ORIGINAL_SPLITS`). A sample is a whole sequence, or with
``clip_length`` a window of that many consecutive frames (a sequence is cut into windows covering it; one
shorter than the window repeats its last frame): ``{"video": float [C, T, H, W], "mask": long [T, H, W]
(1 = polyp), "meta": {"path", "sequence", "frame_indices"}}``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from endofm.data.transforms import eval_transform
from endofm.errors import DatasetError


@dataclass(frozen=True)
class CVCSequence:
    """One sequence of CVC-ClinicDB: frames ``start`` .. ``start + length - 1`` (1-based file numbers)."""

    name: str
    start: int
    length: int

    @property
    def frames(self) -> range:
        return range(self.start, self.start + self.length)


_ORIGINAL_TRAIN = ((104, 23), (529, 18), (448, 19), (26, 25), (343, 21), (178, 22), (429, 19), (200, 6), (127, 25),
                   (253, 25), (364, 20), (592, 21), (228, 25), (68, 11), (467, 12), (206, 22), (79, 25), (479, 25),
                   (51, 17), (572, 20))  # fmt: skip
_ORIGINAL_TEST = ((51, 17), (318, 25), (429, 19), (1, 25), (178, 22), (253, 25), (343, 21), (68, 11), (200, 6))
ORIGINAL_SPLITS: dict[str, tuple[CVCSequence, ...]] = {
    name: tuple(CVCSequence(f"indexed-{start}-{length}", start, length) for start, length in pairs)
    for name, pairs in (("original_train", _ORIGINAL_TRAIN), ("original_test", _ORIGINAL_TEST))
}
"""The original Endo-FM CVC-12k lists (``TransUNet/dataset.py``: 20 training and 9 test sequences of
CVC-ClinicDB, as start frame and length; 7 of the 9 test sequences are also training sequences). The split
names ``original_train`` and ``original_test`` select them when the dataset has no file of that name."""


def read_sequence_list(path: str | os.PathLike) -> list[CVCSequence]:
    """Parse ``<name> <start> <len> [-1]`` lines."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"CVC sequence list {path} is missing")
    sequences = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            start, length = int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise DatasetError(f"{path}:{lineno}: expected '<name> <start> <len> -1', got {line!r}") from None
        if len(parts) > 4 or start < 1 or length < 1:
            raise DatasetError(f"{path}:{lineno}: expected '<name> <start> <len> -1', got {line!r}")
        sequences.append(CVCSequence(parts[0], start, length))
    if not sequences:
        raise DatasetError(f"{path} lists no sequences")
    return sequences


class CVCDataset(Dataset):
    """Sequences (or fixed-length clips of them) with per-frame polyp masks."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        clip_length: int | None = None,
        transform: Callable[..., dict[str, torch.Tensor]] | None = None,
        mask_threshold: int = 128,
    ):
        """``mask_threshold``: the grey level from which a mask pixel is polyp (255: only white, the
        original's rule)."""
        self.root = Path(root)
        self.mask_threshold = mask_threshold
        if not (self.root / "Original").exists() and (self.root / "CVC-ClinicDB" / "Original").exists():
            self.root = self.root / "CVC-ClinicDB"
        self.images, self.masks = self.root / "Original", self.root / "Ground Truth"
        for needed in (self.images, self.masks):
            if not needed.is_dir():
                raise DatasetError(f"CVC-ClinicDB layout: folder {needed} is missing")
        seq_file = self.root / "videolist.txt" if split == "all" else self.root / "splits" / f"{split}.txt"
        if split in ORIGINAL_SPLITS and not seq_file.exists():
            self.sequences = list(ORIGINAL_SPLITS[split])
            seq_file = Path(f"{split} (the original's list)")
        else:
            self.sequences = read_sequence_list(seq_file)
        self.transform = transform or eval_transform(224, normalization="half")
        self.samples: list[tuple[CVCSequence, list[int]]] = []
        for seq in self.sequences:
            for i in seq.frames:
                for folder in (self.images, self.masks):
                    if not (folder / f"{i}.tif").exists():
                        raise DatasetError(f"{seq_file}: sequence {seq.name} needs {folder / f'{i}.tif'}")
            self.samples += [(seq, clip) for clip in clip_windows(list(seq.frames), clip_length)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        seq, frames = self.samples[index]
        images, masks = [], []
        for i in frames:
            image = _load(self.images / f"{i}.tif", "RGB")
            mask = _load(self.masks / f"{i}.tif", "L")
            if mask.shape != image.shape[:2]:
                path = self.masks / f"{i}.tif"
                raise DatasetError(f"{path}: mask size {mask.shape} differs from the frame {image.shape[:2]}")
            images.append(image)
            masks.append(mask >= self.mask_threshold)
        video = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        out = self.transform(video, mask=torch.from_numpy(np.stack(masks)))
        return {
            "video": out["video"],
            "mask": out["mask"],
            "meta": {"path": str(self.root), "sequence": seq.name, "frame_indices": torch.tensor(frames)},
        }


def clip_windows(frames: list[int], length: int | None) -> list[list[int]]:
    """The whole list, or consecutive windows of ``length`` covering it (the last one aligned to the end)."""
    if length is None:
        return [frames]
    if length < 1:
        raise DatasetError(f"clip_length must be positive, got {length}")
    if len(frames) <= length:
        return [frames + [frames[-1]] * (length - len(frames))]
    starts = list(range(0, len(frames) - length + 1, length))
    if starts[-1] + length < len(frames):
        starts.append(len(frames) - length)
    return [frames[s : s + length] for s in starts]


def _load(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc
