"""Per-iteration schedules of the recipe: learning rate, weight decay, teacher momentum and temperature."""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """One value per iteration: linear warm-up from ``warmup_start`` to ``base``, then cosine towards ``final``
    (the original's form: the last value stops one step short of ``final``).

    Example:
        >>> cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=2).round(3).tolist()
        [1.0, 0.854, 0.5, 0.146]
    """
    total = epochs * steps_per_epoch
    warmup = min(warmup_epochs * steps_per_epoch, total)
    ramp = np.linspace(warmup_start, base, warmup) if warmup else np.array([])
    steps = np.arange(total - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate([ramp, cosine])


def teacher_temperature_schedule(start: float, end: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """One teacher temperature per epoch: linear from ``start`` to ``end`` over ``warmup_epochs``."""
    warmup = min(warmup_epochs, epochs)
    return np.concatenate([np.linspace(start, end, warmup), np.full(epochs - warmup, end)])
