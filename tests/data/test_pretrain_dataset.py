"""PretrainClips: samples from a manifest, determinism per (seed, epoch, index), skipping bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from endofm.data.datasets import PretrainClips, collate_views
from endofm.data.manifest import ClipRef, scan_videos
from endofm.data.views import MultiViewConfig, MultiViewSampler
from endofm.errors import DatasetError

SMALL = MultiViewSampler(
    MultiViewConfig(global_frames=(4, 8), local_frames=(2, 2, 4), global_size=16, local_size=8, decode_short_side=24)
)


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_samples_from_a_manifest(corpus: Path, tmp_path: Path) -> None:
    scan_videos(corpus, tmp_path / "m.csv", clip_seconds=0.5, progress=False)
    dataset = PretrainClips(tmp_path / "m.csv", sampler=SMALL, seed=1)
    assert len(dataset) == 4
    sample = dataset[0]
    assert [tuple(v.shape) for v in sample["views"]] == [
        (3, 4, 16, 16),
        (3, 8, 16, 16),
        (3, 2, 8, 8),
        (3, 2, 8, 8),
        (3, 4, 8, 8),
    ]
    assert set(sample["meta"]) == {"path", "start", "length", "index"} and sample["skipped"] == []


def test_deterministic_per_seed_epoch_and_index(video_dir: Path) -> None:
    clips = [ClipRef(video_dir / "h264.mp4", 0, 40), ClipRef(video_dir / "clip.mkv")]
    a, b = PretrainClips(clips, SMALL, seed=0), PretrainClips(clips, SMALL, seed=0)
    assert _same(a[1]["views"], b[1]["views"]) and a[1]["meta"]["length"] == 24
    assert not _same(a[0]["views"], PretrainClips(clips, SMALL, seed=1)[0]["views"])
    first = a[0]["views"]
    a.set_epoch(1)
    assert not _same(first, a[0]["views"])
    a.set_epoch(0)
    assert _same(first, a[0]["views"])


def test_bad_files_are_skipped_and_reported(video_dir: Path, broken_files: dict[str, Path]) -> None:
    clips = [ClipRef(broken_files["zero"]), ClipRef(broken_files["text"]), ClipRef(video_dir / "h264.mp4")]
    dataset = PretrainClips(clips, SMALL, seed=0, max_tries=50)
    sample = dataset[0]
    assert sample["meta"]["path"].endswith("h264.mp4")
    assert sample["skipped"] and all(("zero.mp4" in s or "notes.mp4" in s) for s in sample["skipped"])
    out_of_range = PretrainClips([ClipRef(video_dir / "h264.mp4", 30, 20), ClipRef(video_dir / "h264.mp4")], SMALL)
    assert "outside" in out_of_range[0]["skipped"][0]
    with pytest.raises(DatasetError, match="no readable clip"):
        PretrainClips([ClipRef(broken_files["zero"])], SMALL, max_tries=3)[0]
    with pytest.raises(DatasetError, match="no clips"):
        PretrainClips([], SMALL)


def test_dataloader_with_workers_groups_views_and_carries_skips(video_dir: Path, broken_files: dict[str, Path]) -> None:
    clips = [ClipRef(video_dir / "h264.mp4", 0, 20), ClipRef(broken_files["zero"]), ClipRef(video_dir / "audio.mp4")]
    dataset = PretrainClips(clips * 2, SMALL, seed=0, max_tries=50)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_views)
    batches = list(loader)
    assert len(batches) == 2
    batch = batches[0]
    assert batch["group_views"] == [[0], [1], [2, 3], [4]]
    assert [tuple(g.shape) for g in batch["groups"]] == [
        (3, 3, 4, 16, 16),
        (3, 3, 8, 16, 16),
        (6, 3, 2, 8, 8),
        (3, 3, 4, 8, 8),
    ]
    skipped = [entry for b in batches for entry in b["skipped"]]
    assert len(skipped) >= 2 and all("zero.mp4" in entry for entry in skipped)
    direct = [dataset[i] for i in range(3)]
    assert torch.equal(batch["groups"][2][:3], torch.stack([s["views"][2] for s in direct]))
    assert torch.equal(batch["groups"][2][3:], torch.stack([s["views"][3] for s in direct]))


def test_cached_clips_give_the_views_of_the_files(video_dir: Path, broken_files: dict[str, Path]) -> None:
    """Decoded once into memory, every sample is the same as read from the file, a broken file is still
    replaced (and reported), and workers forked after caching share the frames."""
    clips = [ClipRef(video_dir / "h264.mp4", 10, 30), ClipRef(broken_files["text"]), ClipRef(video_dir / "clip.mkv")]
    files, cached = PretrainClips(clips, SMALL, seed=3, max_tries=50), PretrainClips(clips, SMALL, seed=3, max_tries=50)
    held = cached.cache_decoded(max_bytes=2**30)
    assert sorted(cached.decoded) == [0, 2] and held == sum(f.numel() for f in cached.decoded.values())
    assert cached.decoded[0].shape[0] == 30
    for epoch in (0, 1):
        files.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(3):
            expected, got = files[index], cached[index]
            assert _same(expected["views"], got["views"]) and expected["meta"] == got["meta"]
            assert expected["skipped"] == got["skipped"]
    loader = DataLoader(cached, batch_size=3, num_workers=2, collate_fn=collate_views)
    assert torch.equal(next(iter(loader))["groups"][0], collate_views([files[i] for i in range(3)])["groups"][0])
    with pytest.raises(DatasetError, match="need more than"):
        PretrainClips(clips, SMALL).cache_decoded(max_bytes=held // 2)
