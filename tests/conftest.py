"""Shared fixtures: paths to ../shared material and tiny videos written with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
"""``../shared``: the original code's fixtures and real videos; a test reading it skips when it is absent."""
SHARED_FIXTURES = SHARED / "fixtures"
PARITY_DIR = SHARED_FIXTURES / "official_parity"
DOWNSTREAM_DIR = SHARED_FIXTURES / "official_downstream"
REAL_VIDEOS = SHARED / "data" / "real_videos"


def write_test_video(path: Path, num_frames: int = 12, height: int = 48, width: int = 64, seed: int = 0) -> Path:
    """A small h264 mp4 of smooth moving colour gradients (compresses well, decodes exactly enough)."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(num_frames):
            channels = [127 + 120 * np.sin(xx / 9 + yy / 13 + phase[c] + 0.4 * t) for c in range(3)]
            frame = np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture
def make_video():
    """The :func:`write_test_video` function, for tests that need several videos."""
    return write_test_video


@pytest.fixture
def tiny_video(tmp_path: Path) -> Path:
    return write_test_video(tmp_path / "clip.mp4")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def real_videos() -> Path:
    """Folder of the real videos in ../shared; skips the test when it is absent."""
    if not REAL_VIDEOS.is_dir():
        pytest.skip(f"real videos not found at {REAL_VIDEOS} (../shared is absent)")
    return REAL_VIDEOS
