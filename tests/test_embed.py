"""Feature extraction from video files and frame folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from endofm import InputError, VideoError, build_model, embed_video
from endofm.data.normalization import normalize
from endofm.data.video import VideoReader
from endofm.tasks.embed import clip_spans, find_videos, sample_indices


def test_clip_spans_cover_the_video():
    assert clip_spans(10) == [(0, 10)]
    assert clip_spans(10, window=4, stride=3) == [(0, 4), (3, 7), (6, 10)]
    assert clip_spans(9, window=4) == [(0, 4), (4, 8), (5, 9)]
    assert clip_spans(3, window=8) == [(0, 3)]
    with pytest.raises(InputError):
        clip_spans(10, window=0)


def test_sample_indices_are_even_and_repeat_for_short_spans():
    assert sample_indices(0, 8, 4) == [0, 2, 5, 7]
    assert sample_indices(10, 12, 4) == [10, 10, 11, 11]


@torch.no_grad()
def test_embedding_equals_the_model_on_the_prepared_clip(tiny_video):
    model = build_model("endofm_vit_micro").eval()
    result = embed_video(tiny_video, model, num_frames=4, size=32, window=6, stride=6)
    assert result.features.shape == (2, 96) and result.starts.tolist() == [0, 6]
    with VideoReader(tiny_video, size=32) as reader:
        frames = reader.read([6, 8, 9, 11])
    left = (frames.shape[-1] - 32) // 2
    clip = normalize(frames[..., :, left : left + 32], "imagenet").transpose(0, 1)[None]
    np.testing.assert_allclose(result.features[1], model(clip)[0].numpy(), atol=1e-5)


def test_frame_folders_embed_like_videos(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 11):  # natural order: 2.png before 10.png
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    model = build_model("endofm_vit_micro").eval()
    result = embed_video(folder, model, num_frames=2, size=32)
    assert result.features.shape == (1, 96) and np.isfinite(result.features).all()
    assert find_videos([tmp_path]) == [folder]


def test_unreadable_video_is_a_video_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError, match="bad.mp4"):
        embed_video(bad, build_model("endofm_vit_micro"))
    with pytest.raises(InputError, match="no such file"):
        find_videos([tmp_path / "absent"])


@torch.no_grad()
def test_the_models_own_mean_and_std_are_used_unless_a_preset_is_given(tiny_video):
    """``embed_video`` reads ``model.input_spec``; ``normalization`` replaces its mean and std."""
    import dataclasses

    from endofm import create_model

    model = create_model("endofm_vit_micro").eval()
    options = {"num_frames": 4, "size": 32}
    imagenet = embed_video(tiny_video, model, **options).features  # the backbone's spec: ImageNet's mean and std
    model.input_spec = dataclasses.replace(model.input_spec, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    half = embed_video(tiny_video, model, **options).features
    assert np.array_equal(half, embed_video(tiny_video, model, normalization="half", **options).features)
    assert not np.allclose(half, imagenet)
    assert np.array_equal(imagenet, embed_video(tiny_video, model, normalization="imagenet", **options).features)
