"""Schedules of the pretraining recipe alone: the teacher temperature (the learning rate, weight decay and
teacher momentum follow :func:`endofm.engine.schedules.cosine_schedule`)."""

from __future__ import annotations

import numpy as np


def teacher_temperature_schedule(start: float, end: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """One teacher temperature per epoch: linear from ``start`` to ``end`` over ``warmup_epochs``."""
    warmup = min(warmup_epochs, epochs)
    return np.concatenate([np.linspace(start, end, warmup), np.full(epochs - warmup, end)])
