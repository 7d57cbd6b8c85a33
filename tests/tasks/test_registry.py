"""The task registry is the one description of a task: a fourth task registered there (and nowhere else) is
fine-tuned, evaluated, loaded, predicted and reproduced by the same commands as the three shipped ones."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from endofm.cli.main import main
from endofm.engine.trainer import RunConfig
from endofm.models.registry import build_model
from endofm.tasks import classify, detect, segment
from endofm.tasks.base import FinetunedModel, LoadedFinetuned, PaperResult, Prediction, Task, TaskOption, preset_input
from endofm.tasks.folder import save_task_folder
from endofm.tasks.registry import TASKS


@dataclass
class CountData:
    root: str = ""
    size: int = 32


@dataclass
class CountConfig:
    data: CountData = field(default_factory=CountData)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/count", epochs=1))


CALLS: dict[str, Any] = {}


def _finetune(config: CountConfig, resume: bool = False) -> dict[str, Any]:
    CALLS["finetune"] = config
    backbone = build_model("endofm_vit_micro")
    torch.manual_seed(0)
    head = nn.Linear(backbone.embed_dim, 3)
    save_task_folder(Path(config.run.out_dir) / "model", "count", backbone, head,
                   {"in_features": backbone.embed_dim, "out_features": 3}, {"size": config.data.size})
    return {}


def _assemble(found: FinetunedModel) -> tuple[nn.Module, Any]:
    return found.head, preset_input("imagenet", (found.data["size"],) * 2, 4)


def _evaluate(loaded: LoadedFinetuned, root: str, split: str, device: str, batch_size: int,
              progress: bool = False, strict: bool = False) -> dict[str, Any]:
    CALLS["evaluate"] = (loaded.task, root, split, batch_size, strict, progress)
    return {"count_f1": 0.25, "videos": 2}


def _predict(loaded: LoadedFinetuned, reader: Any, device: torch.device, progress: bool = False,
             step: int = 1) -> Prediction:
    frames = [{"frame": i, "count": i * step} for i in range(len(reader))]
    return Prediction({"frames": frames, "head_outputs": loaded.model.out_features},
                      {"counts": np.arange(len(reader), dtype=np.int64) * step})


def _draw(image: Any, frame: dict[str, Any], scale: tuple[float, float], arrays: dict[str, np.ndarray]) -> Any:
    CALLS.setdefault("drawn", []).append(int(arrays["counts"]))
    return image


COUNT = Task(
    name="count", help="polyp counting (a test task)", title="Polyp counting", dataset="Counting",
    dataset_folders=("counting",), config_class=CountConfig, finetune=_finetune,
    build_head=lambda config, backbone: nn.Linear(**config), assemble=_assemble, evaluate=_evaluate,
    predict=_predict, draw=_draw,
    csv_rows=lambda frames: (["frame", "count"], [[f["frame"], f["count"]] for f in frames]),
    paper=PaperResult(metric="count_f1", label="F1", paper=50.0, released=60.0, split="val"),
    model_name=lambda config: "a counter",
    evaluate_options=(TaskOption("--strict", "count strictly", type=lambda v: v == "yes", default=False),),
    predict_options=(TaskOption("--step", "count step", type=int, default=1),),
)


@pytest.fixture
def count_task(monkeypatch: pytest.MonkeyPatch) -> Task:
    monkeypatch.setitem(TASKS, "count", COUNT)
    CALLS.clear()
    return COUNT


def test_the_registry_lists_the_three_tasks_each_declared_by_its_module() -> None:
    assert list(TASKS) == ["classify", "segment", "detect"]
    assert [TASKS[name] for name in TASKS] == [classify.TASK, segment.TASK, detect.TASK]


def test_a_registered_fourth_task_runs_through_every_command(count_task: Task, tmp_path: Path, user_video: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    import endofm

    assert main(["finetune", "--help"]) == 0
    assert "polyp counting (a test task)" in capsys.readouterr().out
    assert main(["evaluate", "count", "--help"]) == 0
    assert "--strict" in capsys.readouterr().out

    data, run = tmp_path / "data" / "counting", tmp_path / "run"
    data.mkdir(parents=True)
    assert main(["finetune", "count", "--data", str(data), "--out", str(run), "data.size=48"]) == 0
    assert CALLS["finetune"].data.root == str(data) and CALLS["finetune"].data.size == 48

    loaded = endofm.load_finetuned(run / "model")
    assert loaded.task == "count" and isinstance(loaded.model, nn.Linear) and loaded.input_spec.size == (48, 48)

    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", "count", "--checkpoint", str(run / "model"), "--data", str(data), "--split", "val",
                 "--batch-size", "3", "--strict", "yes", "--out", str(metrics)]) == 0
    assert CALLS["evaluate"] == ("count", str(data), "val", 3, True, True)
    assert json.loads(metrics.read_text())["metrics"]["count_f1"] == 0.25

    out = tmp_path / "pred"
    assert main(["predict", str(user_video), "--checkpoint", str(run / "model"), "--out", str(out), "--step", "2",
                 "--quiet"]) == 0
    report = json.loads((out / "predictions.json").read_text())
    assert report["task"] == "count" and report["head_outputs"] == 3
    rows = list(csv.reader((out / "predictions.csv").open()))
    assert rows[0] == ["frame", "count"] and rows[3] == ["2", "4"] and len(rows) == report["num_frames"] + 1
    np.testing.assert_array_equal(np.load(out / "counts.npz")["counts"], 2 * np.arange(report["num_frames"]))
    assert CALLS["drawn"] == [2 * k for k in range(report["num_frames"])] and (out / "annotated.mp4").is_file()

    table = tmp_path / "table"
    assert main(["reproduce", "--data", str(tmp_path / "data"), "--out", str(table), "--evaluate-only",
                 f"count={run / 'model'}"]) == 0
    row = next(r for r in json.loads((table / "reproduce.json").read_text())["rows"] if r["task"] == "count")
    assert row["ours"] == 25.0 and row["paper"] == 50.0 and "| Polyp counting |" in (table / "reproduce.md").read_text()


def test_a_model_of_an_unregistered_task_is_refused(tmp_path: Path) -> None:
    import endofm
    from endofm.errors import CheckpointError

    backbone = build_model("endofm_vit_micro")
    save_task_folder(tmp_path / "model", "count", backbone, nn.Linear(backbone.embed_dim, 3),
                   {"in_features": backbone.embed_dim, "out_features": 3}, {"size": 32})
    with pytest.raises(CheckpointError, match="unknown task 'count'"):
        endofm.load_finetuned(tmp_path / "model")
