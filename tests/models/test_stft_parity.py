"""The STFT detector: parity with outputs of the original STFT code (../shared) and its contracts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from endofm.errors import CheckpointError, InputError
from endofm.models.backbone import BackboneConfig
from endofm.models.detection.stft import HEAD_OUTPUTS, STFTConfig, STFTDetector, deform_conv
from endofm.models.detection.stft_state import stft_from_state
from endofm.models.detection.transform import STFT_INPUT, resize_frames
from endofm.tasks.loading import load_finetuned
from tests.conftest import DOWNSTREAM_DIR

STFT_DIR = DOWNSTREAM_DIR / "stft"
TINY = STFTConfig(BackboneConfig(embed_dim=48, depth=1, num_heads=4, img_size=64, num_frames=4), out_channels=32,
                  num_convs=1)


def _shared() -> Path:
    if not (STFT_DIR / "kumc.pth").exists():
        pytest.skip(f"STFT fixtures not found at {STFT_DIR} (../shared is absent)")
    return STFT_DIR


def _input(frames: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """Frames as the original feeds them: resized, BGR 0-255 minus the Caffe mean, ``[N, 3, size, size]``."""
    return STFT_INPUT.normalize(resize_frames(frames, size)).transpose(0, 1)


def _close(actual: torch.Tensor, expected: torch.Tensor, relative: bool = False) -> float:
    """Largest absolute difference, relative to the largest expected magnitude when ``relative``."""
    diff = (actual - expected).abs().max().item()
    return diff / max(expected.abs().max().item(), 1.0) if relative else diff


def _match_one_to_one(got: dict, expected: dict) -> None:
    """Every expected detection has exactly one detection of the same label within tolerance."""
    assert got["boxes"].shape == expected["boxes"].shape
    cost = torch.cdist(got["boxes"].double(), expected["boxes"].double(), p=1).numpy()
    cost += 1e6 * (got["labels"][:, None] != expected["labels"][None, :]).numpy()
    rows, cols = linear_sum_assignment(cost)
    scale = expected["boxes"].abs().max().item()
    assert (got["labels"][rows] == expected["labels"][cols]).all()
    assert (got["boxes"][rows] - expected["boxes"][cols]).abs().max().item() / scale < 1e-4
    assert (got["scores"][rows] - expected["scores"][cols]).abs().max().item() < 1e-5


@pytest.fixture(scope="module")
def original():
    directory = _shared()
    loaded = load_finetuned(directory / "kumc.pth", num_heads=4)
    return loaded.model, loaded.metadata, torch.load(directory / "cases.pt", weights_only=True)


def test_released_layout_loads_model_only(original):
    model, info, _ = original
    assert info["iteration"] == 96000 and info["ignored"] == ["iteration", "optimizer", "scheduler"]
    assert model.config.out_channels == 32 and model.config.num_convs == 1 and model.config.num_classes == 2
    assert model.config.backbone.embed_dim == 48 and model.config.backbone.num_heads == 4


@pytest.mark.parametrize("index", [0, 1])
def test_matches_the_original_code(original, index):
    model, _, cases = original
    case = cases["cases"][index]
    frames = _input(cases["video_uint8_rgb"][[f - 1 for f in case["frame_ids"]]], 96)
    assert torch.equal(frames, case["images"])  # the original's preprocessing of the same frames
    with torch.no_grad():
        features = model.frame_features(frames)
        out = model.detect(features, tuple(case["image_size"]))
        body = model.backbone.body.maps(frames[:1].unsqueeze(2))
    for got, expected in zip(body, case["body_features_key"], strict=True):
        assert _close(got, expected) < 1e-4
    for got, expected in zip(features, case["fpn_features"], strict=True):
        assert _close(got, expected) < 1e-4
    for name in (*HEAD_OUTPUTS, "pre_bbox", "locations"):
        relative = name in ("bbox_reg", "pre_bbox")
        for got, expected in zip(out[name], case[name], strict=True):
            assert got.shape == expected.shape and _close(got, expected, relative) < 1e-4, name
    _match_one_to_one(out["detections"], case["detections"])
    whole = model.forward_frames(frames)
    assert torch.equal(whole["detections"]["boxes"], out["detections"]["boxes"])


def _tiny_checkpoint(path: Path, seed: int = 0, prefix: str = "", **extra) -> STFTDetector:
    torch.manual_seed(seed)
    model = STFTDetector(TINY).eval()
    with torch.no_grad():  # move the biases off the focal-loss prior so that boxes pass the thresholds
        model.head.cls_logits.bias.zero_()
        model.head.bbox_pred.bias.fill_(1.0)
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"gamma": 0.5},
                "iteration": 7, **extra}, path)
    return model


def test_shapes_and_reference_order(tmp_path):
    model = _tiny_checkpoint(tmp_path / "tiny.pth")
    frames = torch.randn(5, 3, 64, 96)
    with torch.no_grad():
        out = model.forward_frames(frames)
        swapped = model.forward_frames(frames[[0, 4, 3, 2, 1]])
        keys_only = model.forward_frames(frames[[0, 0, 0, 0, 0]])
    sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    for level, (h, w) in enumerate(sizes):
        assert out["cls_logits"][level].shape == (1, 2, h, w)
        assert out["bbox_reg"][level].shape == (1, 4, h, w) and out["stft_bbox_reg"][level].shape == (1, 4, h, w)
        assert out["pre_bbox"][level].shape == (1, h * w, 4)
        # the attention over references does not depend on their order, but does on their content
        assert _close(swapped["stft_cls_logits"][level], out["stft_cls_logits"][level]) < 1e-5
    assert any(_close(keys_only["stft_cls_logits"][i], out["stft_cls_logits"][i]) > 1e-4 for i in range(5))
    det = out["detections"]
    assert det["boxes"].shape[1] == 4 and det["boxes"].shape[0] == det["scores"].shape[0] > 0
    assert det["labels"].min() >= 1 and det["labels"].max() <= 2
    assert (det["boxes"][:, 0::2] <= 95).all() and (det["boxes"][:, 1::2] <= 63).all() and (det["boxes"] >= 0).all()


def test_checkpoint_round_trip_and_module_prefix(tmp_path):
    model = _tiny_checkpoint(tmp_path / "plain.pth")
    _tiny_checkpoint(tmp_path / "ddp.pth", prefix="module.")
    frames = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_frames(frames)["cls_logits"][0]
        for name in ("plain.pth", "ddp.pth"):
            loaded = load_finetuned(tmp_path / name, num_heads=4)
            assert loaded.metadata["iteration"] == 7
            assert torch.equal(loaded.model.forward_frames(frames)["cls_logits"][0], expected)


def test_checkpoints_of_other_models_are_refused(tmp_path):
    from endofm.models.registry import build_model

    with pytest.raises(CheckpointError, match="not an STFT detector"):
        stft_from_state(build_model("endofm_vit_micro").state_dict(), where="vit.pth")
    from endofm.models.detection.fcos import build_detector

    fcos = build_detector(build_model("endofm_vit_micro"), out_channels=32, head_convs=1)
    with pytest.raises(CheckpointError, match="not an STFT detector"):
        stft_from_state(fcos.state_dict(), where="fcos.pth")
    model = _tiny_checkpoint(tmp_path / "tiny.pth")
    state = {k: v for k, v in model.state_dict().items() if k != "rpn.head.centerness.bias"}
    with pytest.raises(CheckpointError, match=r"missing keys \['rpn.head.centerness.bias'\]"):
        stft_from_state(state, num_heads=4)
    with pytest.raises(CheckpointError, match="num_heads=5 does not divide"):
        load_finetuned(tmp_path / "tiny.pth", num_heads=5)


def test_bad_frames_are_refused_before_work(tmp_path):
    model = STFTDetector(TINY).eval()
    for bad in (torch.randn(3, 64, 64), torch.randn(2, 1, 64, 64), torch.randn(2, 3, 16, 64), np.zeros((2, 3))):
        with pytest.raises(InputError):
            model.forward_frames(bad)
    with pytest.raises(InputError, match="uint8 RGB"):
        resize_frames(np.zeros((2, 8, 8, 3), dtype=np.float32))
    resized = _input(np.full((2, 30, 50, 3), (10, 20, 30), dtype=np.uint8), 64)
    assert resized.shape == (2, 3, 64, 64)
    assert torch.allclose(resized[:, :, 5, 5], torch.tensor([30 - 102.9801, 20 - 115.9465, 10 - 122.7717]))


@pytest.mark.parametrize("size", [(5, 7), (12, 12)])
def test_cpu_deformable_convolution_is_torchvision_s(size):
    """The CPU kernel (grid_sample + matmul) against torchvision's, offsets reaching outside the map; the
    kernel switch gives torchvision's op itself."""
    from torchvision.ops import deform_conv2d

    from endofm.models import cpu_kernels

    torch.manual_seed(0)
    x = torch.randn(3, 8, *size, requires_grad=True)
    weight = (torch.randn(6, 8, 3, 3) / 10).requires_grad_()
    offset = torch.randn(3, 4 * 18, *size) * 4
    assert cpu_kernels.deform_conv_applies(x, offset)
    with cpu_kernels.enabled(False):
        assert torch.equal(deform_conv(x, offset, weight, padding=1), deform_conv2d(x, offset, weight, padding=(1, 1)))
    got = deform_conv(x, offset, weight, padding=1)
    expected = deform_conv2d(x, offset, weight, padding=(1, 1))
    assert _close(got, expected) < 1e-5
    grads = torch.autograd.grad((got * expected.detach()).sum(), (x, weight))
    reference = torch.autograd.grad((expected * expected.detach()).sum(), (x, weight))
    for a, b in zip(grads, reference, strict=True):
        assert _close(a, b) < 1e-4
