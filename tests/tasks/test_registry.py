"""The task registry is the one description of a task: a fourth task registered there (and nowhere else) is
fine-tuned, evaluated, loaded, predicted and reproduced by the same commands as the three shipped ones, gets its
layout in the synthetic corpus and is fine-tuned by the demo."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from endofm.cli.main import main
from endofm.engine.trainer import RunConfig
from endofm.io import atomic_write_text
from endofm.models.registry import build_model
from endofm.tasks import classify, detect, segment
from endofm.tasks.base import (
    DemoSettings,
    FinetunedModel,
    LoadedFinetuned,
    PaperResult,
    Prediction,
    SyntheticLayout,
    Task,
    TaskOption,
    preset_input,
)
from endofm.tasks.folder import save_task_folder
from endofm.tasks.registry import TASKS, register_task


@dataclass
class CountData:
    root: str = ""
    size: int = 32


@dataclass
class CountModel:
    init: str = ""


@dataclass
class CountConfig:
    data: CountData = field(default_factory=CountData)
    model: CountModel = field(default_factory=CountModel)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/count", epochs=1))


CALLS: dict[str, Any] = {}


def _finetune(config: CountConfig, resume: bool = False) -> dict[str, Any]:
    CALLS["finetune"] = config
    backbone = build_model("endofm_vit_micro")
    torch.manual_seed(0)
    head = nn.Linear(backbone.embed_dim, 3)
    save_task_folder(Path(config.run.out_dir) / "model", "count", backbone, head,
                   {"in_features": backbone.embed_dim, "out_features": 3}, {"size": config.data.size})
    atomic_write_text(Path(config.run.out_dir) / "metrics.json", json.dumps({"test": {"count_f1": 0.5}}))
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


def _write_counting(root: Path, videos: int, seed: int) -> dict[str, Any]:
    """The counting layout of the synthetic corpus: one line of counts per video."""
    rng = np.random.default_rng(seed)
    atomic_write_text(root / "counts.txt", "".join(f"{count}\n" for count in rng.integers(0, 4, videos)))
    return {"videos": videos}


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
    synthetic=SyntheticLayout("counting", _write_counting),
)


@pytest.fixture
def count_task(tmp_path: Path) -> Iterator[Task]:
    """The counting task, registered as a task module registers itself (with a demo recipe of its own), and
    removed afterwards."""
    recipe = tmp_path / "count_demo.yaml"
    recipe.write_text("data:\n  size: 40\n")
    demo = DemoSettings(folder="counting", recipe=str(recipe), epochs=3, quick_epochs=1)
    task = register_task(replace(COUNT, demo=demo))
    CALLS.clear()
    yield task
    del TASKS["count"]


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


def test_a_task_name_is_registered_once(count_task: Task) -> None:
    with pytest.raises(ValueError, match="'count' is already registered"):
        register_task(COUNT)
    assert TASKS["count"] is count_task


def test_a_registered_fourth_task_gets_its_synthetic_layout(count_task: Task, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    assert main(["data", "synth", str(out), "--videos", "2", "--pretrain-clips", "1", "--pretrain-frames", "2",
                 "--pretrain-size", "16"]) == 0
    corpus = json.loads((out / "corpus.json").read_text())
    assert list(corpus) == ["seed", "pretrain", "polypdiag", "cvc", "kumc", "counting"]
    assert corpus["counting"] == {"videos": 2} and len((out / "counting" / "counts.txt").read_text().split()) == 2
    assert (out / "kumc" / "test2019" / "Annotation").is_dir()


def test_the_demo_fine_tunes_a_registered_fourth_task(count_task: Task, tmp_path: Path) -> None:
    from endofm.demo import DemoConfig, finetune_task, quick_config, recipe_name, stages

    assert stages() == ("data", "pretrain", "frozen", "classify", "segment", "detect", "count", "predict",
                        "attention", "report")
    assert DemoConfig().epochs == {"classify": 10, "segment": 12, "detect": 4, "count": 3}
    assert quick_config().epochs["count"] == 1 and quick_config(epochs={"count": 5}).epochs == {"count": 5}
    assert recipe_name("count", DemoConfig(original_models=True)) == count_task.demo.recipe
    data, out = tmp_path / "data" / "counting", tmp_path / "finetune" / "count"
    metrics = finetune_task("count", DemoConfig(epochs={"count": 2}, seed=5), tmp_path / "teacher", data, out)
    config = CALLS["finetune"]
    assert (config.data.size, config.data.root, config.model.init) == (40, str(data), str(tmp_path / "teacher"))
    assert (config.run.epochs, config.run.seed, config.run.out_dir) == (2, 5, str(out))
    assert metrics == {"test": {"count_f1": 0.5}}
