"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A training checkpoint is a dict of tensors, numbers, strings and containers (no custom classes), so it is
read back with ``torch.load(weights_only=True)`` like any other file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from endofm.errors import CheckpointError
from endofm.io import atomic_write
from endofm.models.checkpoint import TRAINING_FORMAT
from endofm.models.state import read_state


def capture_rng_state() -> dict[str, Any]:
    """The random states a run draws from: Python's, torch's CPU generator and every CUDA generator."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format tag) atomically: a crash mid-write leaves the previous file intact."""
    payload = {"format": TRAINING_FORMAT, **state}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_state` (safely: ``weights_only``)."""
    state = read_state(path)
    if state.get("format") != TRAINING_FORMAT:
        raise CheckpointError(f"{path}: not an endofm training checkpoint (cannot resume from it)")
    return state
