"""MultiViewSampler: the original's temporal sampling, shapes, determinism, decoding the union only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from endofm.data.video import VideoReader
from endofm.data.views import MultiViewConfig, MultiViewSampler, crop_box
from endofm.errors import ConfigError, InputError

SMALL = MultiViewConfig(global_size=32, local_size=16, decode_short_side=None)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_frame_indices_follow_the_original_recipe() -> None:
    sampler = MultiViewSampler()
    indices = sampler.frame_indices(150, _gen(0))
    assert [len(v) for v in indices] == [8, 16, 2, 2, 4, 4, 8, 8, 16, 16]
    assert indices[0] == torch.linspace(0, 145, 8).long().tolist()
    assert indices[1] == torch.linspace(5, 150, 16).clamp(max=149).long().tolist()
    assert indices[1][-1] == 149
    for local in indices[2:]:
        assert local == sorted(local)
        assert local[-1] - local[0] <= 150 // 8 and 0 <= local[0] <= 150 - 18 - 1


def test_view_shapes_and_specs(video_dir: Path) -> None:
    sampler = MultiViewSampler(SMALL)
    with VideoReader(video_dir / "h264.mp4") as reader:
        views = sampler(reader, 5, 30, _gen(0))
    expected = [(3, 8, 32, 32), (3, 16, 32, 32)] + [(3, n, 16, 16) for n in (2, 2, 4, 4, 8, 8, 16, 16)]
    assert [tuple(v.shape) for v in views] == expected
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    assert [s.window for s in sampler.views[:3]] == ["global_first", "global_second", "local"]


def test_default_sizes_from_a_path(video_dir: Path) -> None:
    views = MultiViewSampler()(video_dir / "audio.mp4", 0, 30, _gen(1))
    assert views[0].shape == (3, 8, 224, 224) and views[-1].shape == (3, 16, 96, 96)


def test_same_seed_same_views_different_seed_different_views(video_dir: Path) -> None:
    sampler = MultiViewSampler(SMALL)
    with VideoReader(video_dir / "h264.mp4") as reader:
        a = sampler(reader, 0, 40, _gen(3))
        b = sampler(reader, 0, 40, _gen(3))
        c = sampler(reader, 0, 40, _gen(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_union_decode_equals_sampling_the_fully_decoded_clip(video_dir: Path) -> None:
    sampler = MultiViewSampler(SMALL)
    with VideoReader(video_dir / "h264.mp4") as reader:
        ours = sampler(reader, 7, 30, _gen(5))
        clip = reader.read(range(7, 37))
    baseline = sampler(clip, 0, 30, _gen(5))
    assert all(torch.equal(x, y) for x, y in zip(ours, baseline, strict=True))


def test_short_clips_repeat_frames() -> None:
    sampler = MultiViewSampler(SMALL)
    indices = sampler.frame_indices(6, _gen(0))
    assert all(0 <= i < 6 for view in indices for i in view)
    assert len(set(indices[1])) < 16 and len(indices[1]) == 16
    clip = torch.arange(6, dtype=torch.uint8).mul(40).view(6, 1, 1, 1).expand(6, 3, 20, 24).contiguous()
    views = sampler(clip, 0, 6, _gen(0))
    assert views[-1].shape == (3, 16, 16, 16)
    assert sampler(clip, 2, 1, _gen(0))[1].shape == (3, 16, 32, 32)


def test_augmentation_is_the_same_for_every_frame_of_a_view() -> None:
    frame = torch.randint(0, 256, (1, 3, 40, 48), generator=_gen(0), dtype=torch.uint8)
    clip = frame.expand(20, 3, 40, 48).contiguous()
    for seed in range(3):
        for view in MultiViewSampler(SMALL)(clip, 0, 20, _gen(seed)):
            assert torch.allclose(view, view[:, :1].expand_as(view))


def test_crop_box_stays_inside_and_respects_scale() -> None:
    for seed in range(20):
        top, left, h, w = crop_box(60, 80, (0.05, 0.4), (3 / 4, 4 / 3), _gen(seed))
        assert top >= 0 and top + h <= 60 and left >= 0 and left + w <= 80
        assert 0.04 <= h * w / 4800 <= 0.42
    assert crop_box(10, 200, (0.9, 1.0), (3 / 4, 4 / 3), _gen(0))[2:] == (10, 13)


def test_config_validation_and_bad_input() -> None:
    with pytest.raises(ConfigError, match="local_scale"):
        MultiViewConfig(local_scale=(0.5, 0.1))
    with pytest.raises(ConfigError, match="normalization"):
        MultiViewConfig(normalization="nope")
    with pytest.raises(ConfigError, match="flip_p"):
        MultiViewConfig(flip_p=2.0)
    custom = MultiViewSampler(MultiViewConfig(global_frames=(4, 4), local_frames=(2,), local_size=8))
    assert [len(v) for v in custom.frame_indices(50, _gen(0))] == [4, 4, 2]
    with pytest.raises(InputError):
        custom.frame_indices(0, _gen(0))
    with pytest.raises(InputError, match="shape"):
        custom(torch.zeros(5, 4, 4, dtype=torch.uint8), 0, 5, _gen(0))
