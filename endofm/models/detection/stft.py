"""STFT on Endo-FM: the original KUMC polyp detector (spatial-temporal feature transformation on FCOS).

The architecture of the original ``GeneralizedRCNNSTFT`` with the ``R-50-FPN-RETINANET`` backbone (which the
original replaced by the Endo-FM ViT) and ``STFTFCOSHead``; state-dict keys are the original's, so the released
``kumc.pth`` loads as it is (:func:`~endofm.models.detection.stft_state.stft_from_state`):

- ``backbone.body``: the Endo-FM ViT; the final-norm patch tokens of each frame, ``[T, E, H/16, W/16]``, give
  three maps: ``fpn2`` (a 2x2 transposed convolution, stride 8), the tokens (stride 16) and a 2x2 max-pool
  (stride 32). ``fpn1`` is in the released state dict but unused (kept for strict loading).
- ``backbone.fpn``: an FPN to P3-P5 (1x1 lateral and 3x3 output convolutions, nearest top-down), P6 and P7 by
  stride-2 3x3 convolutions on P5 and ReLU(P6).
- ``rpn.head``: FCOS towers and predictors shared over levels, run on the key frame and its references
  (stacked on the batch axis); the SFT branches align each frame's tower features to the key frame's
  predicted boxes with a deformable convolution (the original's CUDA kernel's layout and semantics on any
  device: ``torchvision.ops.deform_conv2d``, on the CPU :mod:`endofm.models.cpu_kernels`), and a
  channel-wise attention over the references adds them to the key frame's features before the STFT
  predictors.

At test time the original runs every frame through the ViT alone (a one-frame clip); in training the key
frame and its references go through it together as one clip. Post-processing is in
:mod:`endofm.models.detection.stft_postprocess`, the training losses in :mod:`endofm.models.detection.stft_loss`,
the preprocessing in :mod:`endofm.models.detection.transform`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d, deform_conv2d

from endofm.errors import InputError
from endofm.models import cpu_kernels as kernels
from endofm.models.backbone import BackboneConfig, EndoFMBackbone
from endofm.models.detection.stft_postprocess import PostprocessConfig, postprocess

FPN_STRIDES = (8, 16, 32, 64, 128)
LEVELS = ("p3", "p4", "p5", "p6", "p7")
HEAD_OUTPUTS = ("cls_logits", "bbox_reg", "centerness", "stft_cls_logits", "stft_bbox_reg")


@dataclass(frozen=True)
class STFTConfig:
    """Sizes of an STFT detector (the released model: ViT-B, 256 channels, 4 tower convolutions)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    out_channels: int = 256
    num_convs: int = 4
    num_classes: int = 2
    """Foreground classes (logit channels); the original's ``NUM_CLASSES`` counts the background too."""
    deformable_groups: int = 4
    prior_prob: float = 0.01
    offset_weight_std: float = 0.01

    def __post_init__(self) -> None:
        if self.out_channels % 32:
            raise InputError(f"STFT out_channels must be a multiple of 32 (GroupNorm(32, C)), got {self.out_channels}")
        if self.num_convs < 0 or self.num_classes < 1 or self.deformable_groups < 1:
            raise InputError(f"invalid STFT config {self}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        out = dataclasses.asdict(self)
        out["backbone"] = self.backbone.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> STFTConfig:
        """Inverse of :meth:`to_dict`."""
        values = dict(values)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown STFT config keys: {sorted(unknown)}")
        backbone = BackboneConfig.from_dict(values.pop("backbone", {}))
        return cls(backbone=backbone, **values)


class STFTBody(EndoFMBackbone):
    """The Endo-FM ViT with the original's three output maps (strides 8, 16, 32) of every frame of a clip."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__(config)
        dim = config.embed_dim
        self.fpn1 = nn.Sequential(  # in the released state dict, never used
            nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.BatchNorm2d(dim), nn.GELU(),
            nn.ConvTranspose2d(dim, dim, 2, stride=2))
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2))
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

    def maps(self, clips: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, T, H, W]`` -> three maps ``[B*T, E, h, w]`` (clip-major) at strides 8, 16, 32."""
        _, patches = self.forward_tokens(clips)
        tokens = patches.flatten(0, 1).permute(0, 3, 1, 2)
        return [self.fpn2(tokens), tokens, self.fpn4(tokens)]


class FPN(nn.Module):
    """The original FPN on three maps (strides 8, 16, 32) with P6/P7 from P5: five levels, no norm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        for level in (2, 3, 4):
            self.add_module(f"fpn_inner{level}", nn.Conv2d(in_channels, out_channels, 1))
            self.add_module(f"fpn_layer{level}", nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.top_blocks = nn.Module()
        self.top_blocks.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.top_blocks.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        inner = self.fpn_inner4(maps[2])
        results = [self.fpn_layer4(inner)]
        for feature, level in ((maps[1], 3), (maps[0], 2)):
            lateral = getattr(self, f"fpn_inner{level}")(feature)
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, getattr(self, f"fpn_layer{level}")(inner))
        p6 = self.top_blocks.p6(results[-1])
        return [*results, p6, self.top_blocks.p7(F.relu(p6))]


class STFTBackbone(nn.Module):
    """``body`` (ViT) + ``fpn``: frames -> five FPN levels."""

    def __init__(self, config: STFTConfig) -> None:
        super().__init__()
        self.body = STFTBody(config.backbone)
        self.fpn = FPN(config.backbone.embed_dim, config.out_channels)

    def forward(self, clips: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, T, H, W]`` -> per level ``[B*T, C, h, w]``."""
        return self.fpn(self.body.maps(clips))


class Scale(nn.Module):
    """A learnt scalar factor (one per FPN level)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def deform_conv(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Deformable convolution (stride 1, no bias) with the original CUDA kernel's semantics: tap ``(i, j)`` of
    output ``(y, x)`` samples ``(y - pad + i + dy, x - pad + j + dx)`` bilinearly, zero outside the map;
    ``offset [N, groups * 2 * kh * kw, H, W]``, per group the taps row-major, each ``(dy, dx)``.
    ``torchvision.ops.deform_conv2d``, or on the CPU :func:`endofm.models.cpu_kernels.deform_conv`, and in an
    ONNX export (standard operators) :func:`~endofm.models.cpu_kernels.deform_conv_batched`."""
    if torch.onnx.is_in_onnx_export():  # a map under 2 pixels padded with zeros: zero outside it, as the rule
        height, width = x.shape[-2:]
        pad = (0, max(0, 2 - width), 0, max(0, 2 - height))
        return kernels.deform_conv_batched(F.pad(x, pad), F.pad(offset, pad), weight, padding)[..., :height, :width]
    if kernels.deform_conv_applies(x, offset):
        return kernels.deform_conv(x, offset, weight, padding)
    return deform_conv2d(x, offset, weight, padding=(padding, padding))


class SFTBranch(nn.Module):
    """Aligns a tower's features to predicted boxes: offsets from the boxes' (l, t, r, b) distances (a 1x1
    convolution, no gradient, as the original), then a deformable 3x3 convolution and ReLU."""

    def __init__(self, channels: int, deformable_groups: int = 4, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv_offset = nn.Conv2d(4, deformable_groups * 2 * kernel_size * kernel_size, 1, bias=False)
        self.conv_adaption = DeformConv2d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2,
                                          bias=False)

    def reset_parameters(self, offset_weight_std: float) -> None:
        """The original initialisation."""
        nn.init.normal_(self.conv_offset.weight, std=offset_weight_std)
        nn.init.normal_(self.conv_adaption.weight, std=0.01)

    def forward(self, feature: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
        """``feature [N, C, h, w]``, ``ltrb [N, h*w, 4]`` -> aligned features ``[N, C, h, w]``."""
        n, _, height, width = feature.shape
        with torch.no_grad():
            offset = self.conv_offset(ltrb.permute(0, 2, 1).reshape(n, 4, height, width))
        return F.relu(deform_conv(feature, offset, self.conv_adaption.weight, self.conv_adaption.padding[0]))


def channel_attention(features: torch.Tensor) -> torch.Tensor:
    """The key frame's map (``features[0]``) plus, per channel, the softmax-weighted sum of the reference
    maps (``features[1:]``), weights from dot products over positions divided by sqrt(h*w): ``[1, C, h, w]``."""
    key, refs = features[:1], features[1:]
    if refs.shape[0] == 0:
        return key
    channels, positions = features.shape[1], features.shape[2] * features.shape[3]
    query = key.reshape(channels, 1, positions)
    support = refs.transpose(0, 1).reshape(channels, -1, positions)
    weights = torch.softmax(torch.bmm(query, support.transpose(1, 2)) / math.sqrt(positions), dim=2)
    return (query + torch.bmm(weights, support)).reshape(1, channels, *features.shape[2:])


def level_locations(height: int, width: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[h*w, 2]`` (x, y) pixel centres of a level's positions, row-major."""
    xs = torch.arange(0, width * stride, stride, dtype=torch.float32, device=device)
    ys = torch.arange(0, height * stride, stride, dtype=torch.float32, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1) + stride // 2


def boxes_from_ltrb(locations: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """``x1 = x - l, y1 = y - t, x2 = x + r, y2 = y + b`` for ``locations [P, 2]`` and ``ltrb [..., P, 4]``."""
    x, y = locations[:, 0], locations[:, 1]
    return torch.stack((x - ltrb[..., 0], y - ltrb[..., 1], x + ltrb[..., 2], y + ltrb[..., 3]), dim=-1)


class STFTFCOSHead(nn.Module):
    """FCOS towers and predictors plus the two SFT branches; input per level ``[1 + R, C, h, w]`` (key
    frame first), outputs of the key frame only."""

    def __init__(self, config: STFTConfig) -> None:
        super().__init__()
        channels, classes = config.out_channels, config.num_classes
        self.strides = FPN_STRIDES
        for name in ("cls_tower", "bbox_tower"):
            layers: list[nn.Module] = []
            for _ in range(config.num_convs):
                layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels), nn.ReLU()]
            self.add_module(name, nn.Sequential(*layers))
        self.cls_logits = nn.Conv2d(channels, classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.dcn_cls_subnet = SFTBranch(channels, config.deformable_groups)
        self.dcn_bbox_subnet = SFTBranch(channels, config.deformable_groups)
        self.dcn_cls_score = nn.Conv2d(channels, classes, 3, padding=1)
        self.dcn_bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in FPN_STRIDES)
        self.reset_parameters(config)

    def reset_parameters(self, config: STFTConfig) -> None:
        """The original initialisation (normal 0.01 convolutions, focal-loss prior on the class biases)."""
        for module in (self.cls_tower, self.bbox_tower, self.cls_logits, self.bbox_pred, self.centerness,
                       self.dcn_cls_score, self.dcn_bbox_pred):
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.zeros_(layer.bias)
                elif isinstance(layer, nn.GroupNorm):
                    nn.init.ones_(layer.weight)
                    nn.init.zeros_(layer.bias)
        self.dcn_cls_subnet.reset_parameters(config.offset_weight_std)
        self.dcn_bbox_subnet.reset_parameters(config.offset_weight_std)
        prior = -math.log((1 - config.prior_prob) / config.prior_prob)
        nn.init.constant_(self.cls_logits.bias, prior)
        nn.init.constant_(self.dcn_cls_score.bias, prior)

    def frame_parts(self, features: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """What the head computes of each frame alone, per level: ``cls_tower``, ``bbox_tower`` and ``bbox_reg``
        (l, t, r, b in input pixels), each ``[N, ...]``. Video inference keeps these per frame."""
        parts = []
        for level, feature in enumerate(features):
            cls_tower, box_tower = self.cls_tower(feature), self.bbox_tower(feature)
            reg = F.relu(self.scales[level](self.bbox_pred(box_tower))) * self.strides[level]
            parts.append({"cls_tower": cls_tower, "bbox_tower": box_tower, "bbox_reg": reg})
        return parts

    def fuse(self, parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
        """The key frame's outputs from :meth:`frame_parts` of ``[key, references...]``, per level:
        ``cls_logits``, ``bbox_reg``, ``centerness``, ``stft_cls_logits``, ``stft_bbox_reg`` (deltas),
        ``pre_bbox [1, h*w, 4]`` and ``locations [h*w, 2]``."""
        out: dict[str, list[torch.Tensor]] = {name: [] for name in (*HEAD_OUTPUTS, "pre_bbox", "locations")}
        for level, part in enumerate(parts):
            stride = self.strides[level]
            cls_tower, box_tower, reg = part["cls_tower"], part["bbox_tower"], part["bbox_reg"]
            frames, _, height, width = reg.shape
            locations = level_locations(height, width, stride, reg.device)
            with torch.no_grad():
                boxes = boxes_from_ltrb(locations, reg.detach().permute(0, 2, 3, 1).reshape(frames, -1, 4))
                ltrb = self._aligned_ltrb(boxes, locations, stride, height, width)
            out["cls_logits"].append(self.cls_logits(cls_tower[:1]))
            out["centerness"].append(self.centerness(box_tower[:1]))
            out["bbox_reg"].append(reg[:1])
            out["pre_bbox"].append(boxes[:1])
            out["locations"].append(locations)
            cls_feats = channel_attention(self.dcn_cls_subnet(cls_tower, ltrb))
            out["stft_cls_logits"].append(self.dcn_cls_score(cls_feats))
            reg_feats = channel_attention(self.dcn_bbox_subnet(box_tower, ltrb))
            out["stft_bbox_reg"].append(self.dcn_bbox_pred(reg_feats))
        return out

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """Per-level features ``[1 + R, C, h, w]`` (key frame first) -> the key frame's outputs (:meth:`fuse`)."""
        return self.fuse(self.frame_parts(features))

    @staticmethod
    def _aligned_ltrb(boxes: torch.Tensor, locations: torch.Tensor, stride: int, height: int,
                      width: int) -> torch.Tensor:
        """Boxes and locations on the level's grid (clamped to it), as (x1 - x, y1 - y, x2 - x, y2 - y); every
        reference frame's offsets are replaced by the key frame's minus its own."""
        scaled = boxes / stride
        limits = boxes.new_tensor([width - 1, height - 1, width - 1, height - 1])
        scaled = torch.minimum(scaled.clamp(min=0), limits)
        grid = torch.minimum((locations / stride).clamp(min=0), limits[:2])
        ltrb = scaled - grid.repeat(1, 2)
        return torch.cat((ltrb[:1], ltrb[:1] - ltrb[1:]), dim=0)


class STFTRPN(nn.Module):
    """Holds the head under the original's key prefix ``rpn.head``."""

    def __init__(self, config: STFTConfig) -> None:
        super().__init__()
        self.head = STFTFCOSHead(config)


class STFTDetector(nn.Module):
    """The original STFT detector: :class:`STFTBackbone` and :class:`STFTFCOSHead`, plus post-processing.

    Test-time use as the original: :meth:`frame_features` (every frame alone through the ViT, one-frame
    clips) then :meth:`detect` on the key frame's and its references' features; :meth:`forward_frames` does
    both. Training (:mod:`endofm.models.detection.stft_loss`) uses :meth:`clip_features` (frames as one clip).

    Example:
        >>> import torch
        >>> from endofm.models.backbone import BackboneConfig
        >>> config = STFTConfig(BackboneConfig(embed_dim=64, depth=1, num_heads=1), out_channels=32, num_convs=1)
        >>> model = STFTDetector(config).eval()
        >>> out = model.forward_frames(torch.randn(3, 3, 64, 64))
        >>> sorted(out["detections"]), len(out["cls_logits"])
        (['boxes', 'labels', 'scores'], 5)
    """

    def __init__(self, config: STFTConfig | None = None, postprocess: PostprocessConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or STFTConfig()
        self.postprocess_config = postprocess or PostprocessConfig()
        self.backbone = STFTBackbone(config)
        self.rpn = STFTRPN(config)

    @property
    def head(self) -> STFTFCOSHead:
        return self.rpn.head

    def check_frames(self, frames: torch.Tensor) -> None:
        """An :class:`InputError` unless ``frames`` is ``[N, 3, H, W]`` with N >= 1 and H, W of two patches or more."""
        minimum = 2 * self.config.backbone.patch_size
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise InputError(f"expected frames [1 + R, 3, H, W] (key frame first), got {shape}")
        if min(frames.shape[-2:]) < minimum:
            raise InputError(f"frames of {frames.shape[-2]}x{frames.shape[-1]} pixels are too small for the STFT "
                             f"detector (at least {minimum}x{minimum}; the original uses 640x640)")

    def frame_features(self, frames: torch.Tensor, chunk: int = 8) -> list[torch.Tensor]:
        """Each frame through the backbone alone (a one-frame clip, as the original's test path): per FPN
        level ``[N, C, h, w]``. ``chunk`` frames go through at once (they do not interact)."""
        self.check_frames(frames)
        parts = [self.backbone(frames[i : i + chunk].unsqueeze(2)) for i in range(0, frames.shape[0], chunk)]
        return [torch.cat(level, dim=0) for level in zip(*parts, strict=True)]

    def clip_features(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """All frames through the backbone as ONE clip (temporal attention across them; training path)."""
        self.check_frames(frames)
        return self.backbone(frames.transpose(0, 1).unsqueeze(0))

    def forward(self, frames: torch.Tensor, clip: bool = False) -> dict[str, Any]:
        """:meth:`forward_frames`; with ``clip``, the training path: the key frame and its references
        ``[1 + R, 3, H, W]`` through the backbone as one clip, the head's raw outputs on the key frame (what the
        losses take; a module call, so that DDP synchronises the gradients)."""
        return self.head(self.clip_features(frames)) if clip else self.forward_frames(frames)

    def detect(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
        """Head outputs of the key frame and its detections from per-level features ``[1 + R, C, h, w]``."""
        return self.detect_parts(self.head.frame_parts(features), image_size)

    def detect_parts(self, parts: Sequence[dict[str, torch.Tensor]], image_size: tuple[int, int]) -> dict[str, Any]:
        """:meth:`detect` from the head's per-frame parts (:meth:`STFTFCOSHead.frame_parts`) of the key frame and
        its references: what video inference calls, each frame's parts computed once."""
        out: dict[str, Any] = self.head.fuse(parts)
        out["detections"] = postprocess(out, image_size, self.postprocess_config)
        return out

    def forward_frames(self, frames: torch.Tensor) -> dict[str, Any]:
        """``[1 + R, 3, H, W]`` normalised frames (key first) -> per FPN level ``cls_logits``, ``bbox_reg``,
        ``centerness``, ``stft_cls_logits``, ``stft_bbox_reg`` (and ``pre_bbox``, ``locations``) of the key
        frame, and ``detections``: ``boxes [N, 4]`` xyxy in input pixels, ``scores``, ``labels`` (1-based)."""
        return self.detect(self.frame_features(frames), (frames.shape[-2], frames.shape[-1]))
