"""Whole pretraining runs at toy scale: outputs, exact resume after SIGKILL, DDP equivalence, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from endofm import load_checkpoint
from endofm.config import load_config
from endofm.data.encoding import write_video
from endofm.data.synthetic import render_video
from endofm.engine import logging
from endofm.errors import ConfigError, DatasetError, TrainingError
from endofm.pretrain import PretrainConfig, pretrain
from endofm.pretrain.loss import DINOLoss

TOY = [
    "model.arch=endofm_vit_micro", "model.drop_path_rate=0.0", "model.head_out_dim=64",
    "model.head_hidden_dim=32", "model.head_bottleneck_dim=16",
    "data.views.global_frames=[2,4]", "data.views.global_size=32", "data.views.local_frames=[2,2]",
    "data.views.local_size=16", "data.views.decode_short_side=40",
    "optim.warmup_epochs=1", "optim.lr=0.05",
    "run.epochs=2", "run.batch_size=4", "run.num_workers=0", "run.device=cpu", "run.progress=false",
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for i in range(8):
        video = render_video(i, num_frames=12, size=48)
        write_video(root / f"clip_{i}.mp4", video.frames, video.fps)
    return root


def _config(videos: Path, out: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, overrides=[*TOY, f"data.manifest={videos}", f"run.out_dir={out}", *extra])


def _cli(videos: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "endofm", "pretrain", *TOY, f"data.manifest={videos}", f"run.out_dir={out}", *extra]


def _teacher(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "teacher_endo_fm.pth", weights_only=True)


def test_a_library_run_leaves_the_process_settings_alone(videos, tmp_path, monkeypatch):
    """``pretrain()`` changes no process-wide setting (allocator, thread pool); the command applies them."""
    from endofm.engine import cpu

    applied = []
    for name in ("apply_cpu_settings", "keep_freed_memory", "start_thread_pool_flushing_denormals"):
        monkeypatch.setattr(cpu, name, lambda _name=name: applied.append(_name))
    pretrain(_config(videos, tmp_path / "run", "run.epochs=1"))
    assert applied == []
    assert torch.tensor([1e-39]).mul(2).item() != 0, "the calling thread flushes denormals after the run"


def test_a_run_writes_everything_a_user_needs(videos, tmp_path):
    out = tmp_path / "run"
    summary = pretrain(_config(videos, out))
    assert summary["global_step"] == 4 and summary["epoch"] == 1
    for name in ("config.yaml", "log.jsonl", "manifest.csv", "checkpoints/last.pt",
                 "plots/loss.png", "plots/lr.png", "plots/momentum.png", "plots/teacher_entropy.png"):
        assert (out / name).exists(), name
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(k in steps[0] for k in ("loss", "lr", "momentum", "teacher_entropy", "clips_per_s"))
    assert steps[0]["lr"] == 0.0 and steps[1]["lr"] > 0  # warm-up starts at zero
    ours = load_checkpoint(out / "teacher")
    original = load_checkpoint(out / "teacher_endo_fm.pth", num_heads=2)
    assert ours.dino_head is not None and original.info.layout == "teacher_flat"
    torch.testing.assert_close(ours.backbone.state_dict(), original.backbone.state_dict())
    first_block = "backbone.blocks.0.attn.qkv.weight"
    assert not list((out / "checkpoints").glob("epoch_*.pt")), "only last.pt is kept by default"
    start = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert not torch.equal(start["network"][first_block], start["recipe"]["teacher"][first_block])
    last_teacher = load_checkpoint(out / "checkpoints/last.pt")
    assert last_teacher.info.layout == "training" and last_teacher.backbone.config.num_heads == 2
    torch.testing.assert_close(last_teacher.backbone.state_dict(), ours.backbone.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(last_teacher.dino_head.state_dict(), ours.dino_head.state_dict(), rtol=0, atol=0)
    student = load_checkpoint(out / "checkpoints/last.pt", which="student").backbone
    assert torch.equal(student.state_dict()["blocks.0.attn.qkv.weight"], start["network"][first_block])
    with pytest.raises(TrainingError, match="already holds a run"):
        pretrain(_config(videos, out))


def test_epoch_states_are_kept_as_the_settings_say(videos, tmp_path, monkeypatch, capsys):
    """run.keep_checkpoints keeps the latest epoch states, run.keep_every every k-th; the rest are removed.
    On a terminal each epoch's bar ends at 100%, and each epoch prints a line with its figures."""
    monkeypatch.setattr(logging, "is_terminal", lambda stream=None: True)
    out = tmp_path / "run"
    pretrain(_config(videos, out, "run.epochs=4", "run.batch_size=8", "run.keep_checkpoints=1", "run.keep_every=2",
                     "run.progress=true"))
    kept = sorted(path.name for path in (out / "checkpoints").iterdir())
    assert kept == ["epoch_0002.pt", "epoch_0004.pt", "last.pt"]
    assert torch.load(out / "checkpoints/epoch_0002.pt", weights_only=True)["epoch"] == 2
    captured = capsys.readouterr()
    assert all(f"epoch {epoch}/4: 100%" in captured.err for epoch in range(1, 5))
    assert [line.split("  ")[0] for line in captured.out.splitlines() if "mean_loss" in line] == [
        f"epoch {epoch}/4" for epoch in range(1, 5)]


def test_resume_after_sigkill_gives_the_same_teacher(videos, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, *_cli(videos, reference, "run.checkpoint_every=1")], check=True, env=env)
    process = subprocess.Popen([sys.executable, *_cli(videos, killed, "run.checkpoint_every=1")], env=env)
    log = killed / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if log.exists() and sum(1 for line in log.read_text().splitlines() if '"step"' in line) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed mid-epoch"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "teacher_endo_fm.pth").exists()
    subprocess.run([sys.executable, *_cli(videos, killed, "run.checkpoint_every=1"), "--resume"], check=True, env=env)
    expected, resumed = _teacher(reference), _teacher(killed)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=1e-6)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if '"step"' in line]
    assert steps == [1, 2, 3, 4], "steps redone after the resume are logged once"


@pytest.mark.slow
def test_resume_before_the_first_checkpoint_starts_from_the_beginning(videos, tmp_path, capsys):
    """A run killed before it wrote a checkpoint (here: its config and a first log line exist) resumes from
    step 0, and ends like an uninterrupted run."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    pretrain(_config(videos, reference, "run.max_steps=2"))
    killed.mkdir()
    (killed / "log.jsonl").write_text(json.dumps({"step": 1, "epoch": 0, "loss": 9.0}) + "\n")
    pretrain(_config(videos, killed, "run.max_steps=2"), resume=True)
    captured = capsys.readouterr()
    assert "starting the run from the beginning" in captured.out + captured.err
    expected, resumed = _teacher(reference), _teacher(killed)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0)
    steps = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "step" in r] == [1, 2] and steps[0]["loss"] != 9.0


def test_a_non_finite_loss_stops_with_the_last_checkpoint_intact(videos, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    pretrain(_config(videos, out, "run.max_steps=2"))
    last = (out / "checkpoints/last.pt").read_bytes()
    original = DINOLoss.student_loss

    def poisoned(self, student_output, views, targets):
        loss = original(self, student_output, views, targets)
        return loss * float("nan") if 1 in views else loss

    monkeypatch.setattr(DINOLoss, "student_loss", poisoned)
    with pytest.raises(TrainingError, match="the loss became nan"):
        pretrain(_config(videos, out), resume=True)
    assert (out / "checkpoints/last.pt").read_bytes() == last


class _InfiniteGradient(torch.autograd.Function):
    """The identity, whose backward gives infinite gradients (an fp16 overflow)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("inf"))


def test_fp16_steps_through_a_gradient_scaler_that_skips_an_overflow(videos, tmp_path, monkeypatch):
    """``run.precision=fp16`` (the original's ``--use_fp16``): the scaler's state is checkpointed, and a step
    whose gradients overflow leaves the student as it was (fp32 would have written the infinities in)."""
    from endofm.engine.state import load_training_state

    out = tmp_path / "fp16"
    pretrain(_config(videos, out, "run.precision=fp16", "run.max_steps=1"))
    before = load_training_state(out / "checkpoints" / "last.pt")
    assert before["scaler"]["scale"] > 0
    original = DINOLoss.student_loss
    monkeypatch.setattr(DINOLoss, "student_loss",
                        lambda self, *args: _InfiniteGradient.apply(original(self, *args)))
    pretrain(_config(videos, out, "run.precision=fp16", "run.max_steps=2"), resume=True)
    after = load_training_state(out / "checkpoints" / "last.pt")
    assert after["global_step"] == 2 and after["scaler"]["scale"] < before["scaler"]["scale"]
    for key, value in before["network"].items():
        assert torch.equal(after["network"][key], value), key


def test_bad_input_is_refused_before_any_work(videos, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty: no videos"):
        pretrain(_config(empty, tmp_path / "a"))
    assert not (tmp_path / "a" / "manifest.csv").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.mp4").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no readable clips"):
        pretrain(_config(broken, tmp_path / "b"))
    with pytest.raises(ConfigError, match="larger than the dataset"):
        pretrain(_config(videos, tmp_path / "c", "run.batch_size=64"))
    other = tmp_path / "other.pth"
    from endofm import build_model

    torch.save(build_model("endofm_vit_small").state_dict(), other)
    with pytest.raises(ConfigError, match="does not fit model.arch"):
        pretrain(_config(videos, tmp_path / "d", f"model.init={other}"))
    assert not (tmp_path / "d" / "log.jsonl").exists()


def test_teacher_momentum_follows_its_configured_range(videos, tmp_path):
    out = tmp_path / "run"
    pretrain(_config(videos, out, "optim.momentum_teacher=0.9", "optim.momentum_teacher_end=0.95"))
    momenta = [json.loads(line)["momentum"] for line in (out / "log.jsonl").read_text().splitlines()
               if '"momentum"' in line]
    assert momenta[0] == pytest.approx(0.9) and momenta == sorted(momenta) and 0.9 < momenta[-1] < 0.95
    with pytest.raises(ConfigError, match="optim.momentum_teacher_end"):
        _config(videos, tmp_path / "bad", "optim.momentum_teacher_end=1.5")
