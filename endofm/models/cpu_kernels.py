"""CPU kernels of the transformer's layers: row-chunked MLP, and attention with backwards written in place.

:mod:`endofm.models.layers` says what the model computes; this module says how on a CPU, where eager PyTorch
leaves memory and copies on the table. Each function here computes the same values and gradients as the plain
PyTorch expression named in its docstring (tested against it in float64):

- :func:`mlp`: ``fc2(gelu(fc1(x))) + residual`` in row chunks of at most :data:`MLP_CHUNK_BYTES`, with the GELU
  in place and, in training, recomputed in backward instead of stored (less activation memory);
- :func:`flash_attention`: SDPA's CPU flash kernel with a backward that writes the q, k and v gradients straight
  into the layout of the ``qkv`` linear's output;
- :func:`math_attention`: ``softmax(q k^T * scale) v`` with the same in-place backward;
- :func:`deform_conv`: the STFT detector's deformable convolution, ``torchvision.ops.deform_conv2d``'s values
  from ``grid_sample`` and one matrix product per frame (``benchmarks/deform_conv.py`` compares the two).

One switch, :data:`ENABLED` (or the :func:`enabled` context manager), turns them all off; each also stands
aside where its private operators are missing in the installed torch, under ``torch.compile``, autocast, on
other devices and dtypes. The layers then run the plain PyTorch expression.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

ENABLED = True
"""Whether the layers use this module's kernels where they apply (:func:`enabled` sets it for a block)."""

MLP_CHUNK_BYTES = 16 << 20
"""Largest GELU activation the CPU MLP makes at once. The hidden layer is 4 x the width of a token, so made
whole it is the largest temporary of a block; in row chunks no temporary exceeds the 32 MiB up to which glibc
reuses freed blocks (:mod:`endofm.engine.cpu`) instead of mapping fresh zero-filled pages."""


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


HAS_FLASH_CPU = _has_op("_scaled_dot_product_flash_attention_for_cpu") and _has_op(
    "_scaled_dot_product_flash_attention_for_cpu_backward")
HAS_SOFTMAX_BACKWARD = hasattr(torch, "_softmax_backward_data")
HAS_GELU_IN_PLACE = _has_op("gelu_") and _has_op("gelu_backward")


@contextmanager
def enabled(value: bool) -> Iterator[None]:
    """Use (``True``) or bypass (``False``) this module's kernels inside the block."""
    global ENABLED
    previous, ENABLED = ENABLED, value
    try:
        yield
    finally:
        ENABLED = previous


def _eager_cpu_float32(x: torch.Tensor) -> bool:
    """Whether ``x`` is a float32 CPU tensor in eager mode without autocast, and the kernels are on."""
    return (
        ENABLED
        and not (torch.compiler.is_compiling() or torch.jit.is_scripting())
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


# --- MLP -----------------------------------------------------------------------------------------------------


def mlp_applies(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether :func:`mlp` runs for ``module`` (an ``Mlp``): eager float32 CPU and plain float32 linears
    (quantised layers keep their modules)."""
    return (
        HAS_GELU_IN_PLACE
        and _eager_cpu_float32(x)
        and type(module.fc1) is nn.Linear
        and type(module.fc2) is nn.Linear
        and module.fc1.weight.dtype == module.fc2.weight.dtype == torch.float32
    )


def _row_chunks(rows: int, width: int) -> list[slice]:
    """Equal row slices of a ``[rows, width]`` float32 activation, each at most :data:`MLP_CHUNK_BYTES`; one
    empty slice for no rows (so backward still writes zero gradients)."""
    count = -(-rows * width * 4 // MLP_CHUNK_BYTES)
    step = max(1, -(-rows // max(count, 1)))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)] or [slice(0, 0)]


def _fc2_output(
    rows: int, w2: torch.Tensor, b2: torch.Tensor | None, residual: torch.Tensor | None, like: torch.Tensor
) -> torch.Tensor:
    """The tensor ``fc2`` accumulates into: ``residual + b2`` (the bias and the residual in one pass), ``b2``
    alone, or zeros."""
    if residual is not None:
        residual = residual.reshape(rows, w2.shape[0])
        return residual + b2 if b2 is not None else residual.clone()
    if b2 is not None:
        return b2.expand(rows, w2.shape[0]).clone()
    return like.new_zeros(rows, w2.shape[0])


def _mlp_rows(
    x: torch.Tensor, params: tuple[torch.Tensor | None, ...], residual: torch.Tensor | None,
    hidden: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fc2(gelu(fc1(x))) (+ residual)`` without autograd, in the shape of ``x``, by row chunks: the GELU of
    each chunk of ``hidden`` (``fc1``'s whole output, where backward keeps it) or of the chunk's ``fc1`` output
    made there (GELU in place), accumulated by ``fc2`` into the output. ``params``: ``w1, b1, w2, b2``."""
    w1, b1, w2, b2 = params
    x2d = x.reshape(-1, x.shape[-1])
    out = _fc2_output(x2d.shape[0], w2, b2, residual, x2d)
    for rows in _row_chunks(x2d.shape[0], w1.shape[0]):
        act = F.gelu(hidden[rows]) if hidden is not None else torch.ops.aten.gelu_(F.linear(x2d[rows], w1, b1))
        out[rows].addmm_(act, w2.t())
    return out.view(*x.shape[:-1], w2.shape[0])


class _MlpRecomputingGelu(torch.autograd.Function):
    """``fc2(gelu(fc1(x))) (+ residual)`` keeping only ``x`` and ``fc1``'s output for backward; the GELU is
    recomputed there, chunk by chunk."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor | None,
        w2: torch.Tensor,
        b2: torch.Tensor | None,
        residual: torch.Tensor | None,
    ) -> torch.Tensor:
        hidden = F.linear(x.reshape(-1, x.shape[-1]), w1, b1)
        ctx.save_for_backward(x, hidden, w1, w2)
        ctx.has_bias = b1 is not None, b2 is not None
        return _mlp_rows(x, (w1, b1, w2, b2), residual, hidden)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, hidden, w1, w2 = ctx.saved_tensors
        grad2d = grad.reshape(-1, grad.shape[-1])
        x2d = x.reshape(-1, x.shape[-1])
        grad_x, grad_w1, grad_w2 = torch.empty_like(x2d), torch.empty_like(w1), torch.empty_like(w2)
        grad_b1 = None
        for index, rows in enumerate(_row_chunks(*hidden.shape)):
            accumulate = 1.0 if index else 0.0  # beta 0: the empty tensor's values are ignored
            grad_w2.addmm_(grad2d[rows].t(), F.gelu(hidden[rows]), beta=accumulate)
            grad_hidden = grad2d[rows].mm(w2)
            torch.ops.aten.gelu_backward.grad_input(grad_hidden, hidden[rows], grad_input=grad_hidden)
            grad_w1.addmm_(grad_hidden.t(), x2d[rows], beta=accumulate)
            torch.mm(grad_hidden, w1, out=grad_x[rows])
            if ctx.has_bias[0]:
                grad_b1 = grad_hidden.sum(0) if grad_b1 is None else grad_b1.add_(grad_hidden.sum(0))
        grad_b2 = grad2d.sum(0) if ctx.has_bias[1] else None
        return grad_x.view(x.shape), grad_w1, grad_b1, grad_w2, grad_b2, grad if ctx.needs_input_grad[5] else None


def mlp(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``fc2(gelu(fc1(x))) (+ residual)`` in row chunks; with gradients through :class:`_MlpRecomputingGelu`."""
    params = (fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, *params)):
        return _MlpRecomputingGelu.apply(x, *params, residual)
    return _mlp_rows(x, params, residual)


# --- attention -----------------------------------------------------------------------------------------------


def flash_applies(qkv: torch.Tensor, dropout: float) -> bool:
    """Whether :func:`flash_attention` replaces ``scaled_dot_product_attention``: CPU training in float32
    without attention dropout or autocast, with the flash kernel enabled (the kernel ``sdpa`` picks there)."""
    return (
        HAS_FLASH_CPU
        and torch.is_grad_enabled()
        and qkv.requires_grad
        and _eager_cpu_float32(qkv)
        and dropout == 0.0
        and torch.backends.cuda.flash_sdp_enabled()
    )


class _FlashAttentionCPU(torch.autograd.Function):
    """SDPA's CPU flash kernel on stacked heads ``qkv [3, batch, heads, L, head_dim]`` (any strides), with a
    backward that writes the q, k and v gradients into one buffer laid out as ``qkv`` (autograd's own would
    stack them, then copy the stack into the linear's layout)."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor) -> torch.Tensor:
        out, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(*qkv.unbind(0))
        ctx.save_for_backward(qkv, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        qkv, out, logsumexp = ctx.saved_tensors
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad, *qkv.unbind(0), out, logsumexp, 0.0, False)
        grad_qkv = torch.empty_like(qkv)  # keeps qkv's strides: the linear's output layout
        for slot, part in zip(grad_qkv.unbind(0), grads, strict=True):
            slot.copy_(part)
        return grad_qkv


def flash_attention(qkv: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention(*qkv.unbind(0))`` through :class:`_FlashAttentionCPU`."""
    return _FlashAttentionCPU.apply(qkv)


def math_applies() -> bool:
    """Whether :func:`math_attention` replaces the explicit ``softmax(q k^T * scale) v`` of the ``math`` path."""
    return ENABLED and HAS_SOFTMAX_BACKWARD and not torch.compiler.is_compiling()


def _attend_math(qkv: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``softmax(q k^T * scale) v`` of stacked heads ``qkv [3, batch, heads, L, head_dim]`` (any strides).

    Returns ``(out [batch, heads, L, head_dim], qkv as contiguous [3, batch * heads, L, head_dim], weights)``:
    one copy brings q, k and v into batched-matmul layout and the scale rides in the GEMM (``alpha``).
    """
    _, batch, heads, length, head_dim = qkv.shape
    packed = qkv.contiguous().view(3, batch * heads, length, head_dim)
    q, k, v = packed.unbind(0)
    scores = torch.baddbmm(q.new_empty(batch * heads, length, length), q, k.transpose(1, 2), beta=0, alpha=scale)
    weights = scores.softmax(dim=-1)
    return torch.bmm(weights, v).view(batch, heads, length, head_dim), packed, weights


class _MathAttention(torch.autograd.Function):
    """:func:`_attend_math` with a backward that writes the q, k and v gradients into one stacked buffer, each
    one batched GEMM straight into its slot."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, scale: float) -> torch.Tensor:
        out, packed, weights = _attend_math(qkv, scale)
        ctx.save_for_backward(packed, weights)
        ctx.scale, ctx.heads_shape = scale, qkv.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        packed, weights = ctx.saved_tensors
        _, batch, heads, length, head_dim = ctx.heads_shape
        q, k, v = packed.unbind(0)
        grad_out = grad.reshape(batch * heads, length, head_dim)
        grad_qkv = torch.empty_like(packed)
        grad_qkv[2].baddbmm_(weights.transpose(1, 2), grad_out, beta=0)
        grad_scores = torch._softmax_backward_data(grad_out.bmm(v.transpose(1, 2)), weights, -1, weights.dtype)
        grad_qkv[0].baddbmm_(grad_scores, k, beta=0, alpha=ctx.scale)
        grad_qkv[1].baddbmm_(grad_scores.transpose(1, 2), q, beta=0, alpha=ctx.scale)
        return grad_qkv.view(ctx.heads_shape), None


def math_attention(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` of stacked heads, ``[batch, heads, L, head_dim]``."""
    if torch.is_grad_enabled() and qkv.requires_grad:
        return _MathAttention.apply(qkv, scale)
    return _attend_math(qkv, scale)[0]


# --- deformable convolution ----------------------------------------------------------------------------------


def deform_conv_applies(x: torch.Tensor, offset: torch.Tensor) -> bool:
    """Whether :func:`deform_conv` replaces ``torchvision.ops.deform_conv2d``: eager float32 CPU, offsets at
    the map's size, maps at least two pixels on each side (``grid_sample``'s corners)."""
    return _eager_cpu_float32(x) and offset.shape[-2:] == x.shape[-2:] and min(x.shape[-2:]) >= 2


def _sampling_grid(shift: torch.Tensor, kernel: tuple[int, int], padding: int, dtype: torch.dtype) -> torch.Tensor:
    """Where each tap of a deformable convolution samples, as ``grid_sample`` coordinates (``align_corners=True``):
    offsets ``[..., taps, 2, H, W]`` (y then x, per output position) -> ``[..., taps, H, W, 2]`` (x then y)."""
    kh, kw = kernel
    height, width = shift.shape[-2:]
    tap_y, tap_x = torch.meshgrid(torch.arange(kh, dtype=dtype), torch.arange(kw, dtype=dtype), indexing="ij")
    pos_y, pos_x = torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij")
    base_y = (pos_y - padding).view(1, height, width) + tap_y.reshape(kh * kw, 1, 1)
    base_x = (pos_x - padding).view(1, height, width) + tap_x.reshape(kh * kw, 1, 1)
    return torch.stack(((base_x + shift[..., 1, :, :]) * (2 / (width - 1)) - 1,
                        (base_y + shift[..., 0, :, :]) * (2 / (height - 1)) - 1), dim=-1)


def deform_conv(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d(x, offset, weight, padding=padding)`` (stride 1, no bias, no mask):
    each tap's samples come from ``grid_sample`` (``align_corners=True``, zero padding: the same bilinear
    weights and border rule), then one matrix product per frame."""
    n, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    taps = kh * kw
    groups = offset.shape[1] // (2 * taps)
    columns = weight.reshape(out_channels, channels * taps)
    outputs = []
    for frame in range(n):
        grid = _sampling_grid(offset[frame].view(groups, taps, 2, height, width), (kh, kw), padding, x.dtype)
        sampled = F.grid_sample(x[frame].view(groups, channels // groups, height, width),
                                grid.view(groups, taps * height, width, 2), mode="bilinear", padding_mode="zeros",
                                align_corners=True)
        outputs.append(columns @ sampled.reshape(channels * taps, height * width))
    return torch.stack(outputs).view(n, out_channels, height, width)


def deform_conv_batched(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """:func:`deform_conv` with every frame in one ``grid_sample`` and one batched matrix product: the form an
    ONNX export takes (a traced loop over frames would repeat the graph per frame). Maps of at least two
    pixels on each side."""
    n, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    taps = kh * kw
    groups = offset.shape[1] // (2 * taps)
    grid = _sampling_grid(offset.view(n, groups, taps, 2, height, width), (kh, kw), padding, x.dtype)
    sampled = F.grid_sample(x.reshape(n * groups, channels // groups, height, width),
                            grid.reshape(n * groups, taps * height, width, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=True)
    columns = weight.reshape(out_channels, channels * taps)
    return (columns @ sampled.reshape(n, channels * taps, height * width)).view(n, out_channels, height, width)
