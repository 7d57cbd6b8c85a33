"""Pretraining learns: a short run's frozen teacher beats random weights of the same architecture on k-NN."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

from endofm.data.synthetic import write_polypdiag, write_pretrain
from endofm.models.checkpoint import load_checkpoint
from endofm.models.registry import build_model
from endofm.tasks.probe import evaluate_frozen

RECIPE = "cpu_micro"
CLIPS, EPOCHS, PROBE_VIDEOS = 1000, 5, 400


@pytest.mark.slow
def test_a_short_run_lifts_knn_accuracy_above_random_weights(tmp_path: Path) -> None:
    """The demo's recipe for a quarter of its steps (5 epochs of 62 steps, the schedules run to their end),
    through the command as a user runs it, with at most two threads (a shared machine slows it the least). The
    probe is a held-out PolypDiag-layout set (200 memory and 200 test videos) embedded by the maximum of the
    patch tokens (``pool=max``), where the gain shows early; the CLS k-NN needs the demo's full 1240 steps."""
    clips, probe, half = tmp_path / "clips", tmp_path / "probe", CLIPS // 2
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(write_pretrain, clips, half, 0, num_frames=16, size=64),
                pool.submit(write_pretrain, clips, CLIPS - half, 0, first=half, num_frames=16, size=64),
                pool.submit(write_polypdiag, probe, PROBE_VIDEOS, 11, num_frames=16, size=64,
                            fractions=(0.5, 0.0, 0.5))]
        for job in jobs:
            job.result()
    run = tmp_path / "run"
    threads = str(min(2, os.cpu_count() or 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    subprocess.run([sys.executable, "-m", "endofm", "pretrain", "--config", RECIPE, f"data.manifest={clips}",
                    f"run.out_dir={run}", f"run.epochs={EPOCHS}", "run.num_workers=0", "run.progress=false"],
                   check=True, env=env)
    options = {"num_frames": 16, "size": 64, "pool": "max"}
    pretrained = evaluate_frozen(load_checkpoint(run / "teacher").backbone, probe, **options)["knn_accuracy"]
    random_scores = []
    for seed in range(3):
        torch.manual_seed(seed)
        random_scores.append(evaluate_frozen(build_model("endofm_vit_micro"), probe, **options)["knn_accuracy"])
    assert pretrained > max(random_scores) + 0.05, (pretrained, random_scores)
