"""The original KUMC detector as a task: released layout through load_finetuned, convert, video inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import endofm
from endofm.cli.main import main
from endofm.data.video import VideoReader
from endofm.errors import CheckpointError
from endofm.models.backbone import BackboneConfig
from endofm.models.detection.stft import STFTConfig, STFTDetector
from endofm.models.detection.transform import STFT_INPUT, resize_frames
from endofm.tasks.detect.stft_inference import detect_video, draw_references, window_ids
from tests.conftest import DOWNSTREAM_DIR

STFT_DIR = DOWNSTREAM_DIR / "stft"
TINY = STFTConfig(BackboneConfig(embed_dim=48, depth=1, num_heads=4, img_size=64, num_frames=4), out_channels=32,
                  num_convs=1)


def _released(path: Path, seed: int = 0) -> STFTDetector:
    """A tiny detector saved in the released layout, with biases that let boxes through the thresholds."""
    torch.manual_seed(seed)
    model = STFTDetector(TINY).eval()
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(2.0)
        model.head.dcn_cls_score.bias.fill_(2.0)
        model.head.bbox_pred.bias.fill_(2.0)
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"milestones": (64000, 80000, 88000)}, "iteration": 96000}, path)
    return model


def test_window_and_reference_rules():
    assert window_ids(1, 12) == [1] * 10 + list(range(2, 11))  # the video-start rule
    assert window_ids(2, 12) == [1] * 9 + list(range(2, 12))
    assert window_ids(12, 12) == list(range(3, 13)) + [12] * 9
    assert window_ids(2, 3) == [1] * 9 + [2, 3] + [3] * 8  # shorter than the window: clamped ids
    left, right = draw_references(np.random.RandomState(0))
    assert (left, right) == ([7, 2, 1, 4, 8], [13, 11, 17, 16, 18])  # numpy's draws for seed 0
    for _ in range(20):
        left, right = draw_references(np.random.RandomState(_))
        assert len(set(left)) == 5 and set(left) <= set(range(9)) and len(set(right)) == 5
        assert set(right) <= set(range(10, 19))


def test_released_layout_loads_and_converts(tmp_path):
    model = _released(tmp_path / "kumc.pth")
    loaded = endofm.load_finetuned(tmp_path / "kumc.pth", num_heads=4)
    assert loaded.task == "detect" and loaded.layout == "stft" and loaded.input_spec == STFT_INPUT
    assert loaded.input_spec.size == (640, 640) and loaded.input_spec.channel_order == "BGR"
    assert loaded.metadata["iteration"] == 96000
    frames = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_frames(frames)["detections"]
        assert torch.equal(loaded.model.forward_frames(frames)["detections"]["boxes"], expected["boxes"])
    assert main(["convert", str(tmp_path / "kumc.pth"), str(tmp_path / "folder"), "--num-heads", "4"]) == 0
    again = endofm.load_finetuned(tmp_path / "folder")
    assert again.task == "detect" and again.input_spec == STFT_INPUT and again.model.config == loaded.model.config
    with torch.no_grad():
        assert torch.equal(again.model.forward_frames(frames)["detections"]["scores"], expected["scores"])
    with pytest.raises(CheckpointError, match="num_heads=5 does not divide"):
        endofm.load_finetuned(tmp_path / "kumc.pth", num_heads=5)


def test_predict_video_with_the_released_layout(tmp_path, make_video):
    _released(tmp_path / "kumc.pth")
    video = make_video(tmp_path / "clip.mp4", num_frames=5, height=48, width=64)
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["predict", str(video), "--checkpoint", str(tmp_path / "kumc.pth"), "--num-heads", "4",
                     "--out", str(out), "--device", "cpu", "--quiet", "--score-threshold", "0.3"]) == 0
        outs.append(json.loads((out / "predictions.json").read_text()))
        assert (out / "annotated.mp4").stat().st_size > 0 and (out / "predictions.csv").exists()
    report = outs[0]
    assert report["task"] == "detect" and report["detector"] == "stft" and len(report["frames"]) == 5
    assert report["frames"] == outs[1]["frames"]  # seeded references: the same run twice
    boxes = [b for f in report["frames"] for b in f["boxes"]]
    assert boxes and all(0 <= b["box"][0] <= 64 and 0 <= b["box"][3] <= 48 and b["score"] >= 0.3 for b in boxes)
    assert {b["label"] for b in boxes} <= {"adenomatous", "hyperplastic"}
    # 5 frames, shorter than the window: references are clamped frame indices
    assert all(0 <= r <= 4 and len(f["reference_frames"]) == 10 for f in report["frames"]
               for r in f["reference_frames"])


def test_video_path_matches_the_original(tmp_path):
    if not (STFT_DIR / "cases.pt").exists():
        pytest.skip(f"STFT fixtures not found at {STFT_DIR} (../shared is absent)")
    cases = torch.load(STFT_DIR / "cases.pt", weights_only=True)
    video = cases["video_uint8_rgb"].numpy()
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(video, start=1):
        Image.fromarray(frame).save(folder / f"{i}.png")
    loaded = endofm.load_finetuned(STFT_DIR / "kumc.pth", num_heads=4)
    reader = VideoReader(folder)
    read_count = []

    def read(ids: list[int]) -> torch.Tensor:
        read_count.extend(ids)
        return STFT_INPUT.normalize(resize_frames(reader.read([i - 1 for i in ids]), 96)).transpose(0, 1)

    results = detect_video(loaded.model, read, len(reader), seed=0)  # the fixture drew frame 1's references
    case = cases["cases"][0]                                         # with numpy seeded 0
    assert results[0]["frame_ids"] == case["frame_ids"]
    assert window_ids(2, 12) == cases["cases"][1]["window_frame_ids"]
    expected = case["detections"]
    assert results[0]["boxes"].shape == expected["boxes"].shape
    assert torch.allclose(results[0]["boxes"], expected["boxes"], rtol=0, atol=1e-3)
    assert torch.allclose(results[0]["scores"], expected["scores"], atol=1e-5)
    assert torch.equal(results[0]["labels"], expected["labels"])
    assert sorted(read_count) == list(range(1, 13))  # every frame through the backbone exactly once
    assert len(results) == 12


def test_past_references_mirror_the_later_ones_and_never_look_ahead() -> None:
    model = STFTDetector(STFTConfig(BackboneConfig(embed_dim=48, depth=1, num_heads=4, img_size=160, num_frames=4),
                                    out_channels=32, num_convs=1)).eval()
    frames = torch.randn(22, 3, 160, 160)  # P7 of 2 x 2: one frame alone through the head's group norms

    def read(ids: list[int]) -> torch.Tensor:
        return frames[[i - 1 for i in ids]]

    original = detect_video(model, read, 22, seed=3)
    past = detect_video(model, read, 22, seed=3, references="past")
    assert any(max(r["frame_ids"][1:]) > r["frame_ids"][0] for r in original)
    checked = 0
    for frame, (before, after) in enumerate(zip(original, past, strict=True), start=1):
        assert after["frame_ids"][0] == frame and max(after["frame_ids"][1:]) <= frame
        offsets = [abs(i - frame) for i in before["frame_ids"][1:]]
        mirrored = [max(1, frame - offset) for offset in offsets]
        if 9 < frame <= 22 - 9:  # no clamping at either end: each reference as far, on the past side
            assert after["frame_ids"][1:] == mirrored
            checked = frame
    assert checked == 13
