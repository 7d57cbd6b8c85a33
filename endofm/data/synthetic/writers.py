"""The synthetic dataset layouts, written from :func:`~endofm.data.synthetic.render.render_video`'s videos.

:func:`write_polypdiag` (mp4 + ``splits/*.txt``), :func:`write_cvc` (tif frames + ``videolist.txt`` of
``<name> <start> <len> -1`` lines) and :func:`write_kumc` (KUMC/PolypsSet: jpg frames + VOC XML) write the
original layouts; :func:`write_pretrain` writes unlabelled clips. :func:`polypdiag_layout`,
:func:`cvc_layout` and :func:`kumc_layout` are the layouts of the synthetic corpus that the tasks register
(:attr:`Task.synthetic <endofm.tasks.base.Task.synthetic>`).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from endofm.data.datasets.kumc import POLYP_CLASSES
from endofm.data.encoding import write_video
from endofm.data.synthetic.render import Box, render_video
from endofm.errors import InputError
from endofm.io import atomic_write, atomic_write_text


def _save_image(path: Path, array: np.ndarray, fmt: str) -> None:
    options = {"quality": 95} if fmt == "JPEG" else {}
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format=fmt, **options))


def _write_text(path: Path, lines: Sequence[str]) -> None:
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of n items to fractions, every split non-empty when n allows it."""
    total = float(sum(fractions))
    raw = [n * f / total for f in fractions]
    counts = [int(x) for x in raw]
    for k in sorted(range(len(raw)), key=lambda k: counts[k] - raw[k])[: n - sum(counts)]:
        counts[k] += 1
    for k in range(len(counts)):
        if counts[k] == 0 and n >= len(counts):
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[k] += 1
    return counts


def write_polypdiag(
    root: str | os.PathLike,
    num_videos: int = 40,
    seed: int = 0,
    *,
    num_frames: int = 32,
    size: int | Sequence[int] = 128,
    fps: float = 30.0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    always_visible: bool = False,
) -> Path:
    """Write a PolypDiag-like classification set: ``videos/*.mp4`` and ``splits/{train,val,test}.txt``.

    Split lines read ``<file relative to videos/>,<label>`` with label 1 for a polyp and 0 without, as in
    the original. Labels are balanced and each split is stratified by label. ``val`` is the original's
    evaluation list; ``test`` is an extra held-out list (so a model can be selected on ``val``). With
    ``always_visible`` a polyp video shows its polyp in every frame, so any sampled clip carries its label.
    """
    root = Path(root)
    if num_videos < 2:
        raise InputError(f"write_polypdiag needs at least 2 videos, got {num_videos}")
    rng = np.random.default_rng([seed, 1])
    labels = np.arange(num_videos) % 2
    rng.shuffle(labels)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in (0, 1):
        idx = np.flatnonzero(labels == label)
        counts = _split_counts(len(idx), fractions)
        for name, part in zip(splits, np.split(idx, np.cumsum(counts)[:-1]), strict=True):
            splits[name] += [f"video_{i:04d}.mp4,{label}" for i in part]
    for i, label in enumerate(labels):
        video = render_video([seed, 1, i], num_frames, size, polyp=bool(label), fps=fps,
                             always_visible=always_visible)
        write_video(root / "videos" / f"video_{i:04d}.mp4", video.frames, fps)
    for name, lines in splits.items():
        _write_text(root / "splits" / f"{name}.txt", sorted(lines))
    return root


def write_cvc(
    root: str | os.PathLike,
    num_sequences: int = 10,
    seed: int = 0,
    *,
    length_range: tuple[int, int] = (6, 25),
    size: int | Sequence[int] = 128,
    test_fraction: float = 0.3,
) -> Path:
    """Write a CVC-ClinicDB-like segmentation set.

    ``Original/{i}.tif`` (RGB) and ``Ground Truth/{i}.tif`` (0/255) with 1-based ``i`` running across
    sequences; ``videolist.txt`` lists every sequence as ``<name> <start> <len> -1`` (the original's
    format, 1-based start); ``splits/train.txt`` and ``splits/test.txt`` hold disjoint sequences in the
    same format. Every frame shows a polyp, as in CVC-ClinicDB.
    """
    root = Path(root)
    if num_sequences < 2:
        raise InputError(f"write_cvc needs at least 2 sequences, got {num_sequences}")
    rng = np.random.default_rng([seed, 2])
    lo, hi = length_range
    (root / "Original").mkdir(parents=True, exist_ok=True)
    (root / "Ground Truth").mkdir(parents=True, exist_ok=True)
    lines, start = [], 1
    for k in range(num_sequences):
        length = int(rng.integers(lo, hi + 1))
        video = render_video([seed, 2, k], length, size, polyp=True, always_visible=True)
        for j in range(length):
            _save_image(root / "Original" / f"{start + j}.tif", video.frames[j], "TIFF")
            mask = video.masks[j].astype(np.uint8) * 255
            _save_image(root / "Ground Truth" / f"{start + j}.tif", mask, "TIFF")
        lines.append(f"sequence_{k:03d} {start} {length} -1")
        start += length
    order = rng.permutation(num_sequences)
    n_test = min(max(1, round(test_fraction * num_sequences)), num_sequences - 1)
    _write_text(root / "videolist.txt", lines)
    _write_text(root / "splits" / "train.txt", [lines[k] for k in sorted(order[n_test:])])
    _write_text(root / "splits" / "test.txt", [lines[k] for k in sorted(order[:n_test])])
    return root


def voc_xml(filename: str, width: int, height: int, objects: Sequence[tuple[str, Box]]) -> str:
    """A Pascal VOC annotation with one ``<object>`` per ``(class name, (x1, y1, x2, y2))``."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "filename").text = filename
    size_el = ET.SubElement(ann, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size_el, key).text = str(value)
    for name, (x1, y1, x2, y2) in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "0"
        bnd = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x1), ("ymin", y1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bnd, key).text = str(value)
    ET.indent(ann)
    return ET.tostring(ann, encoding="unicode") + "\n"


def write_kumc(
    root: str | os.PathLike,
    num_videos: int = 9,
    seed: int = 0,
    *,
    num_frames: int = 16,
    size: int | Sequence[int] = 128,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
) -> Path:
    """Write a KUMC/PolypsSet-like detection set.

    ``{train,val,test}2019/Image/<video>/<n>.jpg`` and ``.../Annotation/<video>/<n>.xml`` (VOC, 1-based
    ``n``). Each video holds one polyp of one class (adenomatous or hyperplastic, alternating); a frame
    where the polyp is not visible gets an XML without ``<object>``, as PolypsSet's polyp-free frames.
    """
    root = Path(root)
    if num_videos < 3:
        raise InputError(f"write_kumc needs at least 3 videos (one per split), got {num_videos}")
    rng = np.random.default_rng([seed, 3])
    order = rng.permutation(num_videos)
    counts = _split_counts(num_videos, fractions)
    parts = np.split(order, np.cumsum(counts)[:-1])
    for split, part in zip(("train", "val", "test"), parts, strict=True):
        for k in sorted(part):
            cls = POLYP_CLASSES[k % 2]
            video = render_video([seed, 3, k], num_frames, size, polyp=True, polyp_class=cls)
            name = f"{k + 1:03d}"
            image_dir = root / f"{split}2019" / "Image" / name
            anno_dir = root / f"{split}2019" / "Annotation" / name
            image_dir.mkdir(parents=True, exist_ok=True)
            anno_dir.mkdir(parents=True, exist_ok=True)
            h, w = video.frames.shape[1:3]
            for j, box in enumerate(video.boxes, start=1):
                _save_image(image_dir / f"{j}.jpg", video.frames[j - 1], "JPEG")
                objects = [(cls, box)] if box is not None else []
                _write_text(anno_dir / f"{j}.xml", [voc_xml(f"{j}.jpg", w, h, objects).rstrip("\n")])
    return root


def write_pretrain(root: str | os.PathLike, num_videos: int, seed: int = 0, *, first: int = 0, **render: Any) -> Path:
    """Write ``num_videos`` unlabelled mp4s ``clip_<i>.mp4`` (half with a polyp) for pretraining manifests,
    ``i`` counting from ``first`` (so that processes can share the writing of one set)."""
    root = Path(root)
    for i in range(first, first + num_videos):
        video = render_video([seed, 0, i], **render)
        write_video(root / f"clip_{i:04d}.mp4", video.frames, video.fps)
    return root


def polypdiag_layout(root: Path, videos: int, seed: int) -> dict[str, Any]:
    """The synthetic corpus's PolypDiag layout: ``videos`` labelled videos of 32 frames at 128x128; returns
    its entry of ``corpus.json``."""
    write_polypdiag(root, videos, seed)
    return {"videos": videos, "frames": 32, "size": [128, 128]}


def cvc_layout(root: Path, videos: int, seed: int) -> dict[str, Any]:
    """The synthetic corpus's CVC-ClinicDB layout: ``max(4, videos // 5)`` sequences; returns its entry of
    ``corpus.json``."""
    sequences = max(4, videos // 5)
    write_cvc(root, sequences, seed)
    return {"sequences": sequences}


def kumc_layout(root: Path, videos: int, seed: int) -> dict[str, Any]:
    """The synthetic corpus's KUMC layout: ``max(3, videos // 5)`` videos; returns its entry of
    ``corpus.json``."""
    count = max(3, videos // 5)
    write_kumc(root, count, seed)
    return {"videos": count}
