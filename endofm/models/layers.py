"""Building blocks of the divided space-time transformer: attention, MLP, stochastic depth, the block.

Parameter names follow the original Endo-FM/TimeSformer code so its state dicts load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole rows of the leading dimension with probability ``drop_prob``.

    Surviving rows are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(mask_shape).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Module form of :func:`drop_path`."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``.

    ``forward(x, return_attention=True)`` also returns the softmax attention maps ``[B, heads, N, N]``,
    computed explicitly (slower; for visualisation).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if return_attention:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = attn @ v
        else:
            dropout = self.attn_drop if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out = self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))
        return (out, attn) if return_attention else out


class Mlp(nn.Module):
    """Two linear layers with a GELU between them."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """One transformer block: temporal attention, then spatial attention, then the MLP.

    Tokens come in as ``cls [B, 1, D]`` and ``patches [B, S, T, D]`` (``S = h * w`` spatial positions in
    row-major order, ``T`` frames), which is the original ``(h w t)`` token order without the CLS.

    - temporal: each spatial position attends over its ``T`` frames; the result passes ``temporal_fc``;
    - spatial: each frame attends over ``[CLS, its S patches]``; the CLS result is averaged over frames;
    - MLP on every token. Stochastic depth wraps the three branches.
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

    def _temporal(self, patches: torch.Tensor) -> torch.Tensor:
        batch, space, frames, dim = patches.shape
        seq = patches.reshape(batch * space, frames, dim)
        res = self.drop_path(self.temporal_attn(self.temporal_norm1(seq)))
        return patches + self.temporal_fc(res).reshape(batch, space, frames, dim)

    def _spatial_input(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        batch, space, frames, dim = patches.shape
        per_frame = patches.transpose(1, 2).reshape(batch * frames, space, dim)
        cls_per_frame = cls.expand(batch, frames, dim).reshape(batch * frames, 1, dim)
        return torch.cat((cls_per_frame, per_frame), dim=1)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, space, frames, dim = patches.shape
        patches = self._temporal(patches)
        res = self.drop_path(self.attn(self.norm1(self._spatial_input(cls, patches))))
        res = res.reshape(batch, frames, 1 + space, dim)
        cls = cls + res[:, :, :1].mean(dim=1)
        patches = patches + res[:, :, 1:].transpose(1, 2)
        tokens = torch.cat((cls, patches.reshape(batch, space * frames, dim)), dim=1)
        tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return tokens[:, :1], tokens[:, 1:].reshape(batch, space, frames, dim)

    def spatial_attention(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Softmax maps of this block's spatial attention, ``[B * T, heads, 1 + S, 1 + S]``."""
        patches = self._temporal(patches)
        _, attn = self.attn(self.norm1(self._spatial_input(cls, patches)), return_attention=True)
        return attn
