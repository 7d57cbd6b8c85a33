"""The PolypDiag recipes: the original protocol value for value (classify_original), the default with its
sampling and views but selection kept apart from the test split (classify), the CPU recipe's named options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from endofm.cli.main import main
from endofm.config import load_config
from endofm.engine.optim import OptimConfig
from endofm.engine.schedules import lr_schedule
from endofm.errors import ConfigError
from endofm.tasks.classify import ClassifyConfig
from endofm.tasks.finetune import build_backbone

TINY = ["model.arch=endofm_vit_micro", "model.num_heads=2", "run.progress=false", "run.num_workers=0",
        "run.device=cpu", "run.epochs=1", "run.batch_size=2", "data.num_frames=2", "data.size=32"]


def test_the_recipes_name_their_sampling_views_and_selection():
    default = load_config(ClassifyConfig, "classify", kind="finetune")
    original = load_config(ClassifyConfig, "classify_original", kind="finetune")
    cpu = load_config(ClassifyConfig, "classify_cpu", kind="finetune")
    for config in (default, original):
        assert (config.data.sampling, config.data.sampling_rate, config.data.target_fps, config.data.view) == (
            "original", 32, 30.0, "original")
        assert (config.data.num_frames, config.data.size, config.run.epochs, config.run.batch_size) == (8, 224, 20, 4)
        assert config.optim.schedule == "cosine_epoch" and config.optim.lr == 0.001 and config.optim.scale_lr
    assert not default.selection.select_on_test and default.data.splits.test == "auto"
    assert original.selection.select_on_test and original.data.splits.test == "val"
    assert original.run.precision == "fp32" and original.pool == "cls"
    assert not original.run.drop_last and default.run.drop_last  # the original trains the last, smaller batch
    assert (cpu.data.sampling, cpu.data.view) == ("spread", "center")
    with pytest.raises(ConfigError, match="data.sampling"):
        load_config(ClassifyConfig, "classify", ["data.sampling=uniform"], kind="finetune")


def test_the_per_epoch_cosine_is_torchs_cosine_annealing_stepped_at_epoch_ends():
    epochs, steps = 5, 3
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=0)
    expected = []
    for _ in range(epochs):
        expected += [optimizer.param_groups[0]["lr"]] * steps
        optimizer.step()
        scheduler.step()
    ours = lr_schedule(OptimConfig(lr=0.4, schedule="cosine_epoch"), 256, epochs, steps)
    assert ours.tolist() == pytest.approx(expected, rel=1e-12)


def test_the_original_protocol_runs_and_says_it_selected_on_test(polypdiag_root: Path, tmp_path: Path):
    out = tmp_path / "original"
    with pytest.raises(ConfigError, match="--init endo_fm.pth"):
        build_backbone(load_config(ClassifyConfig, "classify_original", kind="finetune").model)
    assert main(["finetune", "classify", "--data", str(polypdiag_root), "--config", "classify_original",
                 "--out", str(out), *TINY, "run.batch_size=5", "model.require_init=false"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["select_on_test"] and "select-on-test" in report["protocol"]
    train_videos = len((polypdiag_root / "splits" / "train.txt").read_text().split())
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert train_videos % 5 and sum("step" in record for record in steps) == -(-train_videos // 5)  # last smaller
    assert report["splits"] == {"train": "train", "val": "val", "test": "val"}
    data = json.loads((out / "model" / "config.json").read_text())["metadata"]["data"]
    assert (data["sampling"], data["sampling_rate"], data["view"]) == ("original", 32, "original")
    assert main(["evaluate", "classify", "--checkpoint", str(out / "model"), "--data", str(polypdiag_root),
                 "--split", "val", "--out", str(tmp_path / "m.json")]) == 0


def test_the_default_recipe_keeps_validation_and_test_apart(polypdiag_root: Path, tmp_path: Path):
    out = tmp_path / "default"
    assert main(["finetune", "classify", "--data", str(polypdiag_root), "--config", "classify",
                 "--out", str(out), *TINY]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert not report["select_on_test"] and report["splits"]["val"] != report["splits"]["test"]
