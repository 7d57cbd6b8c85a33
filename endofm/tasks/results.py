"""Printing and writing results: a metrics table, and values made safe for strict JSON."""

from __future__ import annotations

import math
from typing import Any


def print_table(title: str, metrics: dict[str, Any]) -> None:
    """Print the scalar metrics as a two-column table."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    width = max([len(k) for k in scalars] + [6]) + 2
    print(title)
    print(f"{'metric':<{width}}value")
    for key, value in scalars.items():
        print(f"{key:<{width}}{value:.4f}" if isinstance(value, float) else f"{key:<{width}}{value}")


def json_safe(value: Any) -> Any:
    """NaN/inf as None, tensors and numpy scalars as plain numbers (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
