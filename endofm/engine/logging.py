"""Run logs: one JSON object per line, PNG plots of the logged curves, and what a run prints as it goes.

On a terminal a run shows a progress bar per epoch; printed to a file or a pipe it writes plain lines instead
(a ``\\r``-updated bar would leave thousands of updates in the file): one every :data:`LINE_INTERVAL_S` seconds
within an epoch, and one per epoch with its figures (validation included) either way.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from endofm.io import atomic_write

LINE_INTERVAL_S = 60.0
"""Printed to a file or a pipe, a run writes a progress line at most this often within an epoch."""


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: standard error, where progress bars go) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def bar_off(progress: bool) -> bool:
    """tqdm's ``disable`` for a bar asked for by ``progress``: off unless standard error is a terminal (a bar
    in a file is thousands of ``\\r`` updates)."""
    return not (progress and is_terminal())


def format_number(value: float) -> str:
    """A logged number as a person reads it: integers whole, very small or large values in exponent form."""
    if isinstance(value, int):
        return str(value)
    if value != 0 and math.isfinite(value) and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.4f}"


def format_values(values: Mapping[str, Any]) -> str:
    """``name value`` pairs of the numbers in ``values`` (other entries are left out)."""
    return "  ".join(f"{key} {format_number(value)}" for key, value in values.items()
                     if isinstance(value, (int, float)) and not isinstance(value, bool))


class EpochProgress:
    """Progress of one epoch: a bar on a terminal (it reaches its total when the epoch's last step is done),
    else a line at most every :data:`LINE_INTERVAL_S` seconds; nothing when not ``enabled``."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True) if enabled and is_terminal() else None
        self.lines = enabled and self.bar is None
        self._printed_at = time.perf_counter()

    def update(self, **values: float) -> None:
        """One step done, with values to show."""
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix({key: format_number(value) for key, value in values.items()}, refresh=False)
            self.bar.update(1)
        elif self.lines and time.perf_counter() - self._printed_at >= LINE_INTERVAL_S:
            self._printed_at = time.perf_counter()
            print(f"{self.desc} step {self.done}/{self.total}  {format_values(values)}", flush=True)

    def close(self) -> None:
        """End the bar (it stays on the screen)."""
        if self.bar is not None:
            self.bar.close()


def epoch_line(epoch: int, epochs: int, values: Mapping[str, Any]) -> str:
    """The line printed at the end of an epoch (1-based ``epoch``): its figures, validation included."""
    return f"epoch {epoch}/{epochs}  {format_values(values)}"


class JsonlLogger:
    """Appends records to ``log.jsonl`` (flushed per record, so a killed run keeps what it logged)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=float) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop step records past ``step`` (a resumed run redoes them)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in read_jsonl(self.path) if line.get("step", -1) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSONL log; a torn last line (a killed writer) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def curve_name(key: str) -> str:
    """A logged key in words: ``val_binary_f1`` -> ``validation binary f1``."""
    return ("validation " + key[4:] if key.startswith("val_") else key).replace("_", " ")


def plot_curves(records: Sequence[dict[str, Any]], keys: Sequence[str], out_dir: str | os.PathLike,
                x_key: str = "step") -> list[Path]:
    """One PNG per key (``out_dir/<key>.png``) of that key against ``x_key`` over the step records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in keys:
        points = [(r[x_key], r[key]) for r in records if key in r and x_key in r and math.isfinite(r[key])]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(*zip(*points, strict=True), linewidth=1.2)
        name = curve_name(key)
        ax.set_title(f"{name} by {x_key}")
        ax.set_xlabel(x_key)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(out_dir) / f"{key}.png"
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        plt.close(fig)
        written.append(path)
    return written
