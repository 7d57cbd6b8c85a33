"""Building blocks of the divided space-time transformer: attention, MLP, stochastic depth, the block.

Parameter names follow the original Endo-FM/TimeSformer code so its state dicts load without renaming.
The linear layers are plain ``nn.Linear`` calls (MKL's GEMM on CPU, as in the original), with residual adds
written into their outputs; a fused oneDNN GEMM epilogue (bias, GELU, residual) measured no faster on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_IMPLS = ("sdpa", "math")
"""Attention paths: ``sdpa`` (``scaled_dot_product_attention``: fused kernels, no layout copies) or ``math``
(explicit ``softmax(q k^T * scale) v``)."""


def drop_path(x: torch.Tensor, drop_prob: float, training: bool, dim: int = 0) -> torch.Tensor:
    """Stochastic depth: zero whole slices along ``dim`` (the sample dimension) with probability ``drop_prob``.

    Surviving slices are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask_shape = [1] * x.ndim
    mask_shape[dim] = x.shape[dim]
    mask = x.new_empty(mask_shape).bernoulli_(keep)
    return x * mask.div_(keep)


def _eager_cpu_float32(x: torch.Tensor) -> bool:
    """Whether ``x`` is a float32 CPU tensor in eager mode without autocast: where this module's own CPU code
    replaces torch's (compilers, other devices and autocast keep torch's)."""
    return (
        not (torch.compiler.is_compiling() or torch.jit.is_scripting())
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def _eager_cpu_float32_autograd(x: torch.Tensor) -> bool:
    """:func:`_eager_cpu_float32` with autograd on: where this module's own autograd functions replace torch's."""
    return torch.is_grad_enabled() and _eager_cpu_float32(x)


MLP_CHUNK_BYTES = 16 << 20
"""Largest GELU activation the CPU MLP makes at once. The hidden layer is 4 x the width of a token, so made
whole it is the largest temporary of a block: the released model's MLP on 8 clips of 8 x 224 made two of 155
MiB (the ``fc1`` output and its GELU). In row chunks, with the GELU in place, the growth of resident memory
over that forward went from 445 to 334 MiB at the same speed, and no temporary exceeds the 32 MiB up to which
glibc reuses freed blocks (:mod:`endofm.engine.cpu`) instead of mapping fresh zero-filled pages."""


def _plain_cpu_float32_mlp(x: torch.Tensor, module: Mlp) -> bool:
    """Whether :func:`mlp` runs this module's own row-chunked CPU code: :func:`_eager_cpu_float32` and plain
    float32 linears (quantised layers keep their modules)."""
    return (
        _eager_cpu_float32(x)
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
    """The tensor ``fc2`` accumulates into: ``residual + b2`` (so the bias and the residual cost one pass, not
    a bias copy and an add), ``b2`` alone, or zeros."""
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
    """``fc2(gelu(fc1(x))) (+ residual)`` keeping only ``x`` and ``fc1``'s output for backward.

    The GELU output (4 x the width of a token) is recomputed in backward instead of stored: a third less
    activation memory for the MLP at the cost of one elementwise pass. Both passes run the GELU and what
    follows it in row chunks (:data:`MLP_CHUNK_BYTES`), so no temporary of that width is made whole.
    """

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


def mlp(x: torch.Tensor, module: Mlp, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``module(x) (+ residual)``. On CPU in float32 in row chunks (:data:`MLP_CHUNK_BYTES`), and in training
    through :class:`_MlpRecomputingGelu` (a third less activation memory)."""
    if not _plain_cpu_float32_mlp(x, module):
        return linear(linear(x, module.fc1, gelu=True), module.fc2, residual=residual)
    params = (module.fc1.weight, module.fc1.bias, module.fc2.weight, module.fc2.bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, *params)):
        return _MlpRecomputingGelu.apply(x, *params, residual)
    return _mlp_rows(x, params, residual)


def linear(
    x: torch.Tensor, layer: nn.Module, gelu: bool = False, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``layer(x)``, then GELU when ``gelu``, then ``+ residual`` when given (same shape as the output), added
    in place into the layer's fresh output: no third tensor."""
    out = layer(x)
    out = F.gelu(out) if gelu else out
    return out if residual is None else out.add_(residual)


class DropPath(nn.Module):
    """Module form of :func:`drop_path`."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training, dim)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def _merge_heads(out: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """Attention output ``[batch, heads, L, head_dim]`` as ``[batch, L, heads * head_dim]`` or, not
    ``batch_first``, ``[L, batch, heads * head_dim]``: a view where ``out`` is laid out so (the CPU flash kernel
    lays its output out as the query), else a copy."""
    batch, heads, length, head_dim = out.shape
    if batch_first:
        return out.transpose(1, 2).reshape(batch, length, heads * head_dim)
    return out.permute(2, 0, 1, 3).reshape(length, batch, heads * head_dim)


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
    """:func:`_attend_math` with a backward that writes the q, k and v gradients into one stacked buffer.

    Autograd's own backward of the same ops would stack three separate gradients (a concatenation) and copy
    each strided view; here every gradient is one batched GEMM straight into its slot.
    """

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


class _FlashAttentionCPU(torch.autograd.Function):
    """SDPA's CPU flash kernel on stacked heads ``qkv [3, batch, heads, L, head_dim]`` (any strides), with a
    backward that writes the q, k and v gradients into one buffer laid out as ``qkv``.

    Autograd's own backward of ``F.scaled_dot_product_attention(*qkv.unbind(0))`` stacks the three gradients
    (a copy) and then copies the stack back into the layout of the ``qkv`` linear's output (a second copy);
    here each gradient is copied once, straight into place.
    """

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


def _fused_cpu_backward(qkv: torch.Tensor, dropout: float) -> bool:
    """Whether :meth:`Attention.attend` runs :class:`_FlashAttentionCPU`: CPU training without attention
    dropout or autocast, in float32, with the flash kernel enabled (the kernel ``sdpa`` picks there too)."""
    return (
        _eager_cpu_float32_autograd(qkv)
        and qkv.requires_grad
        and dropout == 0.0
        and torch.backends.cuda.flash_sdp_enabled()
    )


class Attention(nn.Module):
    """Multi-head self-attention with the original's ``qkv`` and ``proj`` layers.

    :meth:`attend` takes the heads stacked as ``qkv [3, batch, heads, L, head_dim]``, usually a strided view
    of a ``qkv`` output (:meth:`split_heads`), so callers split heads out without copying; ``impl`` picks the
    path (:data:`ATTENTION_IMPLS`).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = attn_drop
        self.impl = "sdpa"
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, qkv: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
        """The heads ``[3, batch, heads, L, head_dim]`` of a ``qkv`` output ``[a, b, 3 * dim]``, a view.

        ``batch_first``: ``a`` is the batch and ``b`` the sequence; otherwise attention runs across ``a``.
        """
        first, second = qkv.shape[:2]
        heads = qkv.view(first, second, 3, self.num_heads, self.head_dim)
        return heads.permute(2, 0, 3, 1, 4) if batch_first else heads.permute(2, 1, 3, 0, 4)

    def attend(
        self, qkv: torch.Tensor, need_weights: bool = False, batch_first: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(out [batch, L, heads * head_dim], weights [batch, heads, L, L] or None)`` of stacked heads; not
        ``batch_first``, ``out`` is ``[L, batch, heads * head_dim]`` (:func:`_merge_heads`)."""
        dropout = self.attn_drop if self.training else 0.0
        weights = None
        if self.impl == "sdpa" and not need_weights:
            if _fused_cpu_backward(qkv, dropout):
                out = _FlashAttentionCPU.apply(qkv)
            else:
                out = F.scaled_dot_product_attention(*qkv.unbind(0), dropout_p=dropout)
        elif need_weights or dropout:
            out, weights = self._attend_explicit(*qkv.unbind(0), dropout)
        elif torch.is_grad_enabled() and qkv.requires_grad:
            out = _MathAttention.apply(qkv, self.scale)
        else:
            out = _attend_math(qkv, self.scale)[0]
        return _merge_heads(out, batch_first), weights

    def attend_first(self, qkv: torch.Tensor) -> torch.Tensor:
        """:meth:`attend` for the first query of every sequence alone (over all keys and values):
        ``out [batch, 1, heads * head_dim]``."""
        q, k, v = qkv.unbind(0)
        q = q[:, :, :1]
        dropout = self.attn_drop if self.training else 0.0
        if self.impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            out, _ = self._attend_explicit(q, k, v, dropout)
        return _merge_heads(out)

    def _attend_explicit(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(softmax(q k^T * scale) v, the softmax maps)`` written out, with attention dropout on the maps."""
        weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return F.dropout(weights, dropout, self.training) @ v, weights

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Self-attention over ``x [B, N, D]``; with ``return_attention`` also the maps ``[B, heads, N, N]``."""
        out, weights = self.attend(self.split_heads(linear(x, self.qkv)), need_weights=return_attention)
        out = linear(out, self.proj)
        return (out, weights) if return_attention else out


class Mlp(nn.Module):
    """Two linear layers with a GELU between them."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mlp(x, self)


class DividedSpaceTimeBlock(nn.Module):
    """One transformer block: temporal attention, then spatial attention, then the MLP.

    Tokens are ``x [T, B, 1 + S, D]``: for every frame ``t`` and clip ``b``, slot 0 holds the clip's CLS token
    (the same in every frame) and slots ``1..S`` the frame's patches in row-major order. In this layout both
    attentions read their heads straight out of the ``qkv`` output, the temporal attention's output comes back
    in the token layout (the CPU flash kernel lays it out as its query), the spatial sequence ``[CLS, patches of
    frame t]`` is stored as it is, and no token is re-arranged, repeated or concatenated:

    - temporal: each spatial position attends over its ``T`` frames; the result passes ``temporal_fc``
      (CLS slots are computed along and reset: the CLS has no temporal branch);
    - spatial: each frame attends over ``[CLS, its S patches]``; the CLS result is averaged over frames;
    - MLP on every token. Stochastic depth wraps the three branches, per sample of each branch's batch
      (spatial positions, frames, clips), as in the original.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        attn_drop: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop)
        self.temporal_norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop)
        self.temporal_fc = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _temporal(self, x: torch.Tensor) -> torch.Tensor:
        frames, batch, tokens, dim = x.shape
        flat = x.view(frames, batch * tokens, dim)
        qkv = linear(self.temporal_norm1(flat), self.temporal_attn.qkv)
        heads = self.temporal_attn.split_heads(qkv, batch_first=False)
        out, _ = self.temporal_attn.attend(heads, batch_first=False)
        out = linear(self.drop_path(linear(out, self.temporal_attn.proj), dim=1), self.temporal_fc, residual=flat)
        out = out.view(x.shape)
        out[:, :, 0] = x[:, :, 0]
        return out

    def _spatial_qkv(self, x: torch.Tensor) -> torch.Tensor:
        frames, batch, tokens, dim = x.shape
        qkv = linear(self.norm1(x.view(frames * batch, tokens, dim)), self.attn.qkv)
        return self.attn.split_heads(qkv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [T, B, 1 + S, D]`` to the block's output in the same layout."""
        frames, batch, tokens, dim = x.shape
        dropping = self.training and self.drop_path.drop_prob > 0
        x = self._temporal(x)
        out, _ = self.attn.attend(self._spatial_qkv(x))
        if dropping:
            x = x + self.drop_path(linear(out, self.attn.proj)).view(x.shape)
        else:
            x = linear(out, self.attn.proj, residual=x.view(frames * batch, tokens, dim)).view(x.shape)
        # the CLS slots of x were equal over frames, so their mean is the original's CLS + mean of the CLS results
        x[:, :, 0] = x[:, :, 0].mean(dim=0)
        flat = x.view(frames, batch * tokens, dim)
        if dropping:
            return x + self.drop_path(mlp(self.norm2(flat), self.mlp).view(x.shape), dim=1)
        return mlp(self.norm2(flat), self.mlp, residual=flat).view(x.shape)

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """The block's CLS output alone, ``forward(x)[0, :, 0]`` as ``[B, D]``, for a last block whose patch
        outputs nothing reads (the clip embedding is the CLS token).

        The temporal branch and the spatial keys and values are computed for every token as in :meth:`forward`;
        the spatial attention only for the CLS queries, the projection and the MLP only for the CLS. Stochastic
        depth draws the same random numbers as :meth:`forward`, so training gets the same gradients.
        """
        frames, batch, _, dim = x.shape
        x = self._temporal(x)
        res = self.drop_path(linear(self.attn.attend_first(self._spatial_qkv(x)), self.attn.proj))
        cls = (x[:, :, 0] + res.view(frames, batch, dim)).mean(dim=0)
        if self.training and self.drop_path.drop_prob > 0:
            return cls + self.drop_path(mlp(self.norm2(cls), self.mlp))
        return mlp(self.norm2(cls), self.mlp, residual=cls)

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax maps of this block's spatial attention, ``[T * B, heads, 1 + S, 1 + S]``."""
        _, weights = self.attn.attend(self._spatial_qkv(self._temporal(x)), need_weights=True)
        return weights
