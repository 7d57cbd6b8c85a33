"""ONNX export checked by ONNX Runtime: the parity fixtures' models (../shared) through ONNX Runtime match
PyTorch and the original's outputs; the runtime path imports no PyTorch; wrong files get one clear error."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="the onnx extra (endofm[onnx]) is not installed")

from endofm.errors import ExportError, InputError  # noqa: E402
from endofm.export.onnx import export_onnx  # noqa: E402
from endofm.export.runtime import load_exported, stft_postprocess  # noqa: E402
from endofm.models.inputs import InputSpec  # noqa: E402
from endofm.stream.onnx_nets import onnx_predictor  # noqa: E402
from endofm.tasks.base import LoadedFinetuned  # noqa: E402
from endofm.tasks.loading import load_finetuned  # noqa: E402
from tests.conftest import DOWNSTREAM_DIR as DOWNSTREAM  # noqa: E402
from tests.conftest import PARITY_DIR as PARITY  # noqa: E402

TOLERANCE = 1e-4
HIDE_TORCH = """
import sys
from importlib.machinery import PathFinder
class NoTorch(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in ("torch", "torchvision") else PathFinder.find_spec(name, path, target)
sys.meta_path = [NoTorch if finder is PathFinder else finder for finder in sys.meta_path]
"""


def _fixture(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"parity fixtures not found at {path} (../shared is absent)")
    return path


def _diff(a: np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    b = b.numpy() if isinstance(b, torch.Tensor) else b
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


def test_polypdiag_classifier_and_its_backbone_match_the_original(tmp_path):
    checkpoint = _fixture(PARITY / "official_polypdiag_checkpoint.pth")
    case = torch.load(PARITY / "cases.pt", weights_only=True)[0]
    loaded = load_finetuned(checkpoint, num_heads=4)
    data = {**loaded.metadata["data"], "num_frames": 4, "size": 64}
    loaded = dataclasses.replace(loaded, input_spec=dataclasses.replace(loaded.input_spec, size=(64, 64), frames=4),
                                 metadata={**loaded.metadata, "data": data})
    (written,) = export_onnx(loaded, tmp_path / "polypdiag.onnx")
    info, net = load_exported(written)
    assert info["kind"] == "classify" and info["input"]["size"] == [64, 64]
    assert info["check"]["dynamic_axes"]["0"] == "batch"
    assert _diff(net(case["input"].numpy()), case["logits"]) < TOLERANCE  # a batch of 2: the batch axis is dynamic
    (backbone,) = export_onnx(loaded.model.backbone, tmp_path / "backbone.onnx")
    info, net = load_exported(backbone)
    assert info["kind"] == "backbone"
    assert _diff(net(case["input"].numpy()), case["cls"]) < TOLERANCE


def test_transunet_matches_the_original(tmp_path):
    checkpoint = _fixture(DOWNSTREAM / "transunet" / "cvc.pth")
    case = torch.load(DOWNSTREAM / "transunet" / "cases.pt", weights_only=True)[0]
    (written,) = export_onnx(checkpoint, tmp_path / "cvc.onnx", num_heads=4)
    info, net = load_exported(written)
    assert info["kind"] == "segment" and info["check"]["dynamic_axes"] == {"0": "batch", "2": "frames"}
    clip = case["input"].transpose(0, 1)[None]  # the original's [T, 3, H, W] as one clip
    assert _diff(net(clip.numpy())[0].transpose(1, 0, 2, 3), case["logits"]) < TOLERANCE


@pytest.fixture(scope="module")
def stft_export(tmp_path_factory):
    checkpoint = _fixture(DOWNSTREAM / "stft" / "kumc.pth")
    loaded = load_finetuned(checkpoint, num_heads=4)
    loaded = dataclasses.replace(loaded, input_spec=dataclasses.replace(loaded.input_spec, size=(96, 96)))
    out = tmp_path_factory.mktemp("stft") / "kumc.onnx"
    return loaded, export_onnx(loaded, out)


def test_stft_parts_and_detections_match_the_original(stft_export):
    loaded, written = stft_export
    assert [p.name for p in written] == ["kumc.onnx", "kumc.head.onnx"]
    cases = torch.load(DOWNSTREAM / "stft" / "cases.pt", weights_only=True)
    info, detector = load_exported(written[0])
    assert info["kind"] == "detect-frame" and info["head"] == "kumc.head.onnx"
    for case in cases["cases"]:
        images = case["images"].numpy()
        parts = [detector.frame(images[k : k + 1]) for k in range(images.shape[0])]  # frame by frame, queued
        outputs = detector.head(parts)
        for name in ("cls_logits", "centerness", "stft_cls_logits", "stft_bbox_reg", "pre_bbox"):
            for got, expected in zip(outputs[name], case[name], strict=True):
                scale = max(1.0, float(expected.abs().max())) if name == "pre_bbox" else 1.0
                assert _diff(got, expected) / scale < TOLERANCE, name
        found = stft_postprocess(outputs, tuple(case["image_size"]), info["metadata"]["postprocess"])
        expected = case["detections"]
        assert found["boxes"].shape == tuple(expected["boxes"].shape)
        order, target = np.lexsort(found["boxes"].T[::-1]), np.lexsort(expected["boxes"].numpy().T[::-1])
        assert _diff(found["boxes"][order], expected["boxes"][target]) / 96 < TOLERANCE
        assert _diff(found["scores"][order], expected["scores"][target]) < 1e-5
        assert (found["labels"][order] == expected["labels"].numpy()[target]).all()


def test_the_runtime_path_imports_no_torch(stft_export, tmp_path):
    """The exported detector on a stream of frames in a process where PyTorch cannot be imported: the same
    detections as in this process (whose parts match PyTorch's and the original's, above)."""
    _, written = stft_export
    video = torch.load(DOWNSTREAM / "stft" / "cases.pt", weights_only=True)["video_uint8_rgb"].numpy()[:4]
    np.save(tmp_path / "video.npy", video)
    script = HIDE_TORCH + f"""
import json, numpy as np
from endofm.stream import Stream
from endofm.stream.onnx_nets import onnx_predictor
predictor = onnx_predictor({str(written[0])!r}, score_threshold=0.05)
print(json.dumps([predictor.push(frame)[0] for frame in np.load({str(tmp_path / 'video.npy')!r})]))
assert "torch" not in sys.modules
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    predictor = onnx_predictor(written[0], score_threshold=0.05)
    expected = [predictor.push(frame)[0] for frame in video]
    assert json.loads(done.stdout) == json.loads(json.dumps(expected))
    assert sum(len(p["boxes"]) for p in expected) > 0 and expected[3]["reference_offsets"][0] < 0


def test_wrong_files_and_models_get_one_clear_error(tmp_path):
    from endofm.models.registry import build_model
    from endofm.tasks.predict import predict_video

    backbone = build_model("endofm_vit_micro", embed_dim=32, num_heads=1, depth=1).eval()
    (path,) = export_onnx(backbone, tmp_path / "backbone.onnx")
    with pytest.raises(ExportError, match="exported backbone .*not a fine-tuned model"):
        predict_video("unused.mp4", path, tmp_path / "out", runtime="onnxruntime")
    with pytest.raises(InputError, match="run it with --runtime onnxruntime"):
        predict_video("unused.mp4", path, tmp_path / "out")
    with pytest.raises(ExportError, match="add --embed"):
        onnx_predictor(path)
    with pytest.raises(InputError, match="already exist"):
        export_onnx(backbone, path)
    (tmp_path / "other.onnx").write_bytes(path.read_bytes().replace(b"endofm-onnx", b"endofm-xxxx"))
    with pytest.raises(ExportError, match="not made by endofm export"):
        load_exported(tmp_path / "other.onnx")
    fcos = LoadedFinetuned("detect", nn.Identity(), InputSpec(size=(64, 64), frames=None), "fcos", "endofm")
    with pytest.raises(ExportError, match="only the STFT detector exports"):
        export_onnx(fcos, tmp_path / "fcos.onnx")
    assert not (tmp_path / "fcos.onnx").exists()
