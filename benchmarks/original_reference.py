"""A re-statement of the original Endo-FM/TimeSformer module structure, the baseline of the benchmarks.

Written from the architecture description (reference doc, section 1), not copied: it keeps the original's
way of computing, so that timing it measures the original's overheads at equal work:

- tokens live as ``[B, 1 + h*w*T, D]`` and every attention re-arranges them with ``permute`` + copy;
- attention is explicit ``softmax(q k^T * scale) v`` with dropout modules;
- the CLS token is ``repeat``-ed for every frame, concatenated, and its results averaged over frames;
- LayerNorm, GELU, dropout and stochastic depth are modules;
- the last block computes every token, though the clip embedding reads its CLS alone (ours computes the CLS
  alone there, with the same result: the speed-ups include that work skipped).

State-dict keys equal :class:`endofm.models.EndoFMBackbone`'s, so the same weights load into both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from endofm.models.backbone import BackboneConfig


class DropPath(nn.Module):
    """Stochastic depth over the leading dimension."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device) + keep
        return x.div(keep) * mask.floor_()


class Mlp(nn.Module):
    """fc1, GELU, dropout, fc2, dropout."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Explicit multi-head attention: ``softmax(q @ k^T * scale) @ v``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Divided space-time block on ``[B, 1 + h*w*T, D]`` tokens ordered ``(h w t)``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float, attn_drop: float, eps: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop)
        self.temporal_norm1 = nn.LayerNorm(dim, eps=eps)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias, attn_drop)
        self.temporal_fc = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, batch: int, frames: int, grid_w: int) -> torch.Tensor:
        dim = x.shape[-1]
        space = (x.shape[1] - 1) // frames
        grid_h = space // grid_w
        # temporal: 'b (h w t) m -> (b h w) t m'
        xt = x[:, 1:, :]
        seq = xt.reshape(batch, grid_h, grid_w, frames, dim).reshape(batch * grid_h * grid_w, frames, dim)
        res = self.drop_path(self.temporal_attn(self.temporal_norm1(seq)))
        # '(b h w) t m -> b (h w t) m'
        res = res.reshape(batch, grid_h, grid_w, frames, dim).reshape(batch, space * frames, dim)
        xt = x[:, 1:, :] + self.temporal_fc(res)
        # spatial: the CLS repeated for every frame, 'b (h w t) m -> (b t) (h w) m'
        init_cls = x[:, 0, :].unsqueeze(1)
        cls = init_cls.repeat(1, frames, 1).reshape(batch * frames, dim).unsqueeze(1)
        xs = xt.reshape(batch, grid_h, grid_w, frames, dim).permute(0, 3, 1, 2, 4)
        xs = xs.reshape(batch * frames, grid_h * grid_w, dim)
        xs = torch.cat((cls, xs), 1)
        res_spatial = self.drop_path(self.attn(self.norm1(xs)))
        cls = res_spatial[:, 0, :].reshape(batch, frames, dim)
        cls = torch.mean(cls, 1, True)
        res_spatial = res_spatial[:, 1:, :].reshape(batch, frames, grid_h, grid_w, dim).permute(0, 2, 3, 1, 4)
        res_spatial = res_spatial.reshape(batch, space * frames, dim)
        x = torch.cat((init_cls, xt), 1) + torch.cat((cls, res_spatial), 1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv2d patch embedding of every frame: ``[B, 3, T, H, W] -> [(B T), h*w, D]``."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        batch, channels, frames, height, width = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        x = self.proj(x)
        grid_w = x.shape[-1]
        return x.flatten(2).transpose(1, 2), frames, grid_w


class OriginalVisionTransformer(nn.Module):
    """The original backbone's computation; ``forward`` returns the normed CLS token ``[B, D]``."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(dim, config.patch_size)
        grid_h, grid_w = config.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid_h * grid_w, dim))
        self.time_embed = nn.Parameter(torch.zeros(1, config.num_frames, dim))
        self.pos_drop = nn.Dropout(0.0)
        self.time_drop = nn.Dropout(0.0)
        rates = [r.item() for r in torch.linspace(0, config.drop_path_rate, config.depth)]
        self.blocks = nn.ModuleList(
            Block(
                dim, config.num_heads, config.mlp_ratio, config.qkv_bias, rate, config.attn_drop_rate, config.norm_eps
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, ``[B, 1 + h*w*T, D]`` ordered ``(h w t)``."""
        batch = x.shape[0]
        x, frames, grid_w = self.patch_embed(x)
        dim = x.shape[-1]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        if x.shape[1] != self.pos_embed.shape[1]:
            cls_pos = self.pos_embed[0, 0, :].unsqueeze(0).unsqueeze(1)
            stored_h, stored_w = self.config.grid
            patch_pos = self.pos_embed[0, 1:, :].unsqueeze(0).transpose(1, 2).reshape(1, dim, stored_h, stored_w)
            grid_h = (x.shape[1] - 1) // grid_w
            patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="nearest")
            patch_pos = patch_pos.flatten(2).transpose(1, 2)
            x = x + torch.cat((cls_pos, patch_pos), 1)
        else:
            x = x + self.pos_embed
        x = self.pos_drop(x)
        # time embedding: '(b t) n m -> (b n) t m' on the patch tokens
        cls = x[:batch, 0, :].unsqueeze(1)
        x = x[:, 1:]
        space = x.shape[1]
        x = x.reshape(batch, frames, space, dim).permute(0, 2, 1, 3).reshape(batch * space, frames, dim)
        if frames != self.time_embed.shape[1]:
            time_embed = F.interpolate(self.time_embed.transpose(1, 2), size=frames, mode="nearest").transpose(1, 2)
            x = x + time_embed
        else:
            x = x + self.time_embed
        x = self.time_drop(x)
        x = x.reshape(batch, space * frames, dim)
        x = torch.cat((cls, x), dim=1)
        for block in self.blocks:
            x = block(x, batch, frames, grid_w)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The clip embedding: the CLS token after the final norm."""
        return self.forward_features(x)[:, 0]
