"""The CPU MLP's own code against torch's modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from endofm.models import layers
from endofm.models.layers import Mlp, mlp


def _largest_allocation(fn) -> int:
    """The largest block of CPU memory one operator allocated while ``fn`` ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        fn()
    return max(event.self_cpu_memory_usage for event in profile.events())


@pytest.mark.parametrize("with_residual", [True, False])
def test_cpu_mlp_runs_in_row_chunks_with_torchs_values_and_gradients(monkeypatch, with_residual):
    dim, hidden, rows = 16, 64, 2 * 37
    monkeypatch.setattr(layers, "MLP_CHUNK_BYTES", 10 * hidden * 4)  # 8 chunks of at most 10 rows
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
