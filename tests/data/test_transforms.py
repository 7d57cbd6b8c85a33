"""Fine-tuning transforms keep frames, masks and boxes aligned."""

from __future__ import annotations

import pytest
import torch

from endofm.data.synthetic import mask_to_box, render_video
from endofm.data.transforms import eval_transform, train_transform
from endofm.errors import InputError


def _polyp_sample():
    video = render_video(11, 3, (40, 56), polyp=True, always_visible=True)
    frames = torch.from_numpy(video.frames).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(video.masks)
    box = torch.tensor([video.boxes[-1]], dtype=torch.float32)
    return frames, masks, box


def _box_of(mask: torch.Tensor) -> torch.Tensor:
    return torch.tensor([mask_to_box(mask.numpy().astype(bool))], dtype=torch.float32)


def test_flip_moves_frame_mask_and_box_together():
    frames, masks, box = _polyp_sample()
    flip = train_transform(40, short_side=(40, 40), hflip=1.0, normalization="half")
    out = flip(frames, mask=masks, boxes=box, labels=torch.tensor([1]))
    # The 40x56 frame is cropped to 40x40 at a random column: the box must still be the mask extent.
    assert out["video"].shape == (3, 3, 40, 40) and out["mask"].shape == (3, 40, 40)
    assert out["mask"].dtype == torch.long
    assert torch.equal(out["boxes"], _box_of(out["mask"][-1]))
    # The polyp pixels of the transformed video are the mirrored polyp pixels of some crop of the input.
    no_crop = train_transform(40, short_side=(40, 40), hflip=1.0, normalization="half")
    square = frames[..., :40], masks[..., :40]
    out = no_crop(square[0], mask=square[1])
    assert torch.equal(out["mask"], square[1].flip(-1).long())
    expected = (square[0].flip(-1).float() / 255 - 0.5) / 0.5
    assert torch.allclose(out["video"], expected.permute(1, 0, 2, 3), atol=1e-5)


def test_flipped_box_matches_mirrored_coordinates():
    frames, masks, box = _polyp_sample()
    frames, masks = frames[..., :40], masks[..., :40]
    box = _box_of(masks[-1])
    out = train_transform(40, short_side=(40, 40), hflip=1.0)(frames, mask=masks, boxes=box)
    x1, y1, x2, y2 = box[0].tolist()
    assert out["boxes"][0].tolist() == [40 - x2, y1, 40 - x1, y2]


def test_eval_resize_and_crop_keep_box_on_mask():
    frames, masks, box = _polyp_sample()
    out = eval_transform(32, short_side=32, normalization="imagenet")(frames, mask=masks, boxes=box)
    assert out["video"].shape == (3, 3, 32, 32)
    got, expected = out["boxes"][0], _box_of(out["mask"][-1])[0]
    assert (got - expected).abs().max() <= 1.5  # nearest-neighbour mask vs exact box scaling


def test_train_scale_jitter_is_random_but_aligned():
    torch.manual_seed(0)
    frames, masks, box = _polyp_sample()
    tf = train_transform(24, short_side=(24, 36))
    for _ in range(5):
        out = tf(frames, mask=masks, boxes=box, labels=torch.tensor([0]))
        assert out["video"].shape == (3, 3, 24, 24)
        if len(out["boxes"]):
            # Downscaling by up to 0.6 moves a nearest-neighbour mask edge by up to 1/0.6 pixel.
            assert (out["boxes"][0] - _box_of(out["mask"][-1])[0]).abs().max() <= 2.5
        else:
            assert out["mask"][-1].sum() <= 2


def test_bad_inputs():
    frames, masks, _ = _polyp_sample()
    with pytest.raises(InputError, match="normalisation"):
        eval_transform(32, normalization="nope")
    with pytest.raises(InputError, match="mask shape"):
        eval_transform(32)(frames, mask=masks[:, :10])
    with pytest.raises(InputError, match="uint8"):
        eval_transform(32)(frames.float())
