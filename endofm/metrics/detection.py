"""Detection metrics over frames: the original KUMC frame-level F1, box-level precision/recall/F1 at an IoU
threshold, and COCO mAP through pycocotools.

A frame's predictions are ``{"boxes": [N, 4] xyxy, "scores": [N], "labels": [N]}``, its ground truth
``{"boxes": [M, 4] xyxy, "labels": [M]}`` (arrays or tensors). Conventions for empty cases: a precision with
no predictions is 1.0 (nothing claimed wrongly), a recall with no ground truth is 1.0, and an F1 is 0.0 when
precision and recall are both 0.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from endofm.errors import InputError

Frame = Mapping[str, Any]


def _boxes(frame: Frame, key: str = "boxes") -> np.ndarray:
    return np.asarray(frame.get(key, np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)


def _vector(frame: Frame, key: str, count: int, dtype: type) -> np.ndarray:
    values = np.asarray(frame.get(key, np.zeros(count)), dtype=dtype).reshape(-1)
    if len(values) != count:
        raise InputError(f"{count} boxes but {len(values)} {key}")
    return values


def _check_frames(predictions: Sequence[Frame], targets: Sequence[Frame]) -> None:
    if len(predictions) != len(targets):
        raise InputError(f"{len(predictions)} predicted frames but {len(targets)} ground-truth frames")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of xyxy boxes (continuous coordinates, no +1)."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _ratio(num: int, den: int) -> float:
    return num / den if den else 1.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def frame_level_f1_original(predictions: Sequence[Frame], targets: Sequence[Frame],
                            score_threshold: float = 0.5) -> dict[str, float]:
    """The original KUMC "F1": a frame with ground truth is a true positive when any box scores at least
    ``score_threshold`` (where the box is is not checked), a false negative otherwise; a frame without
    ground truth is a false positive when any box scores that high."""
    _check_frames(predictions, targets)
    tp = fp = fn = 0
    for pred, target in zip(predictions, targets, strict=True):
        scores = _vector(pred, "scores", len(_boxes(pred)), np.float64)
        fired = bool((scores >= score_threshold).any())
        if len(_boxes(target)):
            tp, fn = tp + fired, fn + (not fired)
        else:
            fp += fired
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"frame_precision_original": precision, "frame_recall_original": recall,
            "frame_f1_original": _f1(precision, recall)}


def match_frame(pred_boxes: np.ndarray, pred_scores: np.ndarray, gt_boxes: np.ndarray,
                iou_threshold: float = 0.5) -> int:
    """True positives of one frame (one class): predictions in decreasing score order each take the unmatched
    ground-truth box of highest IoU, if that IoU is at least ``iou_threshold`` (COCO's greedy matching)."""
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return 0
    iou = box_iou(pred_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    tp = 0
    for i in np.argsort(-pred_scores, kind="stable"):
        candidates = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_threshold:
            taken[j] = True
            tp += 1
    return tp


def box_prf(predictions: Sequence[Frame], targets: Sequence[Frame], iou_threshold: float = 0.5,
            score_threshold: float = 0.5, class_aware: bool = False) -> dict[str, float]:
    """Box-level precision, recall and F1: predictions scoring at least ``score_threshold`` are matched to
    ground truth at IoU ``iou_threshold`` (:func:`match_frame`); with ``class_aware`` only within a class."""
    _check_frames(predictions, targets)
    tp = num_pred = num_gt = 0
    for pred, target in zip(predictions, targets, strict=True):
        boxes, gt = _boxes(pred), _boxes(target)
        scores = _vector(pred, "scores", len(boxes), np.float64)
        labels = _vector(pred, "labels", len(boxes), np.int64) if class_aware else np.zeros(len(boxes), np.int64)
        gt_labels = _vector(target, "labels", len(gt), np.int64) if class_aware else np.zeros(len(gt), np.int64)
        keep = scores >= score_threshold
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        num_pred, num_gt = num_pred + len(boxes), num_gt + len(gt)
        for c in np.union1d(labels, gt_labels):
            tp += match_frame(boxes[labels == c], scores[labels == c], gt[gt_labels == c], iou_threshold)
    precision, recall = _ratio(tp, num_pred), _ratio(tp, num_gt)
    return {"box_precision": precision, "box_recall": recall, "box_f1": _f1(precision, recall),
            "box_tp": tp, "box_fp": num_pred - tp, "box_fn": num_gt - tp}


def coco_map(predictions: Sequence[Frame], targets: Sequence[Frame], num_classes: int) -> dict[str, float]:
    """COCO mAP@[.5:.95], AP50 and AP75 (all areas, 100 detections per frame) through pycocotools.

    Labels are ``0 .. num_classes-1``. With no ground-truth box at all the values are ``nan``; with ground
    truth but no prediction they are 0.0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _check_frames(predictions, targets)
    images, annotations, results = [], [], []
    for image_id, (pred, target) in enumerate(zip(predictions, targets, strict=True), start=1):
        images.append({"id": image_id})
        gt = _boxes(target)
        for box, label in zip(gt, _vector(target, "labels", len(gt), np.int64), strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": 0})
        boxes = _boxes(pred)
        scores = _vector(pred, "scores", len(boxes), np.float64)
        for box, score, label in zip(boxes, scores, _vector(pred, "labels", len(boxes), np.int64), strict=True):
            results.append({"image_id": image_id, "category_id": int(label) + 1, "score": float(score),
                            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
    if not annotations:
        return {"map": float("nan"), "map_50": float("nan"), "map_75": float("nan")}
    if not results:
        return {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api = COCO()
        gt_api.dataset = {"images": images, "annotations": annotations,
                          "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
        gt_api.createIndex()
        evaluator = COCOeval(gt_api, gt_api.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) if s >= 0 else float("nan") for s in evaluator.stats[:3]]
    return {"map": stats[0], "map_50": stats[1], "map_75": stats[2]}


def detection_metrics(predictions: Sequence[Frame], targets: Sequence[Frame], num_classes: int,
                      score_threshold: float = 0.5, iou_threshold: float = 0.5) -> dict[str, float]:
    """The original frame-level F1, class-agnostic and class-aware box P/R/F1, and COCO mAP."""
    aware = box_prf(predictions, targets, iou_threshold, score_threshold, class_aware=True)
    return {
        **frame_level_f1_original(predictions, targets, score_threshold),
        **box_prf(predictions, targets, iou_threshold, score_threshold),
        "box_f1_class_aware": aware["box_f1"],
        **coco_map(predictions, targets, num_classes),
    }
