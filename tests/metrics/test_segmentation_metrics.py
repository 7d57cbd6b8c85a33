"""Dice and HD95 against an independent implementation (scipy distance transforms), and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from endofm.errors import InputError
from endofm.metrics.segmentation import dice, hd95, segmentation_metrics, sequence_metrics


def reference_hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """medpy's definition through scipy: surfaces by erosion, distances by an exact distance transform."""
    structure = ndimage.generate_binary_structure(2, 1)
    ps = pred ^ ndimage.binary_erosion(pred, structure, border_value=0)
    ts = target ^ ndimage.binary_erosion(target, structure, border_value=0)
    d_to_t = ndimage.distance_transform_edt(~ts)[ps]
    d_to_p = ndimage.distance_transform_edt(~ps)[ts]
    return max(np.percentile(d_to_t, 95), np.percentile(d_to_p, 95))


def reference_medpy_hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """medpy's ``hd95`` through scipy, in any dimension: both directed distance sets pooled."""
    structure = ndimage.generate_binary_structure(pred.ndim, 1)
    ps = pred ^ ndimage.binary_erosion(pred, structure, border_value=0)
    ts = target ^ ndimage.binary_erosion(target, structure, border_value=0)
    return np.percentile(np.hstack([ndimage.distance_transform_edt(~ts)[ps], ndimage.distance_transform_edt(~ps)[ts]]),
                         95)


def random_blobs(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    mask = ndimage.gaussian_filter(rng.random(shape), 3) > 0.5 + rng.uniform(-0.03, 0.03)
    if not mask.any():
        mask[rng.integers(shape[0]), rng.integers(shape[1])] = True
    return mask


@pytest.mark.parametrize("seed", range(15))
def test_hd95_and_dice_parity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(20, 70)), int(rng.integers(20, 70)))
    pred, target = random_blobs(rng, shape), random_blobs(rng, shape)
    assert hd95(pred, target) == pytest.approx(reference_hd95(pred, target))
    expected = 2 * np.logical_and(pred, target).sum() / (pred.sum() + target.sum())
    assert dice(pred, target) == pytest.approx(expected)


def test_edge_cases() -> None:
    empty = np.zeros((10, 20), dtype=bool)
    full = np.ones((10, 20), dtype=bool)
    assert dice(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    assert dice(full, empty) == 0.0 and hd95(full, empty) == pytest.approx(math.hypot(10, 20))
    assert dice(full, full) == 1.0 and hd95(full, full) == 0.0
    single = empty.copy()
    single[3, 4] = True
    other = empty.copy()
    other[3, 9] = True
    assert hd95(single, other) == 5.0
    with pytest.raises(InputError, match="differs"):
        dice(empty, np.zeros((10, 21)))


def test_sequence_and_average() -> None:
    rng = np.random.default_rng(0)
    pred = np.stack([random_blobs(rng, (32, 32)) for _ in range(4)])
    target = np.stack([random_blobs(rng, (32, 32)) for _ in range(4)])
    seq = sequence_metrics(pred, target)
    assert seq["dice"] == pytest.approx(dice(pred.ravel(), target.ravel()))
    assert seq["hd95"] == pytest.approx(np.mean([reference_hd95(p, t) for p, t in zip(pred, target, strict=True)]))
    result = segmentation_metrics({"a": (pred, target), "b": (target, target)})
    assert result["dice"] == pytest.approx((seq["dice"] + 1.0) / 2)
    assert set(result["sequences"]) == {"a", "b"}


@pytest.mark.parametrize("seed", range(5))
def test_the_original_rule_scores_the_volume_as_medpy_does(seed: int) -> None:
    """The original trainer.py: medpy's Dice and HD95 over the whole T x H x W volume, 0/0 when nothing is
    predicted, 1/0 when something is predicted where nothing is to find."""
    rng = np.random.default_rng(seed)
    pred = ndimage.gaussian_filter(rng.random((5, 30, 40)), 2) > 0.52
    target = ndimage.gaussian_filter(rng.random((5, 30, 40)), 2) > 0.52
    seq = sequence_metrics(pred, target, empty_rule="original")
    assert seq["hd95"] == pytest.approx(reference_medpy_hd95(pred, target))
    assert seq["hd95"] != pytest.approx(sequence_metrics(pred, target)["hd95"])
    assert seq["dice"] == pytest.approx(dice(pred.ravel(), target.ravel()))
    empty = np.zeros_like(pred)
    assert sequence_metrics(empty, target, empty_rule="original") == {"dice": 0.0, "hd95": 0.0}
    assert sequence_metrics(empty, empty, empty_rule="original") == {"dice": 0.0, "hd95": 0.0}
    assert sequence_metrics(pred, empty, empty_rule="original") == {"dice": 1.0, "hd95": 0.0}
