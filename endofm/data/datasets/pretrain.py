"""The pretraining dataset: clips from a manifest, each turned into the global and local views.

A sample is ``{"views": [float [3, T, S, S], ...], "meta": {"path", "start", "length", "index"},
"skipped": [...]}``. Its random draws depend only on ``(seed, epoch, index)``, so a run is reproducible
whatever the number of DataLoader workers. A clip that cannot be read does not stop training: another
clip, drawn from the same seeded stream, is used in its place, and the failure (``"path: reason"``) travels
in the sample's ``skipped`` list; :func:`collate_views` gathers them, so a training loop can count and
report them at the end of an epoch, with any number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from endofm.data.manifest import ClipRef, read_manifest
from endofm.data.video import VideoReader
from endofm.data.views import MultiViewSampler
from endofm.engine.logging import bar_off
from endofm.errors import DatasetError, EndoFMError, InputError


def sample_generator(seed: int, epoch: int, index: int, attempt: int = 0) -> torch.Generator:
    """A generator seeded from ``(seed, epoch, index, attempt)`` with well-mixed bits."""
    state = np.random.SeedSequence([seed, epoch, index, attempt]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class PretrainClips(Dataset):
    """Clips of a manifest CSV (or a list of :class:`ClipRef`) as multi-view samples.

    Call :meth:`set_epoch` before each epoch (with non-persistent workers, the default) to draw new views.
    ``max_tries`` clips are tried per sample before :class:`DatasetError` is raised. :meth:`cache_decoded`
    keeps every clip's decoded frames in memory, for small corpora that are read many times.
    """

    def __init__(
        self,
        clips: str | os.PathLike | Sequence[ClipRef],
        sampler: MultiViewSampler | None = None,
        seed: int = 0,
        max_tries: int = 10,
    ):
        if isinstance(clips, (str, os.PathLike)):
            clips = read_manifest(clips)
        self.clips = list(clips)
        if not self.clips:
            raise DatasetError("pretraining dataset has no clips (empty manifest or list)")
        if max_tries < 1:
            raise InputError(f"max_tries must be at least 1, got {max_tries}")
        self.sampler = sampler if sampler is not None else MultiViewSampler()
        self.seed = seed
        self.epoch = 0
        self.max_tries = max_tries
        self.decoded: dict[int, torch.Tensor] = {}
        self.decoded_fps: dict[int, float] = {}

    def cache_decoded(self, max_bytes: int, progress: bool = False) -> int:
        """Decode every clip once (at the sampler's decode size) and keep its frames, ``uint8 [L, 3, H, W]``;
        samples are then cut from memory, with the same views as from the file. Call it before a DataLoader
        starts its workers: forked workers share the frames. A clip that cannot be read is left to the usual
        replacement at sample time. Returns the bytes held; raises :class:`DatasetError` past ``max_bytes``."""
        held = 0
        for index, clip in enumerate(tqdm(self.clips, desc="decoding clips into memory", unit="clip",
                                          disable=bar_off(progress))):
            try:
                with self.sampler.open_video(clip.path) as reader:
                    frames = reader.read(range(clip.start, clip.start + self._length(clip, reader)))
                    self.decoded_fps[index] = reader.info.fps
            except EndoFMError:
                continue
            held += frames.numel()
            if held > max_bytes:
                self.decoded.clear()
                raise DatasetError(f"decoded clips need more than {max_bytes / 2**30:.1f} GiB of memory (at clip "
                                   f"{index + 1} of {len(self.clips)}); set data.cache=false or raise "
                                   "data.cache_max_gib")
            self.decoded[index] = frames
        return held

    @staticmethod
    def _length(clip: ClipRef, reader: VideoReader) -> int:
        """The clip's frame count, checked against the video's."""
        length = clip.length if clip.length is not None else len(reader) - clip.start
        if clip.start < 0 or length <= 0 or clip.start + length > len(reader):
            raise DatasetError(f"{clip.path}: clip [{clip.start}, {clip.start + length}) outside {len(reader)} frames")
        return length

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random views the next samples use."""
        self.epoch = int(epoch)

    def load(self, index: int, generator: torch.Generator) -> tuple[list[torch.Tensor], int]:
        """Views of clip ``index`` and the clip's length in frames; raises on a bad file."""
        frames = self.decoded.get(index)
        if frames is not None:
            return self.sampler(frames, 0, len(frames), generator, self.decoded_fps[index]), len(frames)
        clip = self.clips[index]
        with self.sampler.open_video(clip.path) as reader:
            length = self._length(clip, reader)
            return self.sampler(reader, clip.start, length, generator), length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.clips):
            raise IndexError(f"index {index} out of range for {len(self.clips)} clips")
        skipped: list[str] = []
        candidate = index
        for attempt in range(self.max_tries):
            clip = self.clips[candidate]
            generator = sample_generator(self.seed, self.epoch, index, attempt)
            try:
                views, length = self.load(candidate, generator)
            except EndoFMError as error:
                skipped.append(f"{clip.path}: {str(error).removeprefix(f'{clip.path}: ')}")
                candidate = int(torch.randint(len(self.clips), (), generator=generator))
                continue
            meta = {"path": str(Path(clip.path)), "start": clip.start, "length": length, "index": candidate}
            return {"views": views, "meta": meta, "skipped": skipped}
        raise DatasetError(f"no readable clip after {self.max_tries} tries; last failures: {skipped[-3:]}")


def collate_views(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch multi-view samples.

    Returns ``groups`` (consecutive views of equal shape, concatenated view after view:
    ``[len(group) * B, 3, T, S, S]``), ``group_views`` (the view indices of each group), ``meta`` (lists
    per key) and ``skipped`` (every sample's skipped clips).
    """
    if not samples:
        raise InputError("cannot collate an empty batch")
    count = len(samples[0]["views"])
    if any(len(s["views"]) != count for s in samples):
        raise InputError("samples of a batch have different numbers of views")
    stacked = [torch.stack([s["views"][v] for s in samples]) for v in range(count)]
    group_views: list[list[int]] = []
    for v in range(count):
        if group_views and stacked[group_views[-1][0]].shape == stacked[v].shape:
            group_views[-1].append(v)
        else:
            group_views.append([v])
    groups = [torch.cat([stacked[v] for v in views]) for views in group_views]
    meta = {key: [s["meta"][key] for s in samples] for key in samples[0]["meta"]}
    skipped = [entry for s in samples for entry in s.get("skipped", [])]
    return {"groups": groups, "group_views": group_views, "meta": meta, "skipped": skipped}
