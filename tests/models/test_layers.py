"""The CPU kernels against plain PyTorch; the temporal branch's layout and stochastic depth."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from endofm.models import cpu_kernels
from endofm.models.layers import Attention, DividedSpaceTimeBlock, Mlp, mlp
from endofm.models.registry import build_model


def _largest_allocation(fn) -> int:
    """The largest block of CPU memory one operator allocated while ``fn`` ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        fn()
    return max(event.self_cpu_memory_usage for event in profile.events())


@pytest.mark.parametrize("with_residual", [True, False])
def test_cpu_mlp_runs_in_row_chunks_with_torchs_values_and_gradients(monkeypatch, with_residual):
    dim, hidden, rows = 16, 64, 2 * 37
    monkeypatch.setattr(cpu_kernels, "MLP_CHUNK_BYTES", 10 * hidden * 4)  # 8 chunks of at most 10 rows
    whole_hidden = rows * hidden * 4
    module = Mlp(dim, hidden)
    inputs = [torch.randn(2, 37, dim, requires_grad=True)]
    inputs += [torch.randn(2, 37, dim, requires_grad=True)] if with_residual else []
    grad = torch.randn(2, 37, dim)

    module64 = Mlp(dim, hidden).double()
    module64.load_state_dict(module.state_dict())
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    expected = module64.fc2(F.gelu(module64.fc1(inputs64[0])))
    expected = expected + inputs64[1] if with_residual else expected
    expected.backward(grad.double())

    with torch.no_grad():
        torch.testing.assert_close(mlp(inputs[0], module, *inputs[1:]).double(), expected, rtol=1e-5, atol=1e-6)
        assert _largest_allocation(lambda: mlp(inputs[0], module, *inputs[1:])) < whole_hidden

    out = mlp(inputs[0], module, *inputs[1:])
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    assert _largest_allocation(lambda: out.backward(grad)) < whole_hidden
    ours = [t.grad for t in inputs] + [p.grad for p in module.parameters()]
    reference = [t.grad for t in inputs64] + [p.grad for p in module64.parameters()]
    for got, want in zip(ours, reference, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_cpu_mlp_of_no_rows_gives_zero_gradients():
    module = Mlp(16, 64)
    x = torch.randn(0, 5, 16, requires_grad=True)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # fills uninitialised memory with NaN: an unwritten gradient shows
    try:
        mlp(x, module, torch.randn(0, 5, 16)).sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    for name, param in module.named_parameters():
        assert torch.equal(param.grad, torch.zeros_like(param)), name


def test_temporal_branch_drops_whole_position_sequences():
    """Stochastic depth of the temporal branch is per sample of its batch, a (clip, spatial position) sequence
    over all frames, as in the original; the CLS slots pass through unchanged."""
    torch.manual_seed(0)
    block = DividedSpaceTimeBlock(32, 4, drop_path_rate=0.5).train()
    torch.nn.init.zeros_(block.temporal_fc.bias)  # drop path acts before temporal_fc: a dropped sample gets its bias
    x = torch.randn(6, 3, 1 + 40, 32)
    with torch.no_grad():
        change = block._temporal(x) - x
    dropped = change.abs().amax(dim=(0, 3)) == 0  # [clips, tokens]
    assert torch.equal(change[:, :, 0], torch.zeros_like(change[:, :, 0]))
    patches = change[:, :, 1:].abs().amax(dim=3) == 0  # [frames, clips, patches]
    assert torch.equal(patches, dropped[None, :, 1:].expand_as(patches))
    assert 0 < int(dropped[:, 1:].sum()) < dropped[:, 1:].numel()


def test_temporal_branch_writes_its_attention_output_in_the_token_layout_without_a_copy():
    """The CPU flash kernel lays out its output as the query ``[frames, clips * tokens, heads, head_dim]``, the
    token layout: the temporal branch reads it as it is (a view), no re-arranging copy."""
    block = DividedSpaceTimeBlock(32, 4).eval()
    x = torch.randn(6, 3, 1 + 40, 32)
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        block._temporal(x)
    assert not [event.name for event in prof.events() if event.name in ("aten::clone", "aten::contiguous")]


def _training_step(model: torch.nn.Module, clips: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    out = model(clips)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_the_kernel_switch_gives_plain_pytorchs_values_and_gradients(impl):
    model = build_model("endofm_vit_micro").train()
    for module in model.modules():
        if isinstance(module, Attention):
            module.impl = impl
    clips = torch.randn(2, 3, 2, 32, 32)
    with cpu_kernels.enabled(False):
        plain_out, plain_grads = _training_step(model, clips)
    out, grads = _training_step(model, clips)
    torch.testing.assert_close(out, plain_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, plain_grads, strict=True):
        assert (got - want).norm() <= 1e-5 * want.norm()


def test_the_kernels_stand_aside_when_torch_lacks_their_private_operators(monkeypatch):
    """A torch without the private operators (a future release) runs the plain PyTorch expressions."""
    for flag in ("HAS_FLASH_CPU", "HAS_SOFTMAX_BACKWARD", "HAS_GELU_IN_PLACE"):
        monkeypatch.setattr(cpu_kernels, flag, False)
    model = build_model("endofm_vit_micro").train()
    called = []
    for name in ("mlp", "flash_attention", "math_attention"):
        monkeypatch.setattr(cpu_kernels, name, lambda *args, _name=name, **kw: called.append(_name))
    out, grads = _training_step(model, torch.randn(2, 3, 2, 32, 32))
    assert not called and out.isfinite().all() and all(g.isfinite().all() for g in grads)
