"""torchvision's FCOS on the Endo-FM backbone (``detector: fcos``, the package's lighter detector).

The input of a sample is the current frame and its reference frames (the current frame last), stacked as
channels ``[3T, H, W]`` so that torchvision's detection transform batches them like images;
:class:`VideoPyramid` unstacks them into a clip ``[B, 3, T, H, W]``, runs the backbone, takes the current
frame's patch tokens (stride = patch size) and builds the original's simple pyramid: deconv x2 (stride 8),
identity (stride 16), max-pool (stride 32), each followed by a 1x1 and a 3x3 convolution to ``out_channels``.
Frames are normalised by the dataset transform; the detector's own transform neither renormalises nor (for
frames already at ``short_side``) resizes.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead

from endofm.engine.distributed import all_reduce_sum, world_size
from endofm.errors import InputError
from endofm.models.backbone import EndoFMBackbone


class VideoPyramid(nn.Module):
    """Stacked clip ``[B, 3T, H, W]`` -> ``{"p8", "p16", "p32"}`` feature maps of the current (last) frame."""

    def __init__(self, backbone: EndoFMBackbone, num_frames: int, out_channels: int = 256) -> None:
        super().__init__()
        dim = backbone.embed_dim
        self.backbone, self.num_frames, self.out_channels = backbone, num_frames, out_channels
        self.up = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.down = nn.MaxPool2d(kernel_size=2, stride=2)
        groups = math.gcd(32, out_channels)
        self.outputs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, out_channels, 1, bias=False), nn.GroupNorm(groups, out_channels),
                          nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                          nn.GroupNorm(groups, out_channels))
            for _ in range(3)
        )

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        b, c, h, w = x.shape
        if c != 3 * self.num_frames:
            raise InputError(f"expected {3 * self.num_frames} stacked channels ({self.num_frames} frames), got {c}")
        video = x.view(b, self.num_frames, 3, h, w).transpose(1, 2)
        _, patches = self.backbone.forward_tokens(video)
        current = patches[:, -1].permute(0, 3, 1, 2)
        maps = (self.up(current), current, self.down(current))
        return OrderedDict((name, block(m)) for name, block, m in zip(("p8", "p16", "p32"), self.outputs, maps,
                                                                      strict=True))


class GlobalFCOSHead(FCOSHead):
    """torchvision's FCOS head, its losses divided by the positives of the global batch: in a distributed run
    each process's share is scaled so that DDP's average of the gradients is that of one process with the
    whole batch (one process: unchanged)."""

    def compute_loss(self, targets: list[dict[str, torch.Tensor]], head_outputs: dict[str, torch.Tensor],
                     anchors: list[torch.Tensor], matched_idxs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        processes = world_size()
        if processes == 1:
            return losses
        local = sum(int((matched >= 0).sum()) for matched in matched_idxs)
        total = float(all_reduce_sum(torch.tensor(float(local), device=anchors[0].device)))
        scale = max(1, local) * processes / max(1.0, total)
        return {name: value * scale for name, value in losses.items()}


def build_detector(backbone: EndoFMBackbone, num_classes: int = 2, num_frames: int = 3, out_channels: int = 256,
                   head_convs: int = 4, short_side: int = 600, max_size: int = 640, score_thresh: float = 0.05,
                   nms_thresh: float = 0.6, detections_per_img: int = 100) -> FCOS:
    """FCOS on a :class:`VideoPyramid` (``num_classes`` foreground classes; FCOS's labels are 1-based)."""
    pyramid = VideoPyramid(backbone, num_frames, out_channels)
    stride = backbone.patch_size
    anchors = AnchorGenerator(sizes=((stride // 2,), (stride,), (stride * 2,)), aspect_ratios=((1.0,),) * 3)
    head = GlobalFCOSHead(out_channels, 1, num_classes + 1, num_convs=head_convs)
    channels = 3 * num_frames
    model = FCOS(pyramid, num_classes + 1, min_size=short_side, max_size=max_size, image_mean=[0.0] * channels,
                 image_std=[1.0] * channels, anchor_generator=anchors, head=head, score_thresh=score_thresh,
                 nms_thresh=nms_thresh, detections_per_img=detections_per_img)
    model.config = {"num_classes": num_classes, "num_frames": num_frames, "out_channels": out_channels,
                    "head_convs": head_convs, "short_side": short_side, "max_size": max_size,
                    "score_thresh": score_thresh, "nms_thresh": nms_thresh, "detections_per_img": detections_per_img}
    return model
