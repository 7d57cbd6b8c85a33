"""The views and frame samplers against values computed by the original Endo-FM code
(``../shared/fixtures/original_augment``, whose README specifies every array)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from endofm.data.datasets.polypdiag import original_window
from endofm.data.transforms import original_view
from endofm.data.views import (
    DECODER_WINDOW,
    MultiViewSampler,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    grayscale,
    resize_crop,
    sample_crop_boxes,
)
from endofm.data.windows import decoded_window, window_span
from tests.conftest import SHARED_FIXTURES

FIXTURES = SHARED_FIXTURES / "original_augment"


def load(name: str) -> dict:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared is absent)")
    return torch.load(path, weights_only=True)


def box_stats(boxes: torch.Tensor, frame_hw: list[int], ratio: list[float]) -> dict[str, float]:
    """Mean area fraction, mean aspect and distorted share of ``(top, left, height, width)`` boxes."""
    h, w = boxes[:, 2].double(), boxes[:, 3].double()
    distorted = ((w - 0.5) / (h + 0.5) > ratio[1]) | ((w + 0.5) / (h - 0.5) < ratio[0])
    return {"mean_area_fraction": float((h * w).mean() / (frame_hw[0] * frame_hw[1])),
            "mean_aspect": float((w / h).mean()), "distorted_share": float(distorted.double().mean())}


def test_crop_boxes_have_the_originals_distribution():
    import json

    meta = json.loads((FIXTURES / "meta.json").read_text())
    pooled = {c["name"]: c for c in meta["crops"]["calibration"]}
    generator = torch.Generator().manual_seed(0)
    for case in load("crops.pt")["cases"]:
        assert box_stats(case["boxes"].long(), case["frame_hw"], case["ratio"]) == pytest.approx(
            {k: case["stats"][k] for k in ("mean_area_fraction", "mean_aspect", "distorted_share")}, abs=1e-9)
        boxes = sample_crop_boxes(*case["frame_hw"], tuple(case["scale"]), tuple(case["ratio"]), generator, 100_000)
        height, width = case["frame_hw"]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= height).all()
        assert (boxes[:, 1] + boxes[:, 3] <= width).all() and (boxes[:, 2:] > 0).all()
        ours = box_stats(boxes, case["frame_hw"], case["ratio"])
        # reference: the fixture's 20000 draws pooled with the original's 100000 calibration draws
        other = pooled[case["name"]]
        for key, value in ours.items():
            reference = (case["n"] * case["stats"][key] + other["n"] * other[key]) / (case["n"] + other["n"])
            assert value == pytest.approx(reference, abs=0.005), (case["name"], key)
    first_fit = sample_crop_boxes(256, 455, (0.4, 1.0), (3 / 4, 4 / 3), generator, 20_000, mode="first_fit")
    stats = box_stats(first_fit, [256, 455], [3 / 4, 4 / 3])
    assert stats["distorted_share"] < 0.04 and stats["mean_area_fraction"] < 0.53  # ours: boxes within ratio


def test_colour_ops_and_chains_match_the_original():
    fixture = load("colour.pt")
    clip = fixture["clip"]
    ops = {"brightness": adjust_brightness, "contrast": adjust_contrast, "saturation": adjust_saturation}
    for case in fixture["ops"]:
        before = clip.clone()
        out = grayscale(clip) if case["op"] == "grayscale" else ops[case["op"]](clip, case["factor"])
        torch.testing.assert_close(out, case["output"], atol=1e-5, rtol=0, msg=case["name"])
        assert torch.equal(clip, before)  # not in place
    assert adjust_contrast(clip, 1.3).min() < 0 and adjust_contrast(clip, 1.3, mode="rgb").min() == 0
    for chain in fixture["chains"]:
        x = clip
        for step in chain["steps"]:
            x = x.flip(-1) if step["op"] == "flip" else (
                grayscale(x) if step["op"] == "grayscale" else ops[step["op"]](x, step["factor"]))
            torch.testing.assert_close(x, step["output"], atol=1e-5, rtol=0, msg=f"{chain['name']}: {step['op']}")
        torch.testing.assert_close(x, chain["output"], atol=1e-5, rtol=0)


def test_float_bicubic_resize_matches_the_original():
    for case in load("resize.pt")["cases"]:
        torch.testing.assert_close(resize_crop(case["input"], case["size"]), case["output"], atol=1e-5, rtol=0)


def test_pretraining_frame_windows_match_the_original():
    sampler = MultiViewSampler()
    for case in load("pretrain_frames.pt")["cases"]:
        span = window_span(case["fps"], *DECODER_WINDOW)
        first, count = decoded_window(case["num_frames"], span, case["window_start"])
        assert (first, count) == (case["first_decoded"], case["num_decoded"])
        views = sampler.frame_indices(count, torch.Generator(), local_starts=case["local_starts"])
        assert [[first + i for i in view] for view in views] == [v.tolist() for v in case["views"]]
    generator = torch.Generator().manual_seed(0)
    windows = [sampler.clip_window(1000, 30.0, generator) for _ in range(50)]
    assert all(count == 256 and 0 <= first <= 744 for first, count in windows) and len(set(windows)) > 40
    assert sampler.clip_window(200, 30.0, generator) == (0, 200)


def test_polypdiag_indices_and_test_view_match_the_original():
    fixture = load("polypdiag.pt")
    for case in fixture["sampler"]:
        indices = original_window(case["num_frames"], case["fps"], start=case["start"],
                                  pts_per_frame=fixture["pts_per_frame"])
        assert indices == case["indices"].tolist(), case
    assert original_window(2000, 30.0, start=1234.0001) == [1234 + k for k in (0, 36, 72, 109, 145, 182, 218, 255)]
    assert original_window(300, 30.0, start=21.0009)[0] == 21 and original_window(300, 30.0, start=21.01)[0] == 22
    view = original_view(224, train=False)
    for case in fixture["views"]:
        out = view(case["input_uint8"].permute(0, 3, 1, 2).contiguous())["video"]
        torch.testing.assert_close(out, case["output"], atol=1e-5, rtol=0)
        assert math.floor(max(case["frame_hw"]) / min(case["frame_hw"]) * 224) == max(case["resized_hw"])


def test_cvc_masks_exactly_and_frames_match_the_original():
    from endofm.config import load_config
    from endofm.data.transforms import resize_mask
    from endofm.tasks.segment import SegmentConfig, segment_transforms

    config = load_config(SegmentConfig, Path(__file__).resolve().parents[2] / "endofm" / "configs" / "finetune"
                         / "segment_original.yaml")
    threshold = config.data.mask_threshold
    _, evaluate = segment_transforms(config.data)
    for case in load("masks.pt")["cases"]:
        labels = (case["mask"] >= threshold).to(torch.uint8)
        assert torch.equal(resize_mask(labels, (256, 256)), case["outputs"]["256"]["label"]), case["name"]
        out = evaluate(case["image_rgb"].permute(0, 3, 1, 2).contiguous(), mask=labels)
        assert torch.equal(out["mask"], case["outputs"]["224"]["label"].long()), case["name"]
        torch.testing.assert_close(out["video"].transpose(0, 1), case["outputs"]["224"]["image"], atol=1e-5, rtol=0)
        if case["grey_levels"]:  # grey levels 128..254 inside the polyp are background to the original
            assert not torch.equal(resize_mask((case["mask"] > 127).to(torch.uint8), (224, 224)),
                                   case["outputs"]["224"]["label"])
    # torch's nearest samples other source pixels
    mask = load("masks.pt")["cases"][0]["mask"][:1]
    torch_nearest = torch.nn.functional.interpolate(mask[None].float(), size=(224, 224), mode="nearest")[0].byte()
    assert not torch.equal(torch_nearest, resize_mask(mask, (224, 224)))
