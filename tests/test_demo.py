"""The demo pipeline end to end at a tiny scale."""

from __future__ import annotations

import json
import re

import pytest

from endofm.demo import DemoConfig, format_table, run_demo, stages
from endofm.errors import InputError


def test_the_tiny_demo_writes_a_report_naming_every_stage(tmp_path):
    lines: list[str] = []
    config = DemoConfig(out_dir=str(tmp_path / "demo"), videos=10, pretrain_clips=16, pretrain_steps=2,
                        probe_videos=12, epochs={"classify": 1, "segment": 1, "detect": 1}, progress=False)
    results = run_demo(config, log=lines.append)
    out = tmp_path / "demo"
    for name in ("report.md", "report.html", "results.json", "config.yaml", "pretrain/teacher/config.json",
                 "finetune/classify/metrics.json", "finetune/segment/metrics.json", "finetune/detect/metrics.json",
                 "predict/predictions.json", "predict/segmentation_overlay.png", "predict/detection_frames.png",
                 "predict/classification.png", "attention/attention_grid.png"):
        assert (out / name).is_file(), name
    assert results["pretrain"]["steps"] == 2
    assert set(results["timings"]) == set(stages())
    assert sum(line.endswith(" s") for line in lines) == len(stages())
    markdown = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for stage in stages()[:-1]:
        assert f"| {stage} |" in markdown and f"<td>{stage}</td>" in page
    for task in ("classify", "segment", "detect"):
        assert f"| {task} |" in markdown
    assert all((out / p).is_file() for p in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown))
    assert re.findall(r"<img src='([^']*)'", page) and all(
        src.startswith("data:image/png;base64,") for src in re.findall(r"<img src='([^']*)'", page))
    frozen = json.loads((out / "results.json").read_text())["frozen"]
    assert list(frozen) == ["pretrained", "random (seed 0)", "random (seed 1)", "random (seed 2)"]
    probe_test = (out / "data" / "probe" / "splits" / "test.txt").read_text().split()
    assert all(scores["test_videos"] == len(probe_test) > 0 for scores in frozen.values())
    assert all(f"| {name} |" in markdown for name in frozen if name != "pretrained")
    assert all(0.0 <= scores["knn_accuracy_max_pool"] <= 1.0 for scores in frozen.values())
    assert "k-NN, max-pooled" in markdown and "k-NN, max-pooled" in format_table(results)
    assert "pretrained" in format_table(results)


def test_the_demo_fine_tunes_the_original_systems_on_request(tmp_path):
    """``--original-models``: the segmenter is the original's TransUNet and the detector its STFT, and the
    predict stage runs the TransUNet."""
    config = DemoConfig(out_dir=str(tmp_path / "demo"), videos=10, pretrain_clips=16, pretrain_steps=2,
                        probe_videos=12, epochs={"classify": 1, "segment": 1, "detect": 1}, progress=False,
                        original_models=True)
    results = run_demo(config, log=lambda line: None)
    out = tmp_path / "demo"
    models = {task: json.loads((out / "finetune" / task / "model" / "config.json").read_text())["model"]
              for task in ("segment", "detect")}
    assert models == {"segment": "transunet", "detect": "stft"}
    assert (out / "predict" / "segmentation_overlay.png").is_file()
    assert json.loads((out / "predict" / "predictions.json").read_text())["task"] == "segment"
    assert "segment_transunet_cpu" in results["settings"]["fine-tune recipes"]


def test_epochs_of_a_task_the_demo_does_not_fine_tune_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"epochs names \['segmnt'\]"):
        run_demo(DemoConfig(out_dir=str(tmp_path / "demo"), epochs={"segmnt": 1}))
    assert not (tmp_path / "demo").exists()
