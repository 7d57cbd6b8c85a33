"""Classification metrics: binary F1 (the original's PolypDiag measure), macro F1, accuracy and AUROC.

Inputs are integer labels and predictions (``[N]``) and, for AUROC, the positive class's score ``[N]``.
Conventions for degenerate inputs: an F1 whose denominator is zero (no positives predicted or present) is
0.0; AUROC with only one class present is ``nan`` (it is undefined), and :func:`classification_metrics`
reports it as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from endofm.errors import InputError


def _as_labels(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array.astype(np.int64)


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    if len(y_true) != len(y_pred):
        raise InputError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise InputError("cannot compute a metric over zero samples")


def f1_for_class(y_true: Sequence[int], y_pred: Sequence[int], positive: int = 1) -> float:
    """F1 of one class taken as positive: ``2 TP / (2 TP + FP + FN)`` (0.0 when that is 0 / 0)."""
    t, p = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    _check_pair(t, p)
    tp = int(np.sum((t == positive) & (p == positive)))
    fp = int(np.sum((t != positive) & (p == positive)))
    fn = int(np.sum((t == positive) & (p != positive)))
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def binary_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """F1 of class 1 (polyp), the original PolypDiag metric."""
    return f1_for_class(y_true, y_pred, 1)


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int = 2) -> float:
    """Unweighted mean of the per-class F1 over ``num_classes`` classes."""
    return float(np.mean([f1_for_class(y_true, y_pred, c) for c in range(num_classes)]))


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of correct predictions."""
    t, p = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    _check_pair(t, p)
    return float(np.mean(t == p))


def auroc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve of binary labels (1 positive) against scores, ties counted half
    (the Mann-Whitney statistic); ``nan`` when only one class is present."""
    t = _as_labels(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    _check_pair(t, s)
    positives, negatives = int(np.sum(t == 1)), int(np.sum(t != 1))
    if positives == 0 or negatives == 0:
        return float("nan")
    from scipy.stats import rankdata  # imported here: scipy.stats takes half a second, every command would pay it

    ranks = rankdata(s)
    return float((ranks[t == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def classification_metrics(y_true: Sequence[int], probabilities: np.ndarray) -> dict[str, float]:
    """Binary F1, macro F1, accuracy and AUROC of class probabilities ``[N, C]`` (argmax decisions)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2:
        raise InputError(f"probabilities must be [N, C], got shape {probs.shape}")
    pred = probs.argmax(axis=1)
    return {
        "binary_f1": binary_f1(y_true, pred),
        "macro_f1": macro_f1(y_true, pred, probs.shape[1]),
        "accuracy": accuracy(y_true, pred),
        "auroc": auroc(y_true, probs[:, 1]) if probs.shape[1] == 2 else float("nan"),
    }
