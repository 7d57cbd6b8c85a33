"""``endofm reproduce`` end to end at tiny scale: the three protocols on the synthetic corpus's layouts from a
micro checkpoint in the original flat layout, the table beside the paper's, released models evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from endofm.cli.main import main
from endofm.data.synthetic import write_cvc, write_kumc, write_polypdiag
from endofm.models.checkpoint import export_original
from endofm.models.heads import DINOHead
from endofm.models.registry import build_model
from endofm.tasks.reproduce import reproduce

TINY = ["--set", "classify:data.size=32", "--set", "classify:data.num_frames=2",
        "--set", "detect:data.short_side=32", "--set", "detect:data.max_size=48"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sub-folders `endofm data synth` writes, tiny, and a micro teacher as ``endo_fm.pth`` (flat layout)."""
    root = tmp_path_factory.mktemp("reproduce")
    write_polypdiag(root / "data" / "polypdiag", 10, num_frames=8, size=32)
    write_cvc(root / "data" / "cvc", 5, length_range=(3, 4), size=32)
    write_kumc(root / "data" / "kumc", 3, num_frames=4, size=32)
    backbone = build_model("endofm_vit_micro")
    export_original(root / "endo_fm.pth", backbone, DINOHead(backbone.embed_dim, 64, 32, 16))
    return root


def test_quick_runs_the_three_protocols_and_writes_the_table(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "table"
    assert main(["reproduce", "--data", str(corpus / "data"), "--checkpoint", str(corpus / "endo_fm.pth"),
                 "--num-heads", "2", "--out", str(out), "--quick", *TINY]) == 0
    report = json.loads((out / "reproduce.json").read_text())
    rows = {row["task"]: row for row in report["rows"]}
    assert report["quick"] and list(rows) == ["classify", "segment", "detect"]
    assert [rows[t]["paper"] for t in rows] == [90.7, 73.9, 84.1]
    assert [rows[t]["released"] for t in rows] == [91.5, 76.6, 84.0]
    for task, row in rows.items():
        assert row["ours"] is not None and 0.0 <= row["ours"] <= 100.0, task
        assert row["protocol"] in ("selection on test", "selection on validation", "last model, nothing selected")
        assert row["model"], task
        assert (out / task / "metrics.json").is_file()
        steps = [json.loads(line) for line in (out / task / "log.jsonl").read_text().splitlines()]
        assert 1 <= sum("step" in record for record in steps) <= 2, task  # --quick: an epoch of two steps
    assert rows["classify"]["recipe"] == "classify_original" and rows["classify"]["protocol"] == "selection on test"
    assert rows["classify"]["split"] == "val"  # the original tests (and selects) on val.txt
    assert rows["detect"]["recipe"] == "detect_original"
    assert rows["detect"]["protocol"] == "last model, nothing selected"  # the original evaluates its last model
    assert rows["segment"]["recipe"] == "segment_original" and "its own train/test splits" in rows["segment"]["note"]
    table = (out / "reproduce.md").read_text()
    assert "Quick run" in table and "| 90.7 | 91.5 |" in table and "selection on test (tested on val)" in table


def test_released_models_are_evaluated_and_missing_datasets_skipped(corpus: Path, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    assert main(["finetune", "classify", "--data", str(corpus / "data" / "polypdiag"), "--config", "classify_cpu",
                 "--out", str(trained), "model.arch=endofm_vit_micro", "run.epochs=1", "run.progress=false",
                 "run.num_workers=0", "data.size=32"]) == 0
    only = tmp_path / "only"
    only.mkdir()
    (only / "PolypDiag").symlink_to(corpus / "data" / "polypdiag")  # the original folder name
    out = tmp_path / "released"
    assert main(["reproduce", "--data", str(only), "--out", str(out),
                 "--evaluate-only", f"classify={trained / 'model'}"]) == 0
    rows = {row["task"]: row for row in json.loads((out / "reproduce.json").read_text())["rows"]}
    assert rows["classify"]["protocol"] == "released model, evaluated" and rows["classify"]["split"] == "val"
    assert rows["classify"]["ours"] is not None
    assert rows["segment"]["ours"] is None and rows["segment"]["note"].startswith("skipped")
    assert rows["detect"]["note"].startswith("skipped")


def test_bad_input_is_one_clear_error(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["reproduce", "--data", str(corpus / "data"), "--out", str(tmp_path / "a")]) == 1
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["reproduce", "--data", str(tmp_path), "--checkpoint", str(corpus / "endo_fm.pth"),
                 "--out", str(tmp_path / "b")]) == 1
    assert "holds none of the datasets" in capsys.readouterr().err
    assert main(["reproduce", "--data", str(corpus / "data"), "--checkpoint", str(corpus / "endo_fm.pth"),
                 "--out", str(tmp_path / "c"), "--set", "classify=run.epochs"]) == 1
    assert "TASK:KEY=VALUE" in capsys.readouterr().err


def test_epoch_steps_ends_each_epoch_early_and_still_evaluates(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "short"
    assert main(["finetune", "classify", "--data", str(corpus / "data" / "polypdiag"), "--config", "classify_cpu",
                 "--out", str(out), "model.arch=endofm_vit_micro", "run.epochs=2", "run.batch_size=2",
                 "run.epoch_steps=1", "run.progress=false", "run.num_workers=0", "data.size=32"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "step" in r] == [1, 2]  # 6 training videos would make 3 steps an epoch
    assert len(json.loads((out / "metrics.json").read_text())["val_history"]) == 2


def test_runs_give_mean_and_std_with_their_seeds(corpus: Path, tmp_path: Path) -> None:
    only = tmp_path / "only"
    only.mkdir()
    (only / "polypdiag").symlink_to(corpus / "data" / "polypdiag")
    out = tmp_path / "runs"
    assert main(["reproduce", "--data", str(only), "--checkpoint", str(corpus / "endo_fm.pth"), "--num-heads", "2",
                 "--out", str(out), "--quick", "--runs", "2", *TINY[:4]]) == 0
    row = {r["task"]: r for r in json.loads((out / "reproduce.json").read_text())["rows"]}["classify"]
    assert row["runs"] == 2 and row["seeds"] == [0, 1] and len(row["values"]) == 2
    assert row["ours"] == pytest.approx(sum(row["values"]) / 2, abs=0.01) and row["std"] is not None
    for seed in (0, 1):
        config = (out / "classify" / f"run{seed}" / "config.yaml").read_text()
        assert f"seed: {seed}" in config
    assert f"± {row['std']:.1f} (2 runs)" in (out / "reproduce.md").read_text()
    assert main(["reproduce", "--data", str(only), "--checkpoint", str(corpus / "endo_fm.pth"),
                 "--out", str(tmp_path / "bad"), "--runs", "0"]) == 1


def test_a_failing_protocol_becomes_its_rows_note_and_the_exit_status(corpus: Path, tmp_path: Path) -> None:
    only = tmp_path / "only"
    only.mkdir()
    (only / "polypdiag").symlink_to(corpus / "data" / "polypdiag")
    results = reproduce(only, tmp_path / "lib", str(corpus / "endo_fm.pth"), quick=True, num_heads=2, progress=False,
                        overrides={"classify": ["run.batch_size=1000"]})
    assert results[0].task == "classify" and results[0].value is None
    assert results[0].note.startswith("failed: run.batch_size=1000 is larger than the training set")
    assert main(["reproduce", "--data", str(only), "--checkpoint", str(corpus / "endo_fm.pth"), "--num-heads", "2",
                 "--out", str(tmp_path / "cli"), "--quick", "--quiet", "--set", "classify:run.batch_size=1000"]) == 1
    row = json.loads((tmp_path / "cli" / "reproduce.json").read_text())["rows"][0]
    assert row["note"].startswith("failed: run.batch_size=1000")
