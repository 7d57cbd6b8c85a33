"""The benchmarks' baseline (a re-statement of the original module structure) computes what our backbone does."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from endofm import InputError, build_model, load_checkpoint
from tests.conftest import PARITY_DIR, REPO_ROOT


def _original_module():
    path = REPO_ROOT / "benchmarks" / "original_reference.py"
    spec = importlib.util.spec_from_file_location("original_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pair():
    ours = build_model("endofm_vit_micro").eval()
    with torch.no_grad():
        for param in ours.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    original = _original_module().OriginalVisionTransformer(ours.config).eval()
    original.load_state_dict(ours.state_dict(), strict=True)
    return ours, original


@pytest.mark.parametrize("shape, impl", [((4, 64, 64), "sdpa"), ((2, 48, 80), "sdpa"), ((1, 32, 32), "sdpa"),
                                         ((3, 64, 48), "math")])
@torch.no_grad()
def test_same_state_dict_and_same_outputs(shape, impl):
    ours, original = _pair()
    ours.set_attention_impl(impl)
    video = torch.randn(2, 3, *shape)
    torch.testing.assert_close(original.forward_features(video), ours.forward_features(video), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(original(video), ours(video), atol=2e-5, rtol=1e-4)


def test_unknown_attention_impl_is_refused():
    with pytest.raises(InputError, match="unknown attention impl"):
        build_model("endofm_vit_micro").set_attention_impl("flash3")


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_same_gradients(impl):
    ours, original = _pair()
    ours.set_attention_impl(impl)
    video = torch.randn(2, 3, 4, 48, 48)
    grads = []
    for model in (ours.train(), original.train()):
        model.zero_grad()
        model(video).square().sum().backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.skipif(not (PARITY_DIR / "meta.json").exists(), reason="official parity fixtures not found")
@torch.no_grad()
def test_matches_outputs_of_the_original_code():
    heads = json.loads((PARITY_DIR / "meta.json").read_text())["num_heads"]
    backbone = load_checkpoint(PARITY_DIR / "official_pretrain_checkpoint.pth", num_heads=heads).backbone
    original = _original_module().OriginalVisionTransformer(backbone.config).eval()
    original.load_state_dict(backbone.state_dict(), strict=True)
    for case in torch.load(PARITY_DIR / "cases.pt", weights_only=True):
        tokens = original.forward_features(case["input"])
        assert float((tokens - case["tokens"]).abs().max()) < 1e-4
        assert float((tokens[:, 0] - case["cls"]).abs().max()) < 1e-4
