"""The main job on the embedded default: synthetic endoscopy videos -> Endo-FM embeddings -> k-NN table.

It makes a labelled synthetic PolypDiag-style corpus, embeds every video with a backbone (the released
architecture scaled down for CPUs, or a given checkpoint), and measures how well frozen features separate
polyp from non-polyp videos by k-NN (train split as memory, test split as queries), beside a plain
mean-colour baseline. Everything lands in one run folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from endofm.data.synthetic import write_polypdiag
from endofm.data.video import VideoReader
from endofm.io import atomic_write, atomic_write_text
from endofm.metrics.knn import knn_accuracy
from endofm.models.checkpoint import load_checkpoint
from endofm.models.registry import build_model
from endofm.tasks.embed import embed_video


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo`."""

    out_dir: str = "runs/demo"
    videos: int = 40
    seed: int = 0
    model: str = "endofm_vit_mini"
    checkpoint: str | None = None
    num_frames: int = 8
    size: int = 112
    k: int = 5
    device: str = "cpu"


def _read_split(root: Path, name: str) -> list[tuple[Path, int]]:
    lines = (root / "splits" / f"{name}.txt").read_text().split()
    return [(root / "videos" / path, int(label)) for path, label in (line.rsplit(",", 1) for line in lines)]


def _mean_colour(path: Path) -> np.ndarray:
    with VideoReader(path, size=64) as reader:
        return reader.read_all().float().mean(dim=(0, 2, 3)).numpy()


def run_demo(config: DemoConfig) -> dict:
    """Run the demo; returns (and writes to ``out_dir/results.json``) the measured table."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))
    started = time.perf_counter()
    data_root = write_polypdiag(out / "data" / "polypdiag", config.videos, config.seed)
    data_seconds = time.perf_counter() - started

    torch.manual_seed(config.seed)
    model = load_checkpoint(config.checkpoint).backbone if config.checkpoint else build_model(config.model)
    model = model.to(config.device).eval()
    splits = {name: _read_split(data_root, name) for name in ("train", "test")}
    features: dict[str, dict[str, np.ndarray]] = {}
    started = time.perf_counter()
    for name, items in splits.items():
        clips, colours = [], []
        for path, _ in tqdm(items, desc=f"embedding {name}", unit="video"):
            clips.append(embed_video(path, model, config.num_frames, config.size, device=config.device).features[0])
            colours.append(_mean_colour(path))
        features[name] = {"endofm": np.stack(clips), "colour": np.stack(colours),
                          "labels": np.array([label for _, label in items])}
    embed_seconds = time.perf_counter() - started

    train, test = features["train"], features["test"]
    results = {
        "backbone": config.checkpoint or f"{config.model} (random initialisation)",
        "videos": {name: len(items) for name, items in splits.items()},
        "knn_accuracy": {
            kind: knn_accuracy(train[kind], train["labels"], test[kind], test["labels"], config.k)
            for kind in ("endofm", "colour")
        },
        "chance": float(max(np.mean(test["labels"]), 1 - np.mean(test["labels"]))),
        "seconds": {"data": round(data_seconds, 1), "embedding": round(embed_seconds, 1)},
    }

    def write_features(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **{f"{split}_{key}": value for split, d in features.items() for key, value in d.items()})

    atomic_write(out / "features.npz", write_features)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def format_table(results: dict) -> str:
    """The demo's result table as plain text."""
    rows = [("features", f"k-NN accuracy (test, {results['videos']['test']} videos)")]
    rows += [(f"Endo-FM backbone: {results['backbone']}", f"{results['knn_accuracy']['endofm']:.3f}"),
             ("mean colour (baseline)", f"{results['knn_accuracy']['colour']:.3f}"),
             ("majority class (chance)", f"{results['chance']:.3f}")]
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b}" for a, b in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
