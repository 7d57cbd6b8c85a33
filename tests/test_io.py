"""Atomic writes: outputs get the permissions of a plain write, and a failed write loses nothing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from endofm.data.manifest import write_manifest
from endofm.io import atomic_write, atomic_write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_new_files_get_the_umask_permissions_of_a_plain_write(tmp_path, umask_022):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic_write_text(tmp_path / "atomic.txt", "x")
    manifest = write_manifest([], tmp_path / "manifest.csv")
    assert _mode(written) == _mode(plain) == 0o644
    assert _mode(manifest) == 0o644


def test_an_overwritten_file_keeps_its_permissions(tmp_path, umask_022):
    target = tmp_path / "features.npz"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert _mode(target) == 0o640


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("previous")

    def fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_the_temporary_file_carries_the_suffix_the_writer_asked_for(tmp_path):
    seen = []
    atomic_write(tmp_path / "clip.mp4", lambda tmp: (seen.append(tmp), Path(tmp).write_bytes(b"v")), suffix=".mp4")
    assert seen[0].endswith(".mp4") and Path(seen[0]).parent == tmp_path
    assert (tmp_path / "clip.mp4").read_bytes() == b"v"
