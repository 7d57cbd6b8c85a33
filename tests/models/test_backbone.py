"""The backbone against an independent, loop-based re-statement of the reference architecture."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from endofm import InputError, build_model
from endofm.models import BackboneConfig, EndoFMBackbone


def _attend(x: torch.Tensor, attn_module, heads: int) -> torch.Tensor:
    """Plain multi-head attention from the qkv/proj weights: softmax(q k^T / sqrt(d)) v."""
    n, d = x.shape
    qkv = F.linear(x, attn_module.qkv.weight, attn_module.qkv.bias).reshape(n, 3, heads, d // heads)
    q, k, v = qkv[:, 0].transpose(0, 1), qkv[:, 1].transpose(0, 1), qkv[:, 2].transpose(0, 1)
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d // heads), dim=-1)
    out = (weights @ v).transpose(0, 1).reshape(n, d)
    return F.linear(out, attn_module.proj.weight, attn_module.proj.bias)


def reference_forward(model: EndoFMBackbone, video: torch.Tensor) -> torch.Tensor:
    """All final tokens of one clip ``[3, T, H, W]``, computed token by token as the reference doc states."""
    cfg = model.config
    p, d, heads = cfg.patch_size, cfg.embed_dim, cfg.num_heads
    _, frames, height, width = video.shape
    h, w = height // p, width // p
    patches = torch.stack([model.patch_embed.proj(video[:, t][None])[0] for t in range(frames)])  # T, D, h, w
    grid = model.pos_embed[0, 1:].T.reshape(1, d, *cfg.grid)
    pos = F.interpolate(grid, size=(h, w), mode="nearest")[0]  # D, h, w
    time = F.interpolate(model.time_embed.transpose(1, 2), size=frames, mode="nearest")[0]  # D, T
    tokens = {}
    for i in range(h):
        for j in range(w):
            for t in range(frames):
                tokens[i, j, t] = patches[t, :, i, j] + pos[:, i, j] + time[:, t]
    cls = model.cls_token[0, 0] + model.pos_embed[0, 0]
    for block in model.blocks:
        temporal = {}
        for i in range(h):
            for j in range(w):
                seq = torch.stack([tokens[i, j, t] for t in range(frames)])
                res = block.temporal_fc(_attend(block.temporal_norm1(seq), block.temporal_attn, heads))
                for t in range(frames):
                    temporal[i, j, t] = tokens[i, j, t] + res[t]
        cls_res = []
        new_tokens = {}
        for t in range(frames):
            seq = torch.stack([cls] + [temporal[i, j, t] for i in range(h) for j in range(w)])
            res = _attend(block.norm1(seq), block.attn, heads)
            cls_res.append(res[0])
            for n, (i, j) in enumerate((i, j) for i in range(h) for j in range(w)):
                new_tokens[i, j, t] = temporal[i, j, t] + res[1 + n]
        cls = cls + torch.stack(cls_res).mean(0)
        tokens = {key: tok + block.mlp(block.norm2(tok)) for key, tok in new_tokens.items()}
        cls = cls + block.mlp(block.norm2(cls))
    ordered = [cls] + [tokens[i, j, t] for i in range(h) for j in range(w) for t in range(frames)]
    return model.norm(torch.stack(ordered))


def _random_model(**overrides) -> EndoFMBackbone:
    model = build_model("endofm_vit_micro", **overrides).eval()
    with torch.no_grad():  # temporal_fc starts at zero in most blocks: make every path count
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.mark.parametrize("shape", [(4, 64, 64), (2, 48, 48), (6, 64, 64), (1, 64, 64), (3, 32, 80), (3, 80, 32)])
@torch.no_grad()
def test_matches_reference_at_any_grid_and_frame_count(shape):
    model = _random_model()
    video = torch.randn(2, 3, *shape)
    ours = model.forward_features(video)
    for b in range(2):
        torch.testing.assert_close(ours[b], reference_forward(model, video[b]), atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_three_views_of_the_output_agree():
    model = _random_model()
    video = torch.randn(2, 3, 3, 48, 80)
    tokens = model.forward_features(video)
    cls, patches = model.forward_tokens(video)
    assert patches.shape == (2, 3, 3, 5, 96)
    torch.testing.assert_close(model(video), tokens[:, 0])
    torch.testing.assert_close(cls, tokens[:, 0])
    # tokens are ordered (h w t): time is the fastest-varying index
    torch.testing.assert_close(tokens[:, 1:].reshape(2, 3, 5, 3, 96).permute(0, 3, 1, 2, 4), patches)


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_forward_computes_the_last_blocks_cls_alone_with_the_whole_blocks_values_and_gradients(impl):
    # float64: in float32 either way differs from exact arithmetic by up to 1e-3 of a gradient's norm here
    model = build_model("endofm_vit_micro", drop_path_rate=0.3).set_attention_impl(impl).double().train()
    video = torch.randn(2, 3, 3, 32, 48, dtype=torch.float64)
    results = []
    for embed in (model, lambda v: model.forward_tokens(v)[0]):  # the CLS of every token's computation
        model.zero_grad()
        torch.manual_seed(0)  # stochastic depth draws the same masks
        out = embed(video)
        out.square().sum().backward()
        results.append((out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    (cls_only, cls_grads), (whole, whole_grads) = results
    torch.testing.assert_close(cls_only, whole, rtol=1e-10, atol=1e-10)
    assert torch.count_nonzero(whole_grads["blocks.1.mlp.fc1.weight"]) > 0
    for name, grad in whole_grads.items():
        torch.testing.assert_close(cls_grads[name], grad, rtol=1e-9, atol=1e-12, msg=name)
    rows = []
    model.blocks[-1].mlp.fc1.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[:-1].numel()))
    with torch.inference_mode():
        model.eval()(video)
    assert rows == [2]  # the last MLP ran on the 2 CLS tokens, not on 3 frames x 7 patches of each clip


def test_cpu_attention_backward_writes_the_qkv_gradient_without_stacking():
    from endofm.models.layers import Attention

    attention = Attention(32, num_heads=4).train()
    x = torch.randn(3, 7, 32)
    grads, ops = [], []
    for backends in ([SDPBackend.FLASH_ATTENTION], [SDPBackend.MATH]):  # ours, then autograd's own
        attention.zero_grad()
        inputs = x.clone().requires_grad_()
        with sdpa_kernel(backends), torch.profiler.profile() as profile:
            attention(inputs).square().sum().backward()
        grads.append([inputs.grad, *(p.grad for p in attention.parameters())])
        ops.append({event.key for event in profile.key_averages()})
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops[0] and "aten::stack" not in ops[0]
    for ours, reference in zip(*grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_temporal_attention_mixes_frames_and_spatial_attention_mixes_positions():
    model = _random_model()
    video = torch.randn(1, 3, 4, 64, 64)
    changed = video.clone()
    changed[:, :, 0, :16, :16] += 1.0  # one patch of frame 0
    _, before = model.forward_tokens(video)
    _, after = model.forward_tokens(changed)
    moved = (after - before).abs().amax(dim=-1)[0]  # [T, h, w]
    assert moved[3, 3, 3] > 1e-4, "a patch of frame 0 must influence other frames and positions"


def test_released_architecture_has_the_published_parameter_count():
    model = build_model("endofm_vit_base")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(121.26e6, abs=0.01e6)
    assert [bool(b.temporal_fc.weight.detach().abs().sum() == 0) for b in model.blocks] == [False] + [True] * 11


def test_attention_maps_are_softmax_rows_of_the_cls_query():
    model = _random_model()
    attn = model.last_attention(torch.randn(2, 3, 2, 48, 64))
    assert attn.shape == (2, 2, 2, 13, 13)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 2, 13))


def test_stochastic_depth_is_random_in_training_and_off_in_eval():
    model = build_model("endofm_vit_micro", drop_path_rate=0.5)
    video = torch.randn(4, 3, 2, 32, 32)
    model.train()
    assert not torch.allclose(model(video), model(video))
    model.eval()
    torch.testing.assert_close(model(video), model(video))


def test_gradient_checkpointing_gives_the_same_gradients():
    video = torch.randn(2, 3, 2, 32, 32)
    model = _random_model().train()
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)(video).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.slow
def test_compiled_checkpointed_backbone_gives_the_eager_gradients():
    """``torch.compile`` (as ``model.compile`` does it) of a backbone with gradient checkpointing."""
    video = torch.randn(2, 3, 2, 32, 32)
    eager = _random_model().train()
    compiled = _random_model().train()
    compiled.load_state_dict(eager.state_dict())
    compiled.set_grad_checkpointing(True).compile(dynamic=False)
    for model in (eager, compiled):
        model(video).square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4, msg=name)


def test_gradient_checkpointing_of_the_first_blocks_only(monkeypatch):
    import endofm.models.backbone as backbone_module

    checkpointed = []

    def counting_checkpoint(run, *args, **kwargs):
        checkpointed.append(getattr(run, "__self__", run))  # a block, or the block of its forward_cls
        return torch.utils.checkpoint.checkpoint(run, *args, **kwargs)

    monkeypatch.setattr(backbone_module, "checkpoint", counting_checkpoint)
    model = build_model("endofm_vit_micro").train()
    video = torch.randn(1, 3, 2, 32, 32)
    for blocks, expected in ((1, model.blocks[:1]), (None, model.blocks), (0, [])):
        checkpointed.clear()
        model.set_grad_checkpointing(blocks=blocks)(video).sum().backward()
        assert checkpointed == list(expected)
    with pytest.raises(InputError, match="depth"):
        model.set_grad_checkpointing(blocks=len(model.blocks) + 1)


def test_gradient_checkpointing_recomputes_with_the_forward_attention_kernel():
    """A kernel chosen for the forward alone (here math; the backward would pick flash) must not break the
    recomputation, and the gradients stay those of the plain math forward."""
    video = torch.randn(2, 3, 2, 32, 32)
    model = _random_model().train()
    grads = []
    for enable in (False, True):
        model.zero_grad()
        with sdpa_kernel([SDPBackend.MATH]):
            out = model.set_grad_checkpointing(enable)(video)
        out.square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.randn(3, 4, 64, 64), "expected a video tensor"),
        (torch.randn(1, 1, 4, 64, 64), "3 colour channels"),
        (torch.randn(1, 3, 4, 8, 64), "smaller than one 16x16 patch"),
        (torch.randn(1, 3, 0, 64, 64), "empty"),
    ],
)
def test_bad_input_is_one_clear_error(bad, message):
    with pytest.raises(InputError, match=message):
        build_model("endofm_vit_micro")(bad)


def test_bad_config_names_the_field():
    with pytest.raises(InputError, match="num_heads"):
        BackboneConfig(embed_dim=96, num_heads=5)
    with pytest.raises(InputError, match="unknown backbone config keys"):
        build_model("endofm_vit_micro", heads=3)
    with pytest.raises(InputError, match="unknown model"):
        build_model("vit_huge")
