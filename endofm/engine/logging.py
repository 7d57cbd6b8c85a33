"""Run logs: one JSON object per line, and PNG plots of the logged curves."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from endofm.io import atomic_write


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
        ax.set_xlabel(x_key)
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(out_dir) / f"{key}.png"
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        plt.close(fig)
        written.append(path)
    return written
