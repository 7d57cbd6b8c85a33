"""The Endo-FM backbone: a divided space-time video transformer (a TimeSformer variant).

State-dict keys are those of the original release, so its weights load as they are (see
:mod:`endofm.models.checkpoint`). The model runs on any device it is moved to, at any frame count and any
resolution of at least one patch, including non-square frames and single images (``T = 1``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from endofm.errors import InputError
from endofm.models.layers import ATTENTION_IMPLS, Attention, DividedSpaceTimeBlock
from endofm.models.streams import current_keys, keyed_rows, uniform

KEEP_SITE = 1 << 20
"""The keyed draw site of the token-drop positions (the blocks' stochastic depth uses sites below it)."""
POOLS = ("cls", "mean", "max")
"""Clip embeddings :meth:`EndoFMBackbone.forward_pooled` makes: the CLS token, or the mean or the feature-wise
maximum of the patch tokens."""


def check_pool(pool: str) -> str:
    """``pool`` if it names one of :data:`POOLS`; otherwise an :class:`InputError` naming them."""
    if pool not in POOLS:
        raise InputError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    return pool


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of a backbone. ``img_size`` and ``num_frames`` size the stored embeddings only:
    inputs of other sizes are handled by resizing the embeddings."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    img_size: tuple[int, int] = (224, 224)
    num_frames: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    attn_drop_rate: float = 0.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            object.__setattr__(self, "img_size", (self.img_size, self.img_size))
        else:
            object.__setattr__(self, "img_size", tuple(int(s) for s in self.img_size))
        checks = {
            "embed_dim": self.embed_dim > 0,
            "depth": self.depth > 0,
            "num_heads": self.num_heads > 0 and self.embed_dim % self.num_heads == 0,
            "patch_size": self.patch_size > 0,
            "img_size": len(self.img_size) == 2 and min(self.img_size) >= self.patch_size,
            "num_frames": self.num_frames > 0,
            "drop_path_rate": 0.0 <= self.drop_path_rate < 1.0,
        }
        for key, ok in checks.items():
            if not ok:
                raise InputError(f"invalid backbone config: {key}={getattr(self, key)!r} ({self})")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (h, w) of the stored positional embedding."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    def to_dict(self) -> dict:
        """Plain-JSON form (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["img_size"] = list(self.img_size)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> BackboneConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown backbone config keys: {sorted(unknown)}")
        return cls(**values)


def _recompute_with_current_sdpa_backends() -> tuple[contextlib.AbstractContextManager, ...]:
    """Checkpointing's (forward, recompute) contexts: the recomputation enables the SDPA backends that the
    forward had, so an ``sdpa_kernel`` block around the forward alone cannot make the backward recompute
    with another kernel (whose saved tensors differ, which checkpointing rejects), and draws from the
    forward's keyed rows."""
    flags = {
        SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled(),
        SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled(),
        SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled(),
        SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled(),
    }
    enabled = [backend for backend, on in flags.items() if on]
    return contextlib.nullcontext(), _recomputing(enabled, current_keys())


@contextlib.contextmanager
def _recomputing(backends: list[SDPBackend], keys: np.ndarray | None) -> Iterator[None]:
    """The recomputation's context: the forward's SDPA backends and its keyed rows (the backward runs outside
    the forward's :func:`~endofm.models.streams.keyed_rows`, and must draw the forward's stochastic depth)."""
    with sdpa_kernel(backends) if backends else contextlib.nullcontext(), keyed_rows(keys):
        yield


class EndoFMBackbone(nn.Module):
    """Divided space-time ViT. Input ``[B, 3, T, H, W]``; ``H`` and ``W`` are cropped down to multiples of
    the patch size (as a strided convolution does).

    Example:
        >>> import torch
        >>> from endofm.models import build_model
        >>> model = build_model("endofm_vit_micro").eval()
        >>> model(torch.randn(2, 3, 4, 64, 64)).shape
        torch.Size([2, 96])
    """

    def __init__(self, config: BackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or BackboneConfig()
        dim = config.embed_dim
        self.embed_dim = dim
        self.patch_size = config.patch_size
        self.checkpointed_blocks = 0
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, kernel_size=config.patch_size, stride=config.patch_size)
        grid_h, grid_w = config.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid_h * grid_w, dim))
        self.time_embed = nn.Parameter(torch.zeros(1, config.num_frames, dim))
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(
                dim,
                config.num_heads,
                mlp_ratio=config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                drop_path_rate=rate,
                attn_drop=config.attn_drop_rate,
                norm_eps=config.norm_eps,
            )
            for rate in rates
        )
        for index, block in enumerate(self.blocks):
            block.drop_path.site = index
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original initialisation: trunc-normal 0.02, zero ``temporal_fc`` in all blocks but the first."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.zeros_(self.time_embed)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in list(self.blocks)[1:]:
            nn.init.zeros_(block.temporal_fc.weight)
            nn.init.zeros_(block.temporal_fc.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters that the recipe excludes from weight decay (besides biases and norms)."""
        return {"pos_embed", "cls_token", "time_embed"}

    def set_grad_checkpointing(self, enable: bool = True, blocks: int | None = None) -> EndoFMBackbone:
        """Recompute block activations in the backward pass: less memory, more compute. ``blocks`` limits it
        to the first ``blocks`` blocks (default: all), trading part of the memory saved for less recompute.

        >>> from endofm.models import build_model
        >>> model = build_model("endofm_vit_micro").set_grad_checkpointing(blocks=1)
        >>> model.checkpointed_blocks
        1
        """
        depth = len(self.blocks)
        if blocks is not None and not 0 <= blocks <= depth:
            raise InputError(f"checkpointed blocks must be between 0 and the depth {depth}, got {blocks}")
        self.checkpointed_blocks = (depth if blocks is None else blocks) if enable else 0
        return self

    def set_attention_impl(self, impl: str = "sdpa") -> EndoFMBackbone:
        """Attention path of every block: ``sdpa`` (default, fused kernels) or ``math`` (explicit softmax)."""
        if impl not in ATTENTION_IMPLS:
            raise InputError(f"unknown attention impl {impl!r}; known: {', '.join(ATTENTION_IMPLS)}")
        for module in self.modules():
            if isinstance(module, Attention):
                module.impl = impl
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"expected a video tensor [B, 3, T, H, W], got {shape}")
        if x.shape[1] != 3:
            raise InputError(f"expected 3 colour channels in dim 1 of [B, 3, T, H, W], got shape {tuple(x.shape)}")
        if x.shape[2] < 1 or x.shape[0] < 1:
            raise InputError(f"empty batch or clip: shape {tuple(x.shape)}")
        if min(x.shape[3], x.shape[4]) < self.patch_size:
            raise InputError(
                f"frames of {x.shape[3]}x{x.shape[4]} pixels are smaller than one {self.patch_size}x"
                f"{self.patch_size} patch"
            )

    def resized_pos_embed(self, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS and patch positional embeddings, the patch grid resized (nearest) to ``grid_h x grid_w``."""
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        stored_h, stored_w = self.config.grid
        if (grid_h, grid_w) != (stored_h, stored_w):
            grid = patch_pos.transpose(1, 2).reshape(1, self.embed_dim, stored_h, stored_w)
            grid = F.interpolate(grid, size=(grid_h, grid_w), mode="nearest")
            patch_pos = grid.flatten(2).transpose(1, 2)
        return cls_pos, patch_pos

    def resized_time_embed(self, frames: int) -> torch.Tensor:
        """The time embedding resized (nearest) to ``frames``."""
        if frames == self.time_embed.shape[1]:
            return self.time_embed
        return F.interpolate(self.time_embed.transpose(1, 2), size=frames, mode="nearest").transpose(1, 2)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch-embed a clip into the blocks' layout ``[T, B, 1 + h*w, D]`` (CLS in slot 0 of every frame)."""
        self._check_input(x)
        batch, _, frames, height, width = x.shape
        feat = self.patch_embed.proj(x.permute(2, 0, 1, 3, 4).reshape(frames * batch, 3, height, width))
        grid_h, grid_w = feat.shape[-2:]
        cls_pos, patch_pos = self.resized_pos_embed(grid_h, grid_w)
        embed = patch_pos.unsqueeze(0) + self.resized_time_embed(frames).view(frames, 1, 1, self.embed_dim)
        patches = feat.flatten(2).transpose(1, 2).view(frames, batch, grid_h * grid_w, self.embed_dim) + embed
        cls = (self.cls_token + cls_pos).view(1, 1, 1, self.embed_dim).expand(frames, batch, 1, self.embed_dim)
        return torch.cat((cls, patches), dim=2), (grid_h, grid_w)

    def _run_blocks(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """The blocks on ``x [T, B, 1 + S, D]``; with ``cls_only`` the last block computes its CLS output alone
        (:meth:`DividedSpaceTimeBlock.forward_cls`) and ``[B, D]`` comes back."""
        # A compiled graph fixes its attention kernel, and compile accepts no such context_fn.
        options = {} if torch.compiler.is_compiling() else {"context_fn": _recompute_with_current_sdpa_backends}
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            run = block.forward_cls if cls_only and index == last else block
            if index < self.checkpointed_blocks and torch.is_grad_enabled():
                x = checkpoint(run, x, use_reentrant=False, **options)
            else:
                x = run(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, ``[B, 1 + h*w*T, D]``: CLS, then patches ordered ``(h w t)``."""
        tokens = self._run_blocks(self._embed(x)[0])
        batch = tokens.shape[1]
        patches = tokens[:, :, 1:].permute(1, 2, 0, 3).reshape(batch, -1, self.embed_dim)
        return self.norm(torch.cat((tokens[0, :, :1], patches), dim=1))

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cls [B, D], patches [B, T, h, w, D])`` after the final norm, for dense heads."""
        tokens, (grid_h, grid_w) = self._embed(x)
        tokens = self.norm(self._run_blocks(tokens))
        frames, batch = tokens.shape[:2]
        patches = tokens[:, :, 1:].transpose(0, 1).reshape(batch, frames, grid_h, grid_w, self.embed_dim)
        return tokens[0, :, 0], patches

    def forward_pooled(self, x: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """The clip embedding ``[B, D]`` by ``pool``: ``cls`` (as :meth:`forward`, the original's), ``mean`` (the
        average of the patch tokens after the final norm, as VideoMAE's fine-tuning) or ``max`` (their
        feature-wise maximum over frames and positions: a small object anywhere in the clip shows in it)."""
        return self.forward_pools(x, (pool,))[pool]

    def forward_pools(self, x: torch.Tensor, pools: Sequence[str]) -> dict[str, torch.Tensor]:
        """Several :meth:`forward_pooled` embeddings of one forward pass, by pool name."""
        for pool in pools:
            check_pool(pool)
        if set(pools) == {"cls"}:
            return {"cls": self(x)}
        cls, patches = self.forward_tokens(x)
        patches = patches.flatten(1, 3)
        pooled = {"cls": lambda: cls, "mean": lambda: patches.mean(1), "max": lambda: patches.amax(1)}
        return {pool: pooled[pool]() for pool in pools}

    def forward(self, x: torch.Tensor, keep_ratio: float = 1.0) -> torch.Tensor:
        """The clip embedding: the CLS token after the final norm, ``[B, D]``.

        The last block computes its CLS output alone: its patch outputs would be read by nothing.
        ``keep_ratio < 1`` keeps a random subset of that share of the spatial positions of each clip (the
        same positions in every frame, so temporal attention is unchanged) and drops the others before the
        blocks: the token-drop speed variant of pretraining. Draws from the rows' keys in a keyed forward
        (:mod:`endofm.models.streams`), else from the global torch generator.
        """
        tokens = self._embed(x)[0]
        if keep_ratio < 1.0:
            tokens = self._keep_random_positions(tokens, keep_ratio)
        return self.norm(self._run_blocks(tokens, cls_only=True))

    @staticmethod
    def _keep_random_positions(tokens: torch.Tensor, keep_ratio: float) -> torch.Tensor:
        """``[T, B, 1 + S, D]`` -> ``[T, B, 1 + K, D]``: the CLS and ``K = ceil(keep_ratio * S)`` positions."""
        if not 0.0 < keep_ratio <= 1.0:
            raise InputError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        frames, batch, length, dim = tokens.shape
        keep = max(1, math.ceil(keep_ratio * (length - 1)))
        keys = current_keys()
        if keys is not None and len(keys) == batch:  # each clip's positions drawn from its own key
            scores = torch.from_numpy(uniform(keys, KEEP_SITE, length - 1)).to(tokens.device)
        else:
            scores = torch.rand(batch, length - 1, device=tokens.device)
        order = scores.argsort(dim=1)[:, :keep] + 1
        index = torch.cat((order.new_zeros(batch, 1), order), dim=1)
        return tokens.gather(2, index.view(1, batch, keep + 1, 1).expand(frames, batch, keep + 1, dim))

    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial self-attention of the last block, ``[B, T, heads, 1 + h*w, 1 + h*w]``.

        Row 0 is the CLS query: ``attn[..., 0, 1:]`` reshaped to ``(h, w)`` is the per-frame map that
        attention visualisations show.
        """
        tokens, _ = self._embed(x)
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        frames, batch = tokens.shape[:2]
        attn = self.blocks[-1].spatial_attention(tokens)
        return attn.view(frames, batch, *attn.shape[1:]).transpose(0, 1)
