"""Evaluation metrics."""

from endofm.metrics.classification import accuracy, auroc, binary_f1, classification_metrics, macro_f1
from endofm.metrics.detection import box_prf, coco_map, detection_metrics, frame_level_f1_original
from endofm.metrics.knn import knn_accuracy, knn_predict
from endofm.metrics.segmentation import dice, hd95, segmentation_metrics, sequence_metrics

__all__ = [
    "accuracy",
    "auroc",
    "binary_f1",
    "box_prf",
    "classification_metrics",
    "coco_map",
    "detection_metrics",
    "dice",
    "frame_level_f1_original",
    "hd95",
    "knn_accuracy",
    "knn_predict",
    "macro_f1",
    "segmentation_metrics",
    "sequence_metrics",
]
