"""What a run prints: a bar that ends at its total on a terminal, plain lines elsewhere, an epoch line with its
figures, and loader processes capped at the usable cores."""

from __future__ import annotations

import pytest

from endofm.engine import cpu, logging
from endofm.engine.logging import EpochProgress, epoch_line


def test_a_terminal_bar_ends_at_its_total(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(logging, "is_terminal", lambda stream=None: True)
    progress = EpochProgress(3, "epoch 1/2")
    for _ in range(3):
        progress.update(loss=0.5, lr=1e-4)
    progress.close()
    err = capsys.readouterr().err
    assert "3/3" in err and "100%" in err and "lr=1.00e-04" in err


def test_a_file_gets_plain_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(logging, "is_terminal", lambda stream=None: False)
    monkeypatch.setattr(logging, "LINE_INTERVAL_S", 0.0)
    progress = EpochProgress(2, "epoch 1/2")
    progress.update(loss=0.25, clips_s=12.5)
    progress.update(loss=0.125, clips_s=12.5)
    progress.close()
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err and captured.err == ""
    assert captured.out.splitlines() == ["epoch 1/2 step 1/2  loss 0.2500  clips_s 12.5000",
                                         "epoch 1/2 step 2/2  loss 0.1250  clips_s 12.5000"]
    assert epoch_line(3, 10, {"mean_loss": 0.5, "val_dice": 0.75, "note": "x"}) == (
        "epoch 3/10  mean_loss 0.5000  val_dice 0.7500")


def test_loader_processes_are_capped_at_the_usable_cores(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(cpu, "_WORKER_CAPS_SAID", set())
    assert cpu.loader_workers(1) == 1 and cpu.loader_workers(2) == 2
    assert cpu.loader_workers(4) == 2 and cpu.loader_workers(4) == 2
    assert capsys.readouterr().err.count("run.num_workers=4 but this process may use 2 CPU core(s)") == 1


def test_retention_keeps_the_latest_and_every_kth_epoch(tmp_path) -> None:
    from endofm.engine.retention import kept_epochs, prune_epoch_files, wants_epoch_file
    from endofm.engine.trainer import RunConfig
    from endofm.errors import ConfigError

    assert kept_epochs([1, 2, 3, 4, 5, 6], 2, 0) == {5, 6} and kept_epochs([1, 2, 3, 4, 5, 6], 1, 4) == {4, 6}
    assert kept_epochs([1, 2, 3], -1, 0) == {1, 2, 3} and kept_epochs([1, 2, 3], 0, 0) == set()
    assert not wants_epoch_file(3, 0, 2) and wants_epoch_file(4, 0, 2) and wants_epoch_file(3, 1, 0)
    for name in ("epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt", "last.pt", "epoch_notes.pt"):
        (tmp_path / name).write_bytes(b"")
    assert [path.name for path in prune_epoch_files(tmp_path, 1, 0)] == ["epoch_0001.pt", "epoch_0002.pt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["epoch_0003.pt", "epoch_notes.pt", "last.pt"]
    for bad in ({"keep_checkpoints": -2}, {"keep_every": -1}):
        with pytest.raises(ConfigError, match="keep"):
            RunConfig(**bad)
