"""Classification metrics against scikit-learn on random inputs, and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from endofm.errors import InputError
from endofm.metrics.classification import accuracy, auroc, binary_f1, classification_metrics, macro_f1


@pytest.mark.parametrize("seed", range(20))
def test_parity_with_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    y = rng.integers(0, 2, n)
    scores = np.round(rng.random(n), 1)  # rounding makes ties
    pred = (scores > 0.5).astype(int)
    assert binary_f1(y, pred) == pytest.approx(f1_score(y, pred, zero_division=0))
    assert macro_f1(y, pred) == pytest.approx(f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0))
    assert accuracy(y, pred) == pytest.approx(accuracy_score(y, pred))
    if len(set(y)) == 2:
        assert auroc(y, scores) == pytest.approx(roc_auc_score(y, scores))


def test_three_classes_macro_f1() -> None:
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    assert macro_f1(y, pred, 3) == pytest.approx(f1_score(y, pred, average="macro"))


def test_edge_cases() -> None:
    assert binary_f1([0, 0, 0], [0, 0, 0]) == 0.0
    assert macro_f1([1, 1], [1, 1]) == 0.5
    assert math.isnan(auroc([1, 1, 1], [0.2, 0.4, 0.9]))
    assert auroc([0, 1], [0.3, 0.3]) == 0.5
    metrics = classification_metrics([0, 1, 1], np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["auroc"] == 1.0
    with pytest.raises(InputError, match="3 labels but 2"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(InputError, match="zero samples"):
        binary_f1([], [])
