"""Dynamic int8 quantisation for CPU deployment: same embeddings within a small angle, original untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from endofm import build_model
from endofm.cli.main import main
from endofm.models.quantize import quantize_int8


def _trained_like_model() -> nn.Module:
    model = build_model("endofm_vit_micro", embed_dim=128, num_heads=2).eval()
    with torch.no_grad():  # temporal_fc starts at zero in most blocks: make every layer count
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model


def test_quantised_copy_keeps_the_embeddings_and_leaves_the_model_alone():
    model = _trained_like_model()
    quantized = quantize_int8(model)
    assert all(type(m) is not nn.Linear for m in quantized.modules())
    assert type(model.blocks[0].mlp.fc1) is nn.Linear, "the original model is not modified"
    video = torch.randn(3, 3, 4, 64, 64)
    with torch.inference_mode():
        cosine = torch.nn.functional.cosine_similarity(quantized(video), model(video))
    assert float(cosine.min()) >= 0.99


def test_int8_refuses_a_model_off_the_cpu():
    model = build_model("endofm_vit_micro").to("meta")
    with pytest.raises(Exception, match="cpu"):
        quantize_int8(model)


def _embed_plain_and_with(flag: str, tmp_path, make_video) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features of ``endofm embed`` without and with ``flag`` on one video with a trained-like teacher, and the
    command line (without ``--out``) that made them."""
    path = tmp_path / "teacher.pth"
    torch.save({f"backbone.{k}": v for k, v in _trained_like_model().state_dict().items()}, path)
    video = make_video(tmp_path / "a.mp4", num_frames=12)
    args = ["embed", str(video), "--checkpoint", str(path), "--frames", "4", "--size", "48", "--window", "6", "--quiet"]
    features = []
    for extra in ([], [flag]):
        out = tmp_path / f"f{len(extra)}.npz"
        assert main([*args, "--out", str(out), *extra]) == 0
        features.append(np.load(out)["features"])
    return features[0], features[1], args


def test_embed_int8_flag(tmp_path, make_video):
    a, b, _ = _embed_plain_and_with("--int8", tmp_path, make_video)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert a.shape == b.shape == (2, 128) and cosine.min() >= 0.99


def test_embed_compile_flag_gives_the_eager_embeddings(tmp_path, make_video):
    """``--compile`` (frozen weights, inductor) embeds as the eager model does; with ``--int8`` it is refused."""
    torch._dynamo.reset()
    eager, compiled, args = _embed_plain_and_with("--compile", tmp_path, make_video)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the second run went through inductor
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-4)
    assert main([*args, "--out", str(tmp_path / "x.npz"), "--int8", "--compile"]) == 1
    assert not (tmp_path / "x.npz").exists()
