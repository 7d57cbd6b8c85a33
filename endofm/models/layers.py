"""Building blocks of the divided space-time transformer: attention, MLP, stochastic depth, the block.

Parameter names follow the original Endo-FM/TimeSformer code so its state dicts load without renaming.
Residual adds are written into the linear layers' fresh outputs. Where CPU-specific code computes the same
thing with less memory or fewer copies, the layers call :mod:`endofm.models.cpu_kernels` (one switch turns it
off); everything else is plain PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from endofm.models import cpu_kernels as kernels
from endofm.models.streams import current_keys, uniform

ATTENTION_IMPLS = ("sdpa", "math")
"""Attention paths: ``sdpa`` (``scaled_dot_product_attention``: fused kernels, no layout copies) or ``math``
(explicit ``softmax(q k^T * scale) v``)."""


def drop_path(x: torch.Tensor, drop_prob: float, training: bool, dim: int = 0, site: int | None = None,
              frame_major: bool = False) -> torch.Tensor:
    """Stochastic depth: zero whole slices along ``dim`` (the sample dimension) with probability ``drop_prob``.

    Surviving slices are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged. Inside
    :func:`~endofm.models.streams.keyed_rows` with ``site`` given, the ``B`` keyed rows own the slices
    (``dim`` has ``B * k``: row-major, or with ``frame_major`` ``k`` blocks of ``B``) and each row's draws come
    from its key; else from torch's generator.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask_shape = [1] * x.ndim
    mask_shape[dim] = x.shape[dim]
    keys = current_keys()
    if keys is None or site is None:
        mask = x.new_empty(mask_shape).bernoulli_(keep)
    else:
        rows = len(keys)
        if rows == 0 or x.shape[dim] % rows:
            raise ValueError(f"drop path over {x.shape[dim]} slices cannot be keyed by {rows} rows")
        draws = uniform(keys, site, x.shape[dim] // rows) < keep
        draws = draws.T if frame_major else draws
        mask = torch.from_numpy(draws.reshape(mask_shape).astype("float32")).to(x.device, x.dtype)
    return x * mask.div_(keep)


def mlp(x: torch.Tensor, module: Mlp, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``module.fc2(gelu(module.fc1(x))) (+ residual)`` (on CPU by :func:`endofm.models.cpu_kernels.mlp`)."""
    if kernels.mlp_applies(x, module):
        return kernels.mlp(x, module.fc1, module.fc2, residual)
    return linear(linear(x, module.fc1, gelu=True), module.fc2, residual=residual)


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
        self.site = 0
        """This module's place in the network (its block's index): keyed draws differ by site."""

    def forward(self, x: torch.Tensor, dim: int = 0, part: int = 0, frame_major: bool = False) -> torch.Tensor:
        """``part`` names the call within the block (each call of a keyed forward draws its own numbers)."""
        return drop_path(x, self.drop_prob, self.training, dim, site=self.site * 4 + part, frame_major=frame_major)

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


def _with_cls(x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """``x [T, B, 1 + S, D]`` with its CLS slots set to ``cls`` (``[T or 1, B, 1, D]``): in place, or in an ONNX
    export, whose tracer fixes the batch size of an indexed assignment, by concatenation."""
    if torch.onnx.is_in_onnx_export():
        return torch.cat((cls.expand(x.shape[0], -1, -1, -1), x[:, :, 1:]), dim=2)
    x[:, :, 0] = cls[:, :, 0]
    return x


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
            if kernels.flash_applies(qkv, dropout):
                out = kernels.flash_attention(qkv)
            else:
                out = F.scaled_dot_product_attention(*qkv.unbind(0), dropout_p=dropout)
        elif need_weights or dropout or not kernels.math_applies():
            out, weights = self._attend_explicit(*qkv.unbind(0), dropout)
        else:
            out = kernels.math_attention(qkv, self.scale)
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
        return _with_cls(out.view(x.shape), x[:, :, :1])

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
            x = x + self.drop_path(linear(out, self.attn.proj), part=1, frame_major=True).view(x.shape)
        else:
            x = linear(out, self.attn.proj, residual=x.view(frames * batch, tokens, dim)).view(x.shape)
        # the CLS slots of x were equal over frames, so their mean is the original's CLS + mean of the CLS results
        x = _with_cls(x, x[:, :, :1].mean(dim=0, keepdim=True))
        flat = x.view(frames, batch * tokens, dim)
        if dropping:
            return x + self.drop_path(mlp(self.norm2(flat), self.mlp).view(x.shape), dim=1, part=2)
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
        res = self.drop_path(linear(self.attn.attend_first(self._spatial_qkv(x)), self.attn.proj), part=1,
                             frame_major=True)
        cls = (x[:, :, 0] + res.view(frames, batch, dim)).mean(dim=0)
        if self.training and self.drop_path.drop_prob > 0:
            return cls + self.drop_path(mlp(self.norm2(cls), self.mlp), part=2)
        return mlp(self.norm2(cls), self.mlp, residual=cls)

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax maps of this block's spatial attention, ``[T * B, heads, 1 + S, 1 + S]``."""
        _, weights = self.attn.attend(self._spatial_qkv(self._temporal(x)), need_weights=True)
        return weights
