"""Training losses of the STFT detector, as the original ``fcos_stft/loss.py`` computes them (key frame only).

FCOS targets over all levels' locations: a location is positive for a box when it lies inside the box's
centre region (``center_sampling_radius`` times the level's stride around the box centre, cut to the box)
and the largest of its (l, t, r, b) distances falls in the level's size range (-1-64, 64-128, 128-256,
256-512, 512-inf pixels); among several boxes the smallest (areas with the original's ``+ 1``) wins.
Losses: sigmoid focal loss (alpha 0.25, gamma 2) over all locations and classes, divided by the positives;
GIoU loss on the (l, t, r, b) regression in pixels, weighted by the centreness target and divided by its
sum; centreness binary cross-entropy divided by the positives.

STFT targets: each location's FCOS box (``pre_bbox``, no gradient) is matched to the box of largest IoU
(``+ 1`` convention); below ``stft_iou_thresh`` it is negative. Its class target is that box's label, its
regression target ``(gt - pre) / (size of pre * bbox_std)``; focal loss and smooth L1 (beta ``reg_beta``),
both divided by the STFT positives. A frame without boxes makes every location negative (the original
cannot train on one: its target assignment fails on an empty box list). In a distributed run every divisor
is the count summed over the processes and divided by their number (at least 1), as the original's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from endofm.engine.distributed import mean_count

INF = 100000000.0
SIZE_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF))


@dataclass(frozen=True)
class STFTLossConfig:
    """The original's ``MODEL.FCOS`` and ``MODEL.STFT`` training settings."""

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    center_sampling_radius: float = 1.5
    stft_iou_thresh: float = 0.1
    bbox_std: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.5)
    reg_beta: float = 0.11


def _flat(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-level ``[1, K, h, w]`` -> ``[sum h*w, K]`` (levels in order, locations row-major)."""
    return torch.cat([m[0].flatten(1).transpose(0, 1) for m in maps])


def _ltrb(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``[M, P, 4]`` distances (l, t, r, b) from ``points [P, 2]`` to the sides of ``boxes [M, 4]``."""
    return torch.cat((points[None] - boxes[:, None, :2], boxes[:, None, 2:] - points[None]), dim=-1)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def box_iou_plus_one(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU ``[len(a), len(b)]`` with the original's ``+ 1`` widths."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (_area(a)[:, None] + _area(b)[None] - inter)


def giou_loss_ltrb(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum of ``1 - GIoU`` of boxes given as (l, t, r, b) distances from the same point."""
    eps = torch.finfo(torch.float32).eps
    pred = torch.cat((-pred[:, :2], pred[:, 2:]), dim=1)
    target = torch.cat((-target[:, :2], target[:, 2:]), dim=1)
    pred_area = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    target_area = (target[:, 2] - target[:, 0]).clamp(min=0) * (target[:, 3] - target[:, 1]).clamp(min=0)
    inter_w = (torch.min(pred[:, 2], target[:, 2]) - torch.max(pred[:, 0], target[:, 0])).clamp(min=0)
    inter_h = (torch.min(pred[:, 3], target[:, 3]) - torch.max(pred[:, 1], target[:, 1])).clamp(min=0)
    inter = inter_w * inter_h
    union = target_area + pred_area - inter
    iou = inter / union.clamp(min=eps)
    hull = ((torch.max(pred[:, 2], target[:, 2]) - torch.min(pred[:, 0], target[:, 0]))
            * (torch.max(pred[:, 3], target[:, 3]) - torch.min(pred[:, 1], target[:, 1])))
    giou = iou - (hull - union) / hull.clamp(min=eps)
    return ((1 - giou) * weight).sum()


@torch.no_grad()
def targets(outputs: dict[str, Any], boxes: torch.Tensor, labels: torch.Tensor, strides: Sequence[int],
            config: STFTLossConfig) -> dict[str, torch.Tensor]:
    """FCOS and STFT targets of every location (label 0 = background; ``labels`` are 1-based)."""
    locations = outputs["locations"]
    points = torch.cat(list(locations))
    count = points.shape[0]
    pre = torch.cat([p[0] for p in outputs["pre_bbox"]])
    if boxes.numel() == 0:
        zeros = points.new_zeros(count, dtype=torch.long)
        return {"cls": zeros, "deltas": points.new_zeros(count, 4), "centerness": points.new_zeros(count),
                "stft_cls": zeros.clone(), "stft_deltas": points.new_zeros(count, 4)}
    ranges = torch.cat([points.new_tensor(SIZE_RANGES[i]).expand(len(loc), 2) for i, loc in enumerate(locations)])
    deltas = _ltrb(points, boxes)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = []
    for stride, loc in zip(strides, locations, strict=False):
        radius = stride * config.center_sampling_radius
        region = torch.cat((torch.max(centers - radius, boxes[:, :2]), torch.min(centers + radius, boxes[:, 2:])), 1)
        inside.append(_ltrb(loc, region).min(dim=-1).values > 0)
    in_region = torch.cat(inside, dim=1)
    largest = deltas.max(dim=-1).values
    in_range = (largest >= ranges[None, :, 0]) & (largest <= ranges[None, :, 1])
    area = _area(boxes)[:, None].repeat(1, count)
    area[~in_region] = INF
    area[~in_range] = INF
    min_area, matched = area.min(dim=0)
    gt_deltas = torch.cat((points - boxes[matched, :2], boxes[matched, 2:] - points), dim=1)
    cls = labels[matched].clone()
    cls[min_area == INF] = 0
    left_right, top_bottom = gt_deltas[:, [0, 2]], gt_deltas[:, [1, 3]]
    centerness = torch.sqrt((left_right.min(dim=-1).values / left_right.max(dim=-1).values).clamp(min=0)
                            * (top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values).clamp(min=0))
    best_iou, best = box_iou_plus_one(pre, boxes).max(dim=1)
    stft_cls = labels[best].clone()
    stft_cls[best_iou < config.stft_iou_thresh] = 0
    size = (pre[:, 2:] - pre[:, :2]).repeat(1, 2)
    stft_deltas = (boxes[best] - pre) / (size * pre.new_tensor(config.bbox_std))
    return {"cls": cls, "deltas": gt_deltas, "centerness": centerness, "stft_cls": stft_cls,
            "stft_deltas": stft_deltas}


def _one_hot(cls: torch.Tensor, classes: int, like: torch.Tensor) -> torch.Tensor:
    target = torch.zeros_like(like)
    positive = cls > 0
    target[positive, cls[positive] - 1] = 1
    return target


def stft_losses(outputs: dict[str, Any], boxes: torch.Tensor, labels: torch.Tensor, strides: Sequence[int],
                config: STFTLossConfig | None = None) -> dict[str, torch.Tensor]:
    """The five losses of the original (``loss_cls``, ``loss_reg``, ``loss_centerness``, ``loss_stft_cls``,
    ``loss_stft_reg``) from the head's key-frame outputs (:meth:`STFTFCOSHead.fuse`) and the key frame's
    ``boxes [M, 4]`` (xyxy, input pixels) and 1-based ``labels [M]``."""
    config = config or STFTLossConfig()
    target = targets(outputs, boxes, labels, strides, config)
    cls_logits = _flat(outputs["cls_logits"])
    regression = _flat(outputs["bbox_reg"])
    centerness = _flat(outputs["centerness"])[:, 0]
    stft_logits = _flat(outputs["stft_cls_logits"])
    stft_regression = _flat(outputs["stft_bbox_reg"])
    positive = target["cls"] > 0
    positives = mean_count(positive.sum())
    ctr_target = target["centerness"][positive]
    loss_cls = sigmoid_focal_loss(cls_logits, _one_hot(target["cls"], cls_logits.shape[1], cls_logits),
                                  config.focal_alpha, config.focal_gamma, reduction="sum") / positives
    loss_reg = giou_loss_ltrb(regression[positive], target["deltas"][positive], ctr_target) / mean_count(
        ctr_target.sum())
    loss_ctr = F.binary_cross_entropy_with_logits(centerness[positive], ctr_target, reduction="sum") / positives
    stft_positive = target["stft_cls"] > 0
    stft_positives = mean_count(stft_positive.sum())
    loss_stft_cls = sigmoid_focal_loss(stft_logits, _one_hot(target["stft_cls"], stft_logits.shape[1], stft_logits),
                                       config.focal_alpha, config.focal_gamma, reduction="sum") / stft_positives
    loss_stft_reg = F.smooth_l1_loss(stft_regression[stft_positive], target["stft_deltas"][stft_positive],
                                     reduction="sum", beta=config.reg_beta) / stft_positives
    return {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss_centerness": loss_ctr,
            "loss_stft_cls": loss_stft_cls, "loss_stft_reg": loss_stft_reg}
