"""The package's lighter segmenter: a decoder on the Endo-FM backbone's patch tokens.

:class:`SegmentationDecoder` turns every frame's patch-token grid (stride = patch size) into per-pixel logits
with ``log2(patch)`` stages of (x2 bilinear upsampling, 3x3 conv, GroupNorm, ReLU); with ``stem`` a light
convolutional stem on the frame gives skip features at strides 4 and 2 for sharper edges.
:class:`SegmentationNetwork` runs the backbone and the decoder on clips.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from endofm.errors import ConfigError
from endofm.models.backbone import EndoFMBackbone


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.GroupNorm(math.gcd(8, out_ch), out_ch),
                         nn.ReLU(inplace=True))


class SegmentationDecoder(nn.Module):
    """Patch tokens ``[N, D, h, w]`` (and frames ``[N, 3, H, W]`` with ``stem``) -> logits ``[N, K, H, W]``."""

    def __init__(self, embed_dim: int, patch_size: int = 16, num_classes: int = 2,
                 channels: tuple[int, ...] | list[int] = (256, 128, 64, 32), stem: bool = False) -> None:
        super().__init__()
        stages = int(round(math.log2(patch_size)))
        if 2**stages != patch_size:
            raise ConfigError(f"the decoder needs a power-of-two patch size, got {patch_size}")
        channels = list(channels)[:stages] + [channels[-1]] * max(0, stages - len(channels))
        self.config = {"embed_dim": embed_dim, "patch_size": patch_size, "num_classes": num_classes,
                       "channels": list(channels), "stem": stem}
        self.stem = None
        skip = {}
        if stem:
            self.stem = nn.ModuleList([_block(3, 16), _block(16, 32)])
            skip = {2: 16, 4: 32}
        self.proj = _block(embed_dim, channels[0])
        self.stages = nn.ModuleList()
        self.skip_strides: list[int | None] = []
        in_ch = channels[0]
        for i, out_ch in enumerate(channels):
            stride = patch_size // 2 ** (i + 1)
            extra = skip.get(stride, 0)
            self.skip_strides.append(stride if extra else None)
            self.stages.append(_block(in_ch + extra, out_ch))
            in_ch = out_ch
        self.classifier = nn.Conv2d(in_ch, num_classes, 1)

    def forward(self, tokens: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        skips: dict[int, torch.Tensor] = {}
        if self.stem is not None:
            if frames is None:
                raise ConfigError("this decoder has a stem: it needs the frames")
            x = frames
            for stride, block in zip((2, 4), self.stem, strict=True):
                x = block(F.max_pool2d(x, 2) if stride > 2 else F.avg_pool2d(x, 2))
                skips[stride] = x
        x = self.proj(tokens)
        for stage, stride in zip(self.stages, self.skip_strides, strict=True):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if stride is not None:
                x = torch.cat([x, F.interpolate(skips[stride], size=x.shape[-2:], mode="nearest")], dim=1)
            x = stage(x)
        return self.classifier(x)


class SegmentationNetwork(nn.Module):
    """Backbone patch tokens of a clip ``[B, 3, T, H, W]`` -> per-frame logits ``[B, K, T, H', W']`` (H', W':
    H and W cropped to multiples of the patch size)."""

    def __init__(self, backbone: EndoFMBackbone, decoder: SegmentationDecoder) -> None:
        super().__init__()
        self.backbone, self.decoder = backbone, decoder

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        _, patches = self.backbone.forward_tokens(video)
        b, t, h, w, d = patches.shape
        p = self.backbone.patch_size
        tokens = patches.permute(0, 1, 4, 2, 3).reshape(b * t, d, h, w)
        frames = video[..., : h * p, : w * p].permute(0, 2, 1, 3, 4).reshape(b * t, 3, h * p, w * p)
        logits = self.decoder(tokens, frames if self.decoder.stem is not None else None)
        return logits.view(b, t, *logits.shape[1:]).permute(0, 2, 1, 3, 4)
