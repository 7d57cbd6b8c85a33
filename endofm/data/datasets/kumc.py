"""KUMC polyp detection from the PolypsSet layout.

``{split}2019/Image/<video>/<n>.jpg`` with ``{split}2019/Annotation/<video>/<n>.xml`` (Pascal VOC; object
names ``adenomatous`` or ``hyperplastic``). An XML without ``<object>`` is a frame without a polyp. A
sample is the current frame with reference frames before it: ``{"video": float [C, 3, H, W]`` (the
current frame is the last), ``"boxes": float [N, 4]`` xyxy and ``"labels": long [N]`` (indices into
:attr:`KUMCDataset.classes`) for the current frame, ``"meta": {"path", "video", "frame_indices"}}``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from endofm.data.transforms import eval_transform
from endofm.data.video import natural_key
from endofm.errors import DatasetError

POLYP_CLASSES = ("adenomatous", "hyperplastic")
"""KUMC's polyp classes (the VOC object names), in label order."""


def read_voc(path: Path, classes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Boxes float [N, 4] (xyxy), labels long [N] (indices into ``classes``) and (height, width) of a VOC
    XML file."""
    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        hw = (int(size.findtext("height")), int(size.findtext("width")))
        boxes, labels = [], []
        for obj in root.findall("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in classes:
                raise DatasetError(f"{path}: object class {name!r} is not one of {list(classes)}")
            bnd = obj.find("bndbox")
            boxes.append([float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
            labels.append(classes.index(name))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: not a VOC annotation with size and object boxes ({exc})") from exc
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.long), hw


class KUMCDataset(Dataset):
    """Frames of one split (``train``, ``val``, ``test``) with their VOC boxes and reference frames.

    ``ref_offsets`` place the reference frames relative to the current one (clamped to the video).
    ``require_boxes`` makes a frame whose XML has no object an error; ``skip_unannotated`` drops frames
    without an XML (as the original preprocessing does) instead of raising.
    """

    classes = POLYP_CLASSES

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        ref_offsets: Sequence[int] = (-2, -1),
        transform: Callable[..., dict[str, torch.Tensor]] | None = None,
        require_boxes: bool = False,
        skip_unannotated: bool = False,
    ):
        self.root = Path(root)
        self.ref_offsets = tuple(ref_offsets)
        self.require_boxes = require_boxes
        self.transform = transform or eval_transform(None, short_side=600, max_size=640)
        split_dir = self.root / f"{split}2019"
        image_root, anno_root = split_dir / "Image", split_dir / "Annotation"
        for needed in (image_root, anno_root):
            if not needed.is_dir():
                raise DatasetError(f"KUMC/PolypsSet layout: folder {needed} is missing")
        self.videos: list[tuple[str, list[Path]]] = []
        self.samples: list[tuple[int, int, Path]] = []
        for video in sorted((p.name for p in image_root.iterdir() if p.is_dir()), key=natural_key):
            anno_dir = anno_root / video
            if not anno_dir.is_dir():
                raise DatasetError(f"KUMC/PolypsSet layout: folder {anno_dir} is missing")
            frames = sorted((image_root / video).glob("*.jpg"), key=lambda p: natural_key(p.name))
            v = len(self.videos)
            self.videos.append((video, frames))
            for k, frame in enumerate(frames):
                xml = anno_dir / f"{frame.stem}.xml"
                if xml.exists():
                    self.samples.append((v, k, xml))
                elif not skip_unannotated:
                    raise DatasetError(f"annotation {xml} for frame {frame} is missing")
        if not self.samples:
            raise DatasetError(f"{image_root} holds no annotated frames")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        v, k, xml = self.samples[index]
        video, frames = self.videos[v]
        boxes, labels, (h, w) = read_voc(xml, self.classes)
        if self.require_boxes and len(boxes) == 0:
            raise DatasetError(f"{xml}: no object boxes, but this dataset requires boxes on every frame")
        indices = [min(max(k + off, 0), len(frames) - 1) for off in self.ref_offsets] + [k]
        images = [load_rgb(frames[i]) for i in indices]
        if images[-1].shape[:2] != (h, w):
            raise DatasetError(f"{xml}: annotated size {(h, w)} differs from frame size {images[-1].shape[:2]}")
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        clip = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        out = self.transform(clip, boxes=boxes, labels=labels)
        return {
            "video": out["video"],
            "boxes": out["boxes"],
            "labels": out["labels"],
            "meta": {"path": str(frames[k]), "video": video, "frame_indices": torch.tensor(indices)},
        }


def load_rgb(path: Path) -> np.ndarray:
    """A frame image as uint8 RGB ``[H, W, 3]``; a file PIL cannot read is a :class:`DatasetError`."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc
