"""The ``endofm`` command: results on good input, one clear line and a non-zero exit on bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from endofm import build_model, load_checkpoint
from endofm.cli.main import main


@pytest.fixture
def checkpoint(tmp_path):
    model = build_model("endofm_vit_micro", embed_dim=128, num_heads=2)
    path = tmp_path / "teacher.pth"
    torch.save({f"backbone.{k}": v for k, v in model.state_dict().items()}, path)
    return path, model.eval()


def test_convert_then_info(tmp_path, checkpoint, capsys):
    path, model = checkpoint
    assert main(["convert", str(path), str(tmp_path / "out")]) == 0
    video = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path / "out").backbone(video), model(video))
    capsys.readouterr()
    assert main(["info", str(tmp_path / "out")]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["layout"] == "endofm"
    assert described["sha256"] == hashlib.sha256((tmp_path / "out" / "model.safetensors").read_bytes()).hexdigest()
    assert main(["info", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_embed_writes_features_and_reports_bad_files(tmp_path, checkpoint, make_video, capsys):
    path, _ = checkpoint
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "a.mp4", num_frames=10)
    make_video(videos / "b.mp4", num_frames=16, seed=1)
    (videos / "broken.mp4").write_bytes(b"\x00" * 64)
    out = tmp_path / "feats.npz"
    code = main(["embed", str(videos), "--checkpoint", str(path), "--out", str(out), "--frames", "2",
                 "--size", "32", "--window", "8", "--quiet"])
    assert code == 1, "a failed video makes the exit status non-zero"
    err = capsys.readouterr().err
    assert err.count("broken.mp4") == 1, "the failing file is named once"
    data = np.load(out)
    assert data["features"].shape == (4, 128)
    assert [p.rsplit("/", 1)[-1] for p in data["paths"]] == ["a.mp4", "a.mp4", "b.mp4", "b.mp4"]


def test_embed_bad_argument_stops_once_before_writing(tmp_path, checkpoint, make_video, capsys):
    path, _ = checkpoint
    (tmp_path / "videos").mkdir()
    for name in ("a.mp4", "b.mp4"):
        make_video(tmp_path / "videos" / name, num_frames=4)
    out = tmp_path / "feats.npz"
    code = main(["embed", str(tmp_path / "videos"), "--checkpoint", str(path), "--out", str(out), "--size", "4",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and not out.exists()
    assert err.count("size >=") == 1 and "a.mp4" not in err, err


def test_errors_print_one_line_without_traceback(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    for args in (["info", str(tmp_path / "missing.pth")], ["convert", str(tmp_path / "junk.pth"), str(tmp_path / "o")],
                 ["embed", str(tmp_path), "--model", "endofm_vit_micro", "--out", str(tmp_path / "f.npz")]):
        result = subprocess.run([sys.executable, "-m", "endofm", *args], capture_output=True, text=True)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr and result.stderr.startswith("endofm: error:"), result.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "f.npz").exists()


def test_the_demo_default_folder_never_replaces_an_earlier_demo(tmp_path, monkeypatch) -> None:
    from endofm.cli.demo import _free_folder

    monkeypatch.chdir(tmp_path)
    assert _free_folder("runs/demo") == "runs/demo"
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    assert _free_folder("runs/demo") == "runs/demo"  # empty: nothing to keep
    (tmp_path / "runs" / "demo" / "report.md").write_text("earlier")
    (tmp_path / "runs" / "demo-2").mkdir()
    (tmp_path / "runs" / "demo-2" / "report.md").write_text("earlier")
    assert _free_folder("runs/demo") == "runs/demo-3"
