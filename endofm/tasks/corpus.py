"""The synthetic corpus: unlabelled pretraining clips and every registered task's synthetic layout in one
folder (``endofm data synth``, the demo's data), from the generator of :mod:`endofm.data.synthetic`."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from endofm.data.synthetic.writers import write_pretrain
from endofm.errors import InputError
from endofm.io import atomic_write_text
from endofm.tasks.registry import TASKS


def write_synthetic_corpus(
    out_dir: str | os.PathLike,
    num_videos: int = 100,
    seed: int = 0,
    *,
    pretrain_videos: int | None = None,
    pretrain_frames: int = 32,
    pretrain_size: int = 128,
) -> Path:
    """Write the pretraining clips and every registered task's synthetic layout under ``out_dir`` and return it.

    ``pretrain/`` (``pretrain_videos``, default ``num_videos``, unlabelled mp4s of ``pretrain_frames`` frames
    at ``pretrain_size``) and each task's :attr:`~endofm.tasks.base.Task.synthetic` layout in its sub-folder,
    written from ``num_videos`` (the shipped tasks: ``polypdiag/``, ``num_videos`` labelled mp4s of 32 frames
    at 128x128; ``cvc/``, ``max(4, num_videos // 5)`` sequences; ``kumc/``, ``max(3, num_videos // 5)``
    videos), plus ``corpus.json`` describing them. The layouts are written in two processes when two CPUs
    are free.
    """
    out = Path(out_dir)
    if num_videos < 2:
        raise InputError(f"a synthetic corpus needs at least 2 videos, got {num_videos}")
    pretrain_videos = num_videos if pretrain_videos is None else pretrain_videos
    if pretrain_videos < 1 or pretrain_frames < 1:
        raise InputError(f"pretraining clips and their frames must be at least 1, got {pretrain_videos} clips of "
                         f"{pretrain_frames} frames")
    if pretrain_size < 16 or pretrain_size % 2:
        raise InputError(f"pretrain_size must be an even number of pixels, at least 16, got {pretrain_size}")
    out.mkdir(parents=True, exist_ok=True)
    pretrain_render = {"num_frames": pretrain_frames, "size": pretrain_size}
    half = pretrain_videos // 2
    layouts = [task.synthetic for task in TASKS.values() if task.synthetic is not None]
    jobs = [
        (partial(write_pretrain, **pretrain_render), out / "pretrain", half),
        (partial(write_pretrain, first=half, **pretrain_render), out / "pretrain", pretrain_videos - half),
        *((layout.write, out / layout.folder, num_videos) for layout in layouts),
    ]
    workers = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers > 1 and num_videos >= 10:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            written = [future.result() for future in [pool.submit(fn, path, n, seed) for fn, path, n in jobs]]
    else:
        written = [fn(path, n, seed) for fn, path, n in jobs]
    summary = {
        "seed": seed,
        "pretrain": {"videos": pretrain_videos, "frames": pretrain_frames, "size": [pretrain_size, pretrain_size]},
        **{layout.folder: entry for layout, entry in zip(layouts, written[2:], strict=True)},
    }
    atomic_write_text(out / "corpus.json", json.dumps(summary, indent=2) + "\n")
    return out
