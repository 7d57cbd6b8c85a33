"""Every subcommand over a table of bad inputs: a missing path, a folder, a text file, a truncated file, a file
of another kind, zero and negative numbers, an existing output. Each must exit non-zero with one error line
naming the thing, print no traceback, and leave every file already on disk as it was."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
from pathlib import Path

import pytest
import torch

from endofm.cli.main import main
from endofm.models import build_model, save_pretrained
from endofm.models.heads import LinearClassifier
from endofm.models.segmentation import TransUNet, TransUNetConfig
from endofm.tasks.folder import save_task_folder
from tests.conftest import write_test_video


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace of good and bad inputs, and earlier results that no failed command may touch."""
    root = tmp_path_factory.mktemp("bad_inputs")
    backbone = build_model("endofm_vit_micro")
    save_pretrained(root / "model", backbone)
    save_task_folder(root / "classifier", "classify", backbone, LinearClassifier(backbone.embed_dim, 2),
                   {"in_dim": backbone.embed_dim, "num_labels": 2},
                   {"num_frames": 4, "size": 32, "normalization": "polypdiag", "classes": ["normal", "polyp"]})
    torch.save(TransUNet(TransUNetConfig(hidden=64, depth=1, num_heads=1, resnet_width=32, resnet_units=(1, 1, 1),
                                         decoder_channels=(8, 8, 8, 8))).state_dict(), root / "cvc.pth")
    write_test_video(root / "case.mp4", num_frames=6)
    (root / "videos").mkdir()
    write_test_video(root / "videos" / "a.mp4", num_frames=6)
    (root / "notes.txt").write_text("hello\nnot a checkpoint, not a video\n")
    good = (root / "model" / "model.safetensors").read_bytes()
    (root / "truncated.pth").write_bytes(good[: len(good) // 3])
    (root / "truncated.mp4").write_bytes((root / "case.mp4").read_bytes()[:300])
    (root / "folder").mkdir()
    (root / "folder" / "keep.txt").write_text("a user's file\n")
    (root / "earlier.npz").write_bytes(b"an earlier result")
    (root / "earlier.json").write_text("{}\n")
    (root / "pred").mkdir()
    (root / "pred" / "predictions.json").write_text("{\"input\": \"A.mp4\"}\n")
    (root / "att").mkdir()
    (root / "att" / "attention_grid.png").write_bytes(b"an earlier grid")
    run = root / "run" / "checkpoints"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"an earlier run")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


M, C, V = "--model", "--checkpoint", "case.mp4"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
# (argv, what the one error line must name)
CASES = [
    # a missing path
    (["info", "missing.pth"], "missing.pth"),
    (["convert", "missing.pth", "out_model"], "missing.pth"),
    (["embed", "missing.mp4", C, "model", "--out", "f.npz"], "missing.mp4"),
    (["predict", V, C, "missing_model", "--out", "p"], "missing_model"),
    (["visualize", "attention", "missing.mp4", C, "model", "--out", "a"], "missing.mp4"),
    (["evaluate", "knn", "--data", "missing_data", C, "model"], "missing_data"),
    (["evaluate", "classify", C, "classifier", "--data", "missing_data"], "missing_data"),
    (["data", "scan", "missing_dir", "--out", "m.csv"], "missing_dir"),
    (["data", "transcode", "missing_dir", "t"], "missing_dir"),
    (["finetune", "classify", "--config", "classify_cpu", "--init", "missing.pth", "--data", "folder", "--out",
      "r2"], "missing.pth"),
    (["reproduce", "--data", "missing_data", "--out", "rep", C, "model"], "missing_data"),
    # a folder where a file is expected
    (["info", "folder"], "folder"),
    (["embed", V, M, "endofm_vit_micro", "--out", "folder"], "folder"),
    (["evaluate", "classify", C, "classifier", "--data", "folder", "--out", "folder"], "folder"),
    (["predict", "folder", C, "classifier", "--out", "p"], "folder"),
    # a text file
    (["info", "notes.txt"], "notes.txt"),
    (["convert", "notes.txt", "out_model"], "notes.txt"),
    (["embed", V, C, "notes.txt", "--out", "f.npz"], "notes.txt"),
    (["embed", "notes.txt", M, "endofm_vit_micro", "--out", "f.npz"], "notes.txt"),
    (["predict", V, C, "notes.txt", "--out", "p"], "notes.txt"),
    (["evaluate", "segment", C, "notes.txt", "--data", "folder"], "notes.txt"),
    (["visualize", "attention", V, C, "notes.txt", "--out", "a"], "notes.txt"),
    (["finetune", "classify", "--config", "notes.txt", "--out", "r2"], "notes.txt"),
    (["data", "scan", "videos", "--out", "notes.txt"], "notes.txt"),
    # a truncated file
    (["info", "truncated.pth"], "truncated.pth"),
    (["embed", V, C, "truncated.pth", "--out", "f.npz"], "truncated.pth"),
    (["embed", "truncated.mp4", M, "endofm_vit_micro", "--out", "f.npz"], "truncated.mp4"),
    (["predict", "truncated.mp4", C, "classifier", "--out", "p"], "truncated.mp4"),
    # a file of another kind
    (["embed", V, C, "cvc.pth", "--out", "f.npz"], "cvc.pth: a fine-tuned transunet"),
    (["visualize", "attention", V, C, "cvc.pth", "--out", "a"], "endofm evaluate segment"),
    (["predict", V, C, "model", "--out", "p"], "model"),
    (["evaluate", "detect", C, "classifier", "--data", "folder"], "classify model"),
    (["finetune", "classify", "--config", "detect_cpu", "--out", "r2"], "that is a detect recipe"),
    (["evaluate", "knn", "--data", "folder", M, "endofm_vit_micro", "--num-heads", "2"], "--num-heads"),
    # zero and negative numbers, values out of range, options that do not apply
    (["embed", V, M, "endofm_vit_micro", "--out", "f.npz", "--batch-size", "0"], "--batch-size"),
    (["embed", V, M, "endofm_vit_micro", "--out", "f.npz", "--frames", "0"], "--frames"),
    (["embed", V, M, "endofm_vit_micro", "--out", "f.npz", "--window", "-4"], "--window"),
    (["embed", V, M, "endofm_vit_micro", "--out", "f.npz", "--stride", "2"], "--stride"),
    (["info", "model", "--num-heads", "0"], "--num-heads"),
    (["info", "model", "--num-heads", "3"], "--num-heads"),
    (["predict", V, C, "classifier", "--out", "p", "--num-heads", "-1"], "--num-heads"),
    (["predict", V, C, "classifier", "--out", "p", "--score-threshold", "1.5"], "--score-threshold"),
    (["evaluate", "classify", C, "classifier", "--data", "folder", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "knn", "--data", "folder", C, "model", "--k", "0"], "--k"),
    (["data", "synth", "s", "--videos", "-1"], "--videos"),
    (["data", "scan", "videos", "--out", "m.csv", "--clip-seconds", "-1"], "--clip-seconds"),
    (["data", "transcode", "videos", "t", "--short-side", "0"], "--short-side"),
    (["finetune", "classify", "--num-heads", "0", "--out", "r2"], "--num-heads"),
    pytest.param(["embed", V, C, "model", "--out", "f.npz", "--device", "cuda:0"], "cuda:0", marks=NO_GPU),
    pytest.param(["predict", V, C, "classifier", "--out", "p", "--device", "cuda"], "cuda", marks=NO_GPU),
    # an existing output
    (["embed", V, M, "endofm_vit_micro", "--out", "earlier.npz"], "earlier.npz"),
    (["evaluate", "knn", "--data", "folder", M, "endofm_vit_micro", "--out", "earlier.json"], "earlier.json"),
    (["evaluate", "classify", C, "classifier", "--data", "folder", "--out", "earlier.json"], "earlier.json"),
    (["convert", "model", "folder"], "folder"),
    (["predict", V, C, "classifier", "--out", "pred"], "pred"),
    (["visualize", "attention", V, C, "model", "--out", "att"], "att"),
    (["data", "synth", "folder", "--videos", "2"], "folder"),
    (["data", "scan", "videos", "--out", "earlier.json"], "earlier.json"),
    (["demo", "--out", "folder"], "folder"),
    (["reproduce", "--data", "folder", "--out", "folder", C, "model"], "folder"),
    (["finetune", "classify", "--config", "classify_cpu", "--data", "folder", "--out", "run", "--init", "model"],
     "run"),
    (["pretrain", "--config", "cpu_micro", "data.manifest=folder", "run.out_dir=run"], "run"),
    (["finetune", "classify", "--config", "classify_cpu", "--out", "notes.txt"], "notes.txt"),
    (["pretrain", "--config", "cpu_micro", "run.out_dir=notes.txt"], "notes.txt"),
    (["predict", V, C, "classifier", "--out", "notes.txt"], "notes.txt"),
    (["convert", "model", "notes.txt"], "notes.txt"),
    (["pretrain", "--config", "cpu_micro", "data.manifest=missing.csv", "run.out_dir=pr"], "missing.csv"),
]


@pytest.mark.parametrize(("argv", "named"), CASES)
def test_bad_input_gets_one_line_and_changes_nothing(ws: Path, argv: list[str], named: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ws)
    before = _snapshot(ws)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:  # pragma: no cover - main returns its status
            code = exit.code
    printed = out.getvalue() + err.getvalue()
    assert code not in (0, None), f"{argv} exited 0:\n{printed}"
    assert "Traceback" not in printed, printed
    errors = [line for line in err.getvalue().splitlines() if "error:" in line]
    assert len(errors) == 1, f"{argv}: expected one error line, got:\n{err.getvalue()}"
    assert named in errors[0], f"{argv}: the error does not name {named!r}: {errors[0]}"
    assert _snapshot(ws) == before, f"{argv} changed files on disk"


def test_written_files_get_the_mode_of_a_plain_write(ws: Path, tmp_path: Path) -> None:
    """safetensors (convert, model folders) and every other file: 0o666 less the umask, as ``open`` gives."""
    umask = os.umask(0o022)
    os.umask(umask)
    assert main(["convert", str(ws / "model"), str(tmp_path / "converted")]) == 0
    for path in (tmp_path / "converted").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def test_overwrite_replaces_an_earlier_result(ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "converted"
    assert main(["convert", str(ws / "model"), str(out)]) == 0
    assert main(["convert", str(ws / "model"), str(out)]) == 1
    assert main(["convert", str(ws / "model"), str(out), "--overwrite"]) == 0


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_transcode_names_each_failed_file_once_and_exits_1(ws: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bad.mp4").write_bytes(b"not a video")
    code, out, _ = _run(["data", "transcode", str(tmp_path / "src"), str(tmp_path / "dst"), "--quiet"])
    assert code == 1 and out.count("bad.mp4") == 1, out


def test_ctrl_c_says_how_to_continue_where_resume_applies(ws: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("endofm.config.load_config", interrupted)
    code, _, err = _run(["finetune", "classify", "--out", str(tmp_path / "run")])
    assert code == 130 and "run the same command with --resume to continue" in err
    monkeypatch.setattr("endofm.tasks.embed.find_videos", interrupted)
    code, _, err = _run(["embed", str(ws / "case.mp4"), "--model", "endofm_vit_micro", "--out", str(tmp_path / "f")])
    assert code == 130 and err.strip() == "endofm: interrupted"


def test_options_reach_what_they_name(ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``reproduce --num-heads`` reaches the evaluated models; ``--which`` and ``--quiet`` reach evaluate knn
    and visualize; ``finetune --num-heads``/``--quiet`` become ``model.num_heads``/``run.progress``."""
    import endofm.tasks.reproduce as reproduce
    from endofm.errors import InputError

    calls: list[dict[str, object]] = []

    def stopped(path: object, num_heads: object = None) -> None:
        calls.append({"num_heads": num_heads})
        raise InputError("stopped")

    monkeypatch.setattr(reproduce, "load_finetuned", stopped)
    (tmp_path / "data" / "PolypDiag").mkdir(parents=True)
    _run(["reproduce", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "rep"), "--num-heads", "4",
          "--evaluate-only", "classify=polypdiag.pth"])
    assert calls and calls[0]["num_heads"] == 4

    seen: dict[str, object] = {}

    def load_checkpoint(path: object, num_heads: object = None, which: str = "teacher") -> None:
        seen.update(which=which, num_heads=num_heads)
        raise KeyboardInterrupt

    monkeypatch.setattr("endofm.models.checkpoint.load_checkpoint", load_checkpoint)
    _run(["evaluate", "knn", "--data", "x", "--checkpoint", "c.pth", "--which", "student", "--num-heads", "2"])
    assert seen == {"which": "student", "num_heads": 2}
    seen.clear()
    _run(["visualize", "attention", "v.mp4", "--checkpoint", "c.pth", "--out", str(tmp_path / "a"), "--which",
          "student"])
    assert seen["which"] == "student"

    def load_config(cls: object, path: object, overrides: list[str], kind: str | None = None) -> None:
        seen["overrides"] = overrides
        raise KeyboardInterrupt

    monkeypatch.setattr("endofm.config.load_config", load_config)
    _run(["finetune", "classify", "--num-heads", "4", "--quiet"])
    assert {"model.num_heads=4", "run.progress=false"} <= set(seen["overrides"])
