"""Tiny synthetic datasets in the three original layouts, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from endofm.data.encoding import write_video
from endofm.data.synthetic import render_video, write_cvc, write_kumc, write_polypdiag


@pytest.fixture(scope="session")
def polypdiag_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_polypdiag(tmp_path_factory.mktemp("polypdiag"), 20, seed=1, num_frames=8, size=32)


@pytest.fixture(scope="session")
def cvc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cvc(tmp_path_factory.mktemp("cvc"), 6, seed=1, length_range=(4, 6), size=32)


@pytest.fixture(scope="session")
def kumc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kumc(tmp_path_factory.mktemp("kumc"), 4, seed=1, num_frames=6, size=32)


@pytest.fixture(scope="session")
def user_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    video = render_video(7, num_frames=10, size=(32, 48), polyp=True)
    return write_video(tmp_path_factory.mktemp("video") / "user.mp4", video.frames)
