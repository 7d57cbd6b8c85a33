"""Segmentation metrics: Dice and the 95th-percentile Hausdorff distance (HD95), per sequence.

Masks are boolean (or 0/1) arrays. Conventions for empty masks (stated because papers differ):

- Dice: both empty -> 1.0 (nothing to find, nothing found); one empty -> 0.0. The original's rule is an
  option (:data:`EMPTY_RULES`).
- HD95 (pixels): both empty -> 0.0; exactly one empty -> the frame's diagonal, the largest distance
  possible in the frame (a finite worst case, so averages stay defined).

The surface of a mask is its foreground pixels with a face neighbour (4 in 2-D, 6 in 3-D) outside the mask
or the array. HD95 is, by default, the larger of the two directed 95th percentiles of surface-to-surface
Euclidean distances; medpy's ``hd95``, which the original calls, takes the 95th percentile of both directed
sets together (``pooled=True``).

Per sequence (:func:`sequence_metrics`), Dice is computed over all pixels of all frames of the sequence
(the original's per-case volume Dice) and HD95 is the mean of the frames' 2-D HD95 (time is not a spatial
axis). Under the original's rule (``empty_rule="original"``) both are those of the original ``trainer.py``:
medpy's Dice and HD95 over the whole ``T x H x W`` volume (HD95 in 3-D, a frame one unit apart), and 0.0 for
both when nothing is predicted, Dice 1.0 and HD95 0.0 when something is predicted where nothing is to find.
:func:`segmentation_metrics` averages both over sequences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.spatial import cKDTree

from endofm.errors import InputError


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if p.shape != t.shape:
        raise InputError(f"prediction shape {p.shape} differs from the target's {t.shape}")
    return p, t


EMPTY_RULES = ("standard", "original")
"""Empty masks: ``standard`` (Dice: both empty 1.0, one empty 0.0) or ``original`` (the original
``trainer.py``'s rule: nothing predicted 0.0, even where nothing is to find; something predicted where the
target is empty 1.0; per sequence also the original's volume HD95, see the module doc)."""


def dice(pred: np.ndarray, target: np.ndarray, empty_rule: str = "standard") -> float:
    """Dice coefficient ``2 |P & T| / (|P| + |T|)`` of two masks of any shape; empty masks by ``empty_rule``
    (:data:`EMPTY_RULES`)."""
    if empty_rule not in EMPTY_RULES:
        raise InputError(f"empty_rule must be one of {EMPTY_RULES}, got {empty_rule!r}")
    p, t = _pair(pred, target)
    has_p, has_t = bool(p.any()), bool(t.any())
    if empty_rule == "original" and not (has_p and has_t):
        return 1.0 if has_p else 0.0
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Coordinates ``[K, ndim]`` of the foreground elements of a mask that touch the background or the array's
    edge through a face neighbour."""
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1, constant_values=False)
    interior = np.ones_like(m)
    for axis in range(m.ndim):
        for shift in (0, 2):
            index = [slice(1, -1)] * m.ndim
            index[axis] = slice(shift, shift + m.shape[axis])
            interior &= padded[tuple(index)]
    return np.argwhere(m & ~interior)


def hd95(pred: np.ndarray, target: np.ndarray, pooled: bool = False) -> float:
    """95th-percentile symmetric Hausdorff distance (pixels) between two masks of any dimension: the larger
    directed percentile, or with ``pooled`` the percentile of both directions together (medpy's ``hd95``);
    see the module doc for empty masks."""
    p, t = _pair(pred, target)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return math.hypot(*p.shape)
    sp, st = surface(p), surface(t)
    to_target = cKDTree(st).query(sp)[0]
    to_pred = cKDTree(sp).query(st)[0]
    if pooled:
        return float(np.percentile(np.concatenate([to_target, to_pred]), 95))
    return float(max(np.percentile(to_target, 95), np.percentile(to_pred, 95)))


def sequence_metrics(pred: np.ndarray, target: np.ndarray, empty_rule: str = "standard") -> dict[str, float]:
    """Dice over the whole ``[T, H, W]`` sequence (empty masks by ``empty_rule``) and the mean per-frame HD95;
    under the original's rule, its volume Dice and HD95 (module doc)."""
    p, t = _pair(pred, target)
    if p.ndim != 3:
        raise InputError(f"sequence masks must be [T, H, W], got shape {p.shape}")
    if empty_rule == "original":
        found = bool(p.any()) and bool(t.any())
        return {"dice": dice(p, t, empty_rule), "hd95": hd95(p, t, pooled=True) if found else 0.0}
    return {"dice": dice(p, t, empty_rule),
            "hd95": float(np.mean([hd95(a, b) for a, b in zip(p, t, strict=True)]))}


def segmentation_metrics(sequences: Mapping[str, tuple[np.ndarray, np.ndarray]],
                         empty_rule: str = "standard") -> dict[str, object]:
    """Per-sequence Dice and HD95 of ``{name: (pred [T, H, W], target [T, H, W])}``, and their means."""
    if not sequences:
        raise InputError("no sequences to evaluate")
    per_sequence = {name: sequence_metrics(p, t, empty_rule) for name, (p, t) in sequences.items()}
    return {
        "dice": float(np.mean([m["dice"] for m in per_sequence.values()])),
        "hd95": float(np.mean([m["hd95"] for m in per_sequence.values()])),
        "sequences": per_sequence,
    }
