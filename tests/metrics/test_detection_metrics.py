"""Detection metrics: box matching and mAP against pycocotools / faster-coco-eval, and edge cases."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from faster_coco_eval import COCO as FastCOCO
from faster_coco_eval import COCOeval_faster

from endofm.metrics.detection import box_prf, coco_map, detection_metrics, frame_level_f1_original


def random_frames(seed: int, num_frames: int = 12, num_classes: int = 2) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(num_frames):
        m = int(rng.integers(0, 3))
        xy = rng.uniform(0, 80, (m, 2))
        gt = np.concatenate([xy, xy + rng.uniform(10, 40, (m, 2))], axis=1)
        gt_labels = rng.integers(0, num_classes, m)
        jitter = [g + rng.normal(0, 4, 4) for g in gt if rng.random() < 0.8]
        n_extra = int(rng.integers(0, 3))
        extra_xy = rng.uniform(0, 80, (n_extra, 2))
        extra = np.concatenate([extra_xy, extra_xy + rng.uniform(10, 40, (n_extra, 2))], axis=1)
        boxes = np.concatenate([np.array(jitter).reshape(-1, 4), extra])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = np.concatenate([gt_labels[: len(jitter)], rng.integers(0, num_classes, n_extra)])
        preds.append({"boxes": boxes, "scores": rng.random(len(boxes)), "labels": labels})
        targets.append({"boxes": gt, "labels": gt_labels})
    return preds, targets


def coco_dicts(preds: list[dict], targets: list[dict], num_classes: int, agnostic: bool = False):
    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets, strict=True), start=1):
        images.append({"id": i, "width": 200, "height": 200})
        for b, c in zip(t["boxes"], t["labels"], strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 if agnostic else int(c) + 1,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
        for b, s, c in zip(p["boxes"], p["scores"], p["labels"], strict=True):
            dets.append({"image_id": i, "category_id": 1 if agnostic else int(c) + 1, "score": float(s),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    cats = [{"id": c + 1, "name": str(c)} for c in range(1 if agnostic else num_classes)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


@pytest.mark.parametrize("seed", range(6))
def test_map_parity_with_faster_coco_eval(seed: int) -> None:
    preds, targets = random_frames(seed)
    gt, dets = coco_dicts(preds, targets, 2)
    with contextlib.redirect_stdout(io.StringIO()):
        api = FastCOCO(gt)
        evaluator = COCOeval_faster(api, api.loadRes(dets), "bbox", print_function=lambda *a: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = coco_map(preds, targets, 2)
    assert ours["map"] == pytest.approx(evaluator.stats[0], abs=1e-6)
    assert ours["map_50"] == pytest.approx(evaluator.stats[1], abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_box_matching_parity_with_pycocotools(seed: int) -> None:
    """True positives at IoU 0.5 equal COCO's matches at that threshold (class-agnostic)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    preds, targets = random_frames(seed)
    kept = [{k: v[p["scores"] >= 0.5] for k, v in p.items()} for p in preds]
    gt, dets = coco_dicts(kept, targets, 2, agnostic=True)
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = gt
        api.createIndex()
        evaluator = COCOeval(api, api.loadRes(dets) if dets else COCO(), "bbox")
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.params.maxDets = [1000]
        evaluator.params.areaRng = [[0, 1e10]]
        evaluator.evaluate()
    matched = sum(int((e["dtMatches"][0] > 0).sum()) for e in evaluator.evalImgs if e is not None)
    ours = box_prf(preds, targets, iou_threshold=0.5, score_threshold=0.5)
    assert ours["box_tp"] == matched
    assert ours["box_tp"] + ours["box_fp"] == len(dets)


def test_edge_cases() -> None:
    gt = {"boxes": np.array([[0, 0, 10, 10]]), "labels": np.array([0])}
    none = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}
    no_gt = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0)}
    hit = {"boxes": np.array([[1, 1, 10, 10]]), "scores": np.array([0.9]), "labels": np.array([0])}
    wrong = {"boxes": np.array([[50, 50, 60, 60]]), "scores": np.array([0.9]), "labels": np.array([0])}
    # No predictions at all.
    result = detection_metrics([none], [gt], 2)
    assert result["box_recall"] == 0.0 and result["box_precision"] == 1.0 and result["box_f1"] == 0.0
    assert result["frame_f1_original"] == 0.0 and result["map"] == 0.0
    # No ground truth anywhere: mAP undefined, any box is a false positive.
    result = detection_metrics([wrong], [no_gt], 2)
    assert math.isnan(result["map"]) and result["box_precision"] == 0.0 and result["frame_f1_original"] == 0.0
    # The original frame F1 counts a box in the wrong place as a hit; the box F1 does not.
    assert frame_level_f1_original([wrong], [gt])["frame_f1_original"] == 1.0
    assert box_prf([wrong], [gt])["box_f1"] == 0.0
    assert box_prf([hit], [gt])["box_f1"] == 1.0
    # Nothing to find, nothing found.
    assert box_prf([none], [no_gt])["box_f1"] == 1.0
    # A low-scoring box is ignored at the 0.5 threshold.
    low = {**hit, "scores": np.array([0.3])}
    assert box_prf([low], [gt])["box_tp"] == 0
    # Class-aware matching needs the class right.
    other_class = {**hit, "labels": np.array([1])}
    assert box_prf([other_class], [gt], class_aware=True)["box_tp"] == 0
    assert box_prf([other_class], [gt])["box_tp"] == 1
