"""PolypDiag sampled and viewed as the original's fine-tuning reads it (``datasets/ucf101.py``,
``datasets/decoder.py``, ``datasets/data_utils.py`` with the TimeSformer 8x32 config)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from endofm.data.datasets.polypdiag import PolypDiagDataset, original_start, original_window
from endofm.data.synthetic import write_polypdiag
from endofm.data.transforms import ShortSideScaleCrop, original_view
from endofm.errors import InputError


def test_the_window_spans_32_x_8_frames_at_30_fps_scaled_by_the_videos_rate():
    # linspace(0, 255, 8) = 0, 36.4, 72.9, 109.3, 145.7, 182.1, 218.6, 255, truncated
    assert original_window(300, 30.0) == [0, 36, 72, 109, 145, 182, 218, 255]
    # 15 fps: a window of 128 frames; linspace(0, 127, 8) steps by 18.14
    assert original_window(300, 15.0) == [0, 18, 36, 54, 72, 90, 108, 127]
    # the decoder reads from the first frame at or after the drawn start
    assert original_window(300, 30.0, start=10.3) == [11, 47, 83, 120, 156, 193, 229, 266]


def test_a_short_video_repeats_its_last_frame():
    assert original_window(100, 30.0) == [0, 36, 72, 99, 99, 99, 99, 99]
    assert original_window(1, 30.0, num_frames=2) == [0, 0]
    with pytest.raises(InputError):
        original_window(0, 30.0)


def test_training_draws_the_start_over_the_frames_the_window_leaves():
    torch.manual_seed(0)
    starts = [original_start(300, 30.0) for _ in range(200)]
    assert 0.0 <= min(starts) < 5.0 and 39.0 < max(starts) <= 44.0  # 300 - 256 frames left
    assert original_start(100, 30.0) == 0.0  # shorter than the window: from the first frame


def test_the_dataset_reads_the_first_window_at_test_time_and_random_ones_in_training(tmp_path):
    root = write_polypdiag(tmp_path, 4, seed=0, num_frames=8, size=32, fractions=(0.5, 0.25, 0.25))
    test = PolypDiagDataset(root, "train", num_frames=4, sampling="original", sampling_rate=2)
    # a window of 2 x 4 frames at 30 fps over 8-frame videos at 30 fps: linspace(0, 7, 4) = 0, 2.3, 4.7, 7
    assert test[0]["meta"]["frame_indices"].tolist() == [0, 2, 4, 7]
    spread = PolypDiagDataset(root, "train", num_frames=4)
    assert spread.sampling == "spread" and spread[0]["meta"]["frame_indices"].tolist() == [0, 2, 5, 7]
    train = PolypDiagDataset(root, "train", num_frames=2, sampling="original", sampling_rate=2, random_start=True)
    torch.manual_seed(1)
    firsts = {tuple(train[0]["meta"]["frame_indices"].tolist()) for _ in range(30)}
    assert len(firsts) > 1 and all(b - a == 3 for a, b in firsts)  # window 4: offsets 0 and 3
    with pytest.raises(InputError, match="sampling"):
        PolypDiagDataset(root, "train", sampling="uniform")


def _gradient_video(height: int, width: int) -> torch.Tensor:
    """A uint8 [T, 3, H, W] video whose pixels differ along both axes, so every crop position shows."""
    y = torch.arange(height).view(height, 1) * 3
    x = torch.arange(width).view(1, width) * 2
    frame = ((y + x) % 256).to(torch.uint8)
    return frame.expand(2, 3, height, width).clone()


@pytest.mark.parametrize("shape, resized", [((48, 64), (32, 42)), ((64, 48), (42, 32))])
def test_the_test_view_is_the_first_crop_of_the_short_side_at_the_crop_size(shape, resized):
    """Short side to 32 (bilinear, no antialiasing, long side floored), then spatial index 0: the left crop of
    a landscape frame, the top crop of a portrait one, as the original's test set reads with 3 spatial crops."""
    video = _gradient_video(*shape)
    out = original_view(32, train=False, normalization="half")(video)["video"]  # [C, T, H, W]
    expected = F.interpolate(video.float() / 255, size=resized, mode="bilinear", align_corners=False)
    expected = (expected[..., :32, :32] - 0.5) / 0.5
    torch.testing.assert_close(out, expected.permute(1, 0, 2, 3))


def test_the_training_view_jitters_the_scale_crops_and_flips():
    video = _gradient_video(48, 64)
    view = ShortSideScaleCrop(32, (37, 46), "random", hflip=0.5)
    torch.manual_seed(0)
    outs = [view({"video": video})["video"] for _ in range(40)]
    assert all(tuple(out.shape) == (2, 3, 32, 32) for out in outs)
    assert len({out.float().sum().item() for out in outs}) > 10  # scales and positions vary
    flipped = [out for out in outs if out[0, 0, 0, 0] > out[0, 0, 0, -1]]  # gradient rises left to right
    assert 0 < len(flipped) < len(outs)
    with pytest.raises(InputError, match="video alone"):
        view({"video": video, "mask": video[:, 0]})
