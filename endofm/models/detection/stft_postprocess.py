"""Detections of the STFT detector's key frame, as the original ``fcos_stft/inference.py`` makes them.

Per FPN level: the class, centreness and STFT class probabilities (sigmoids, location-major and class-minor);
``p = sqrt(cls * centreness)``; the (location, class) pairs with ``p > score_thresh`` are kept; ``p`` is then
multiplied by the STFT class probability and the ``pre_nms_top_n`` highest are kept; the box is the FCOS box
of the location moved by the STFT deltas times ``bbox_std`` times its width and height; the score is
``sqrt(p)``. Over all levels: non-maximum suppression per class, at most ``detections_per_img`` boxes
(ties at the last score kept, as the original), coordinates clamped to ``[0, W - 1]`` and ``[0, H - 1]``,
and boxes narrower or lower than -1 pixel dropped (the original's ``min_size`` 0 with its ``+ 1`` widths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchvision.ops import batched_nms


@dataclass(frozen=True)
class PostprocessConfig:
    """The original's test settings (``MODEL.FCOS.*``, ``MODEL.STFT.BBOX_STD``, ``TEST.DETECTIONS_PER_IMG``)."""

    score_thresh: float = 0.05
    pre_nms_top_n: int = 1000
    nms_thresh: float = 0.6
    detections_per_img: int = 300
    bbox_std: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.5)


def _location_major(x: torch.Tensor) -> torch.Tensor:
    """``[1, K, h, w]`` -> ``[h*w, K]``."""
    return x[0].flatten(1).transpose(0, 1)


def level_candidates(cls_logits: torch.Tensor, centerness: torch.Tensor, stft_cls_logits: torch.Tensor,
                     stft_bbox_reg: torch.Tensor, pre_bbox: torch.Tensor, config: PostprocessConfig
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes, scores, 1-based labels) of one level's candidates before NMS."""
    cls = _location_major(cls_logits).sigmoid()
    ctr = _location_major(centerness).sigmoid()
    stft = _location_major(stft_cls_logits).sigmoid()
    prob = (cls * ctr).sqrt()
    keep = prob > config.score_thresh
    prob = (prob * stft)[keep]
    prob, order = prob.sort(descending=True)
    order, prob = order[: config.pre_nms_top_n], prob[: config.pre_nms_top_n]
    pairs = keep.nonzero()[order]
    locations, labels = pairs[:, 0], pairs[:, 1] + 1
    base = pre_bbox[0][locations]
    deltas = _location_major(stft_bbox_reg)[locations]
    size = (base[:, 2:] - base[:, :2]).repeat(1, 2)
    boxes = base + deltas * base.new_tensor(config.bbox_std) * size
    return boxes, prob.sqrt(), labels


def postprocess(outputs: dict[str, Any], image_size: tuple[int, int],
                config: PostprocessConfig | None = None) -> dict[str, torch.Tensor]:
    """``{"boxes" [N, 4] xyxy, "scores" [N], "labels" [N] (1-based)}`` of the key frame from the head's
    per-level outputs; ``image_size`` is the input's (H, W)."""
    config = config or PostprocessConfig()
    parts = [level_candidates(*level, config) for level in zip(
        outputs["cls_logits"], outputs["centerness"], outputs["stft_cls_logits"], outputs["stft_bbox_reg"],
        outputs["pre_bbox"], strict=True)]
    boxes, scores, labels = (torch.cat(values) for values in zip(*parts, strict=True))
    keep = batched_nms(boxes, scores, labels, config.nms_thresh)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    count = scores.numel()
    if count > config.detections_per_img > 0:
        threshold = torch.kthvalue(scores.cpu(), count - config.detections_per_img + 1).values.item()
        keep = scores >= threshold
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    height, width = image_size
    boxes = torch.stack((boxes[:, 0].clamp(0, width - 1), boxes[:, 1].clamp(0, height - 1),
                         boxes[:, 2].clamp(0, width - 1), boxes[:, 3].clamp(0, height - 1)), dim=1)
    keep = (boxes[:, 2] - boxes[:, 0] + 1 >= 0) & (boxes[:, 3] - boxes[:, 1] + 1 >= 0)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
