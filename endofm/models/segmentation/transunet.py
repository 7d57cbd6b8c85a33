"""TransUNet on Endo-FM: the original CVC-12k segmentation model (R50-ViT hybrid, U-Net decoder).

The architecture of the original ``TransUNet/networks/vit_seg_modeling.py`` (config R50-ViT-B_16), with the
state-dict keys of its released ``cvc.pth``:

1. ``transformer.embeddings.hybrid_model``: a ResNetV2 of weight-standardised convolutions and GroupNorm. A
   7x7 stride-2 root (width ``w``), a 3x3 stride-2 max-pool without padding, three stages of bottleneck units
   (``4w``, ``8w``, ``16w`` channels; the second and third start at stride 2). The root, stage-1 and stage-2
   outputs are the decoder's skips (stage 1's 55x55 map zero-padded to 56x56).
2. ``patch_embeddings``: a 1x1 convolution of the 14x14 stage-3 map to ``hidden`` channels, plus
   ``position_embeddings`` (196 positions; no time embedding), then dropout.
3. ``transformer.encoder``: Endo-FM's divided space-time blocks over ALL frames of a clip as one token
   sequence, behind the pretrained CLS token; then ``encoder_norm``, and the CLS token is dropped.
4. ``decoder`` (``DecoderCup``): ``conv_more`` to 512 channels, four blocks of (x2 bilinear upsampling with
   aligned corners, the skip concatenated, two 3x3 conv + BatchNorm + ReLU), then ``segmentation_head``, a
   3x3 convolution to the class logits at the input resolution.

The model takes ``[B, 3, T, 224, 224]`` clips, normalised as the original feeds them (BGR, per-image
min-max, then ``(x - 0.5) / 0.5``; see :data:`~endofm.tasks.segment.io.TRANSUNET_INPUT`), and returns logits
``[B, K, T, 224, 224]``.
Clips of a batch are independent sequences (the original runs one clip at a time); in training the
BatchNorm statistics are taken over all frames of the batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from endofm.errors import CheckpointError, InputError
from endofm.io import atomic_write, atomic_write_text
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, WEIGHTS_FILE
from endofm.models.layers import DividedSpaceTimeBlock
from endofm.models.state import load_strict

GRID = 14
"""Token grid of the original: the position embedding holds 14 x 14 positions and the encoder's token order
hard-codes 14 columns, so clips are 14 x 16 = 224 pixels square."""
STRIDE = 16
INPUT_SIZE = GRID * STRIDE
HEAD_CHANNELS = 512
"""Channels of ``decoder.conv_more`` (fixed in the original)."""


@dataclass(frozen=True)
class TransUNetConfig:
    """Sizes of a TransUNet; the defaults are the released CVC-12k model's (R50-ViT-B_16, Endo-FM ViT-B)."""

    hidden: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    resnet_width: int = 64
    resnet_units: tuple[int, int, int] = (3, 4, 9)
    decoder_channels: tuple[int, int, int, int] = (256, 128, 64, 16)
    n_skip: int = 3
    num_classes: int = 2
    dropout: float = 0.1
    """Dropout after the position embedding (the original's ``transformer.dropout_rate``)."""
    drop_path_rate: float = 0.1
    """Stochastic depth of the Endo-FM blocks, linear over depth (the original ViT-B builder's 0.1)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "resnet_units", tuple(int(u) for u in self.resnet_units))
        object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        checks = {
            "hidden": self.hidden > 0,
            "depth": self.depth > 0,
            "num_heads": self.num_heads > 0 and self.hidden % self.num_heads == 0,
            "resnet_width": self.resnet_width > 0 and self.resnet_width % 32 == 0,
            "resnet_units": len(self.resnet_units) == 3 and min(self.resnet_units) >= 1,
            "decoder_channels": len(self.decoder_channels) == 4 and min(self.decoder_channels) >= 1,
            "n_skip": 0 <= self.n_skip <= 3,
            "num_classes": self.num_classes >= 1,
            "dropout": 0.0 <= self.dropout < 1.0,
            "drop_path_rate": 0.0 <= self.drop_path_rate < 1.0,
        }
        for key, ok in checks.items():
            if not ok:
                hint = " (GroupNorm of 32 groups: a multiple of 32)" if key == "resnet_width" else ""
                raise InputError(f"invalid TransUNet config: {key}={getattr(self, key)!r}{hint}")

    @property
    def skip_channels(self) -> tuple[int, int, int, int]:
        """Channels of the skips the decoder blocks concatenate (stage 2, stage 1, root, none)."""
        w = self.resnet_width
        full = (8 * w, 4 * w, w, 0)
        return tuple(c if i < self.n_skip else 0 for i, c in enumerate(full))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        out = dataclasses.asdict(self)
        out["resnet_units"], out["decoder_channels"] = list(self.resnet_units), list(self.decoder_channels)
        return out

    @classmethod
    def from_dict(cls, values: Mapping) -> TransUNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown TransUNet config keys: {sorted(unknown)}")
        return cls(**values)


class StdConv2d(nn.Conv2d):
    """A convolution whose weight is standardised per output channel (mean 0, biased variance 1, eps 1e-5)
    before use: BiT's weight standardisation, paired with GroupNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Bottleneck(nn.Module):
    """ResNetV2 unit: 1x1 -> GN -> ReLU -> 3x3 (stride) -> GN -> ReLU -> 1x1 -> GN, plus the shortcut (a strided
    1x1 projection with its own GroupNorm where the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.gn1 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.gn_proj(self.downsample(x)) if hasattr(self, "downsample") else x
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(shortcut + self.gn3(self.conv3(y)))


class ResNetV2(nn.Module):
    """The hybrid's convolutional stem: root and three stages; returns the 1/16 map and the skips."""

    def __init__(self, width: int, units: tuple[int, int, int]) -> None:
        super().__init__()
        self.width = width
        self.root = nn.Sequential(OrderedDict([
            ("conv", StdConv2d(3, width, 7, stride=2, padding=3, bias=False)),
            ("gn", nn.GroupNorm(32, width, eps=1e-6)),
            ("relu", nn.ReLU(inplace=True)),
        ]))
        stages = []
        cin = width
        for index, (mult, count) in enumerate(zip((4, 8, 16), units, strict=True)):
            cout, stride = width * mult, 1 if index == 0 else 2
            unit_list = [("unit1", Bottleneck(cin, cout, cout // 4, stride))]
            unit_list += [(f"unit{k}", Bottleneck(cout, cout, cout // 4)) for k in range(2, count + 1)]
            stages.append((f"block{index + 1}", nn.Sequential(OrderedDict(unit_list))))
            cin = cout
        self.body = nn.Sequential(OrderedDict(stages))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x [N, 3, S, S]`` -> (stage-3 map ``[N, 16w, S/16, S/16]``, skips at 1/8, 1/4, 1/2)."""
        size = x.shape[-1]
        root = self.root(x)
        y = F.max_pool2d(root, kernel_size=3, stride=2, padding=0)
        skips = [root]
        for index, stage in enumerate(list(self.body)[:-1]):
            y = stage(y)
            want = size // (4 * (index + 1))
            pad = want - y.shape[-1]
            skips.append(F.pad(y, (0, pad, 0, pad)) if pad > 0 else y)
        return self.body[-1](y), skips[::-1]


class Embeddings(nn.Module):
    """ResNet map -> 1x1 patch embedding -> tokens ``[N, 196, hidden]`` + position embedding, and the skips."""

    def __init__(self, config: TransUNetConfig) -> None:
        super().__init__()
        self.hybrid_model = ResNetV2(config.resnet_width, config.resnet_units)
        self.patch_embeddings = nn.Conv2d(config.resnet_width * 16, config.hidden, kernel_size=1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, GRID * GRID, config.hidden))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, skips = self.hybrid_model(frames)
        tokens = self.patch_embeddings(x).flatten(2).transpose(1, 2)
        return self.dropout(tokens + self.position_embeddings), skips


class Encoder(nn.Module):
    """Endo-FM's blocks, CLS token and final norm over the frames of each clip as one sequence."""

    def __init__(self, config: TransUNetConfig) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden))
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.layer = nn.ModuleList(
            DividedSpaceTimeBlock(config.hidden, config.num_heads, mlp_ratio=config.mlp_ratio,
                                  qkv_bias=config.qkv_bias, drop_path_rate=rate, norm_eps=1e-6)
            for rate in rates
        )
        self.encoder_norm = nn.LayerNorm(config.hidden, eps=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, T, S, D]`` (each frame's positions row-major) -> the normed patch tokens, same shape.

        The blocks' layout ``[T, B, 1 + S, D]`` is the original's sequence ``[CLS, (h w t)]`` of each clip."""
        batch, frames, positions, dim = tokens.shape
        cls = self.cls_token.view(1, 1, 1, dim).expand(frames, batch, 1, dim)
        x = torch.cat((cls, tokens.transpose(0, 1)), dim=2)
        for block in self.layer:
            x = block(x)
        return self.encoder_norm(x[:, :, 1:]).transpose(0, 1)


class Transformer(nn.Module):
    """Embeddings and encoder (the original's ``transformer`` module)."""

    def __init__(self, config: TransUNetConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """x2 bilinear upsampling (aligned corners), the skip concatenated, two conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, skip: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin + skip, cout)
        self.conv2 = _conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat((x, skip), dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """Token grid ``[N, hidden, 14, 14]`` -> ``conv_more`` (512) -> four upsampling blocks -> ``[N, d3, 224, 224]``."""

    def __init__(self, config: TransUNetConfig) -> None:
        super().__init__()
        self.n_skip = config.n_skip
        self.conv_more = _conv_bn_relu(config.hidden, HEAD_CHANNELS)
        ins = (HEAD_CHANNELS, *config.decoder_channels[:-1])
        self.blocks = nn.ModuleList(
            DecoderBlock(cin, cout, skip)
            for cin, cout, skip in zip(ins, config.decoder_channels, config.skip_channels, strict=True)
        )

    def forward(self, grid: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv_more(grid)
        for index, block in enumerate(self.blocks):
            x = block(x, skips[index] if index < self.n_skip else None)
        return x


class TransUNet(nn.Module):
    """The original CVC-12k segmenter; ``forward(clip [B, 3, T, 224, 224]) -> logits [B, K, T, 224, 224]``.

    Example:
        >>> import torch
        >>> config = TransUNetConfig(hidden=32, depth=1, num_heads=2, resnet_width=32, resnet_units=(1, 1, 1),
        ...                          decoder_channels=(16, 8, 8, 4))
        >>> TransUNet(config).eval()(torch.randn(1, 3, 2, 224, 224)).shape
        torch.Size([1, 2, 2, 224, 224])
    """

    def __init__(self, config: TransUNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TransUNetConfig()
        self.transformer = Transformer(config)
        self.decoder = DecoderCup(config)
        self.segmentation_head = nn.Sequential(nn.Conv2d(config.decoder_channels[-1], config.num_classes, 3,
                                                         padding=1))

    @classmethod
    def from_backbone(cls, backbone: EndoFMBackbone, **sizes: object) -> TransUNet:
        """A TransUNet whose encoder is a pretrained Endo-FM backbone's: its blocks, final norm and CLS token
        (as the original builds it); the ResNet, patch embedding, position embedding and decoder are new.
        ``sizes`` sets the other :class:`TransUNetConfig` fields (``hidden``, ``depth``, ``num_heads``,
        ``mlp_ratio`` and ``qkv_bias`` come from the backbone)."""
        source = backbone.config
        fixed = {"hidden": source.embed_dim, "depth": source.depth, "num_heads": source.num_heads,
                 "mlp_ratio": source.mlp_ratio, "qkv_bias": source.qkv_bias}
        clash = sorted(set(fixed) & set(sizes))
        if clash:
            raise InputError(f"{clash} come from the backbone and cannot be set")
        model = cls(TransUNetConfig(**fixed, **sizes))  # type: ignore[arg-type]
        encoder = model.transformer.encoder
        encoder.layer.load_state_dict(backbone.blocks.state_dict())
        encoder.encoder_norm.load_state_dict(backbone.norm.state_dict())
        with torch.no_grad():
            encoder.cls_token.copy_(backbone.cls_token)
        return model

    def check_input(self, clip: torch.Tensor) -> None:
        """An :class:`InputError` naming the shape unless ``clip`` is ``[B, 3, T, 224, 224]``."""
        if not isinstance(clip, torch.Tensor) or clip.ndim != 5 or clip.shape[1] != 3:
            shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
            raise InputError(f"TransUNet expects a clip [B, 3, T, H, W], got {shape}")
        if min(clip.shape[0], clip.shape[2]) < 1:
            raise InputError(f"empty batch or clip: shape {tuple(clip.shape)}")
        if tuple(clip.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise InputError(
                f"TransUNet takes {INPUT_SIZE}x{INPUT_SIZE} frames (its {GRID}x{GRID} token grid at stride "
                f"{STRIDE}), got {clip.shape[-2]}x{clip.shape[-1]}: resize the frames first")

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, T, 224, 224]`` of normalised clips ``[B, 3, T, 224, 224]``."""
        self.check_input(clip)
        batch, _, frames, height, width = clip.shape
        images = clip.transpose(1, 2).reshape(batch * frames, 3, height, width)
        tokens, skips = self.transformer.embeddings(images)
        dim = tokens.shape[-1]
        encoded = self.transformer.encoder(tokens.view(batch, frames, GRID * GRID, dim))
        grid = encoded.reshape(batch * frames, GRID, GRID, dim).permute(0, 3, 1, 2)
        logits = self.segmentation_head(self.decoder(grid, skips))
        return logits.view(batch, frames, *logits.shape[1:]).transpose(1, 2)

    def encode(self, clip: torch.Tensor) -> torch.Tensor:
        """The encoder's output ``[B, T, 196, hidden]`` (after the final norm, CLS dropped): for debugging."""
        self.check_input(clip)
        batch, _, frames, height, width = clip.shape
        tokens, _ = self.transformer.embeddings(clip.transpose(1, 2).reshape(batch * frames, 3, height, width))
        return self.transformer.encoder(tokens.view(batch, frames, GRID * GRID, tokens.shape[-1]))


def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for key in state if (m := re.match(pattern, key))})


def infer_transunet_config(state: Mapping[str, torch.Tensor], num_heads: int | None = None,
                           where: str = "state dict") -> TransUNetConfig:
    """The sizes of a TransUNet state dict (the original's key names), read off its tensor shapes.

    The head count is not stored: it defaults to ``hidden // 64`` (the released model's 12 for 768).
    ``where`` names the file in errors.
    """
    prefix = "transformer.embeddings."
    required = (prefix + "position_embeddings", prefix + "hybrid_model.root.conv.weight",
                "transformer.encoder.cls_token", "transformer.encoder.layer.0.mlp.fc1.weight",
                "segmentation_head.0.weight")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{where}: not a TransUNet state dict: missing {missing}")
    positions, hidden = state[prefix + "position_embeddings"].shape[-2:]
    if positions != GRID * GRID:
        raise CheckpointError(f"{where}: {prefix}position_embeddings holds {positions} positions; the TransUNet "
                              f"takes a {GRID}x{GRID} grid ({GRID * GRID})")
    depth = len(_indices(state, r"transformer\.encoder\.layer\.(\d+)\."))
    units = tuple(len(_indices(state, rf"{prefix}hybrid_model\.body\.block{b}\.unit(\d+)\.")) for b in (1, 2, 3))
    blocks = _indices(state, r"decoder\.blocks\.(\d+)\.")
    if blocks != [0, 1, 2, 3] or min(units) < 1:
        raise CheckpointError(f"{where}: expected 4 decoder.blocks and 3 ResNet stages, found decoder blocks "
                              f"{blocks} and ResNet units {units}")
    channels = tuple(int(state[f"decoder.blocks.{i}.conv1.0.weight"].shape[0]) for i in range(4))
    width = int(state[prefix + "hybrid_model.root.conv.weight"].shape[0])
    ins = (HEAD_CHANNELS, *channels[:-1])
    skips = [int(state[f"decoder.blocks.{i}.conv1.0.weight"].shape[1]) - ins[i] for i in range(4)]
    n_skip = sum(1 for s in skips if s > 0)
    if num_heads is None:
        if hidden % 64:
            raise CheckpointError(f"{where}: cannot infer the number of heads for hidden size {hidden} (not a "
                                  "multiple of 64); pass num_heads (--num-heads on the command line, "
                                  "model.num_heads in a recipe)")
        num_heads = hidden // 64
    if num_heads < 1 or hidden % num_heads:
        raise CheckpointError(f"{where}: num_heads={num_heads} does not divide the hidden size {hidden} "
                              "(transformer.encoder.cls_token)")
    fc1 = state["transformer.encoder.layer.0.mlp.fc1.weight"]
    try:
        return TransUNetConfig(
            hidden=int(hidden), depth=depth, num_heads=num_heads, mlp_ratio=fc1.shape[0] / hidden,
            qkv_bias="transformer.encoder.layer.0.attn.qkv.bias" in state, resnet_width=width,
            resnet_units=units, decoder_channels=channels, n_skip=n_skip,  # type: ignore[arg-type]
            num_classes=int(state["segmentation_head.0.weight"].shape[0]))
    except InputError as error:
        raise CheckpointError(f"{where}: {error}") from error


MODEL_NAME = "transunet"
"""``config.json``'s ``model`` entry of a TransUNet folder."""


def save_transunet(directory: str | os.PathLike, model: TransUNet, metadata: dict | None = None) -> Path:
    """Write a TransUNet in the package's folder format: ``model.safetensors`` (the original's key names, so
    the weights are the released layout's) and ``config.json`` (``model: transunet``, its sizes, ``metadata``),
    each atomically, the weights first."""
    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": MODEL_NAME,
              "transunet": model.config.to_dict(), "metadata": metadata or {}}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return directory


def load_transunet_state(state: Mapping[str, torch.Tensor], config: TransUNetConfig, where: str) -> TransUNet:
    """A TransUNet of ``config`` with ``state`` loaded strictly (errors name ``where`` and the keys), in eval
    mode."""
    model = TransUNet(config)
    load_strict(model, state, "TransUNet", where)
    return model.eval()
