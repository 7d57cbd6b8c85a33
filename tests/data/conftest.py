"""Fixtures of the data-layer tests: tiny videos written with PyAV, frame folders, a broken-file zoo."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from endofm.data.encoding import write_video


def _frame_pattern(index: int, height: int, width: int) -> np.ndarray:
    """A frame that differs from every other: gradients plus a square that moves with the index."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = (x * 255 // max(width - 1, 1) + index * 9) % 256
    frame[..., 1] = (y * 255 // max(height - 1, 1)) % 256
    frame[..., 2] = (index * 23) % 256
    side = max(4, height // 4)
    top, left = (index * 3) % (height - side), (index * 5) % (width - side)
    frame[top : top + side, left : left + side] = 255
    return frame


def _write_video(
    path: Path,
    num_frames: int = 40,
    size: tuple[int, int] = (48, 64),
    fps: int = 30,
    codec: str = "libx264",
    audio: bool = False,
    faststart: bool = False,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Encode ``num_frames`` distinct frames; libx264 with keyframes every 8 frames and B-frames."""
    height, width = size
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"g": "8", "keyint_min": "8", "bf": "2", "crf": "18", "preset": "ultrafast"}
        else:
            stream.options = {"g": "8"}
            stream.bit_rate = 2_000_000
        audio_stream = container.add_stream("aac", rate=16000) if audio else None
        samples_per_frame = 16000 // fps
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(_frame_pattern(i, height, width), format="rgb24")
            container.mux(stream.encode(frame.reformat(format=pix_fmt)))
            if audio_stream is not None:
                tone = np.sin(np.arange(samples_per_frame) * 0.1 + i).astype(np.float32)[None, :]
                chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                chunk.sample_rate = 16000
                chunk.pts = i * samples_per_frame
                chunk.time_base = Fraction(1, 16000)
                container.mux(audio_stream.encode(chunk))
        container.mux(stream.encode())
        if audio_stream is not None:
            container.mux(audio_stream.encode())
    return path


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good videos in several containers and codecs (written once per session)."""
    root = tmp_path_factory.mktemp("videos")
    _write_video(root / "h264.mp4", num_frames=40)
    _write_video(root / "audio.mp4", num_frames=30, audio=True)
    _write_video(root / "mpeg4.avi", num_frames=20, codec="mpeg4", size=(32, 48), fps=25)
    _write_video(root / "clip.mkv", num_frames=24, size=(40, 40))
    _write_video(root / "program.mpg", num_frames=40, codec="mpeg2video", fps=25)
    _write_video(root / "vp9.webm", num_frames=24, codec="libvpx-vp9", size=(32, 48))
    _write_video(root / "transport.ts", num_frames=40, codec="mpeg2video", fps=25)
    _write_video(root / "hevc.mp4", num_frames=40, codec="libx265")
    _write_video(root / "mjpeg.mov", num_frames=20, codec="mjpeg", pix_fmt="yuvj420p")
    write_video(root / "corpus.mp4", np.stack([_frame_pattern(i, 48, 64) for i in range(70)]), fps=30)
    return root


@pytest.fixture()
def broken_files(tmp_path: Path, video_dir: Path) -> dict[str, Path]:
    """Files that are not readable videos, by kind."""
    good = (video_dir / "h264.mp4").read_bytes()
    files = {
        "zero": tmp_path / "zero.mp4",
        "text": tmp_path / "notes.mp4",
        "truncated": tmp_path / "truncated.mp4",
    }
    files["zero"].write_bytes(b"")
    files["text"].write_text("this is not a video\n" * 20)
    files["truncated"].write_bytes(good[: len(good) // 2])
    faststart = _write_video(tmp_path / "faststart.mp4", num_frames=40, faststart=True)
    data = faststart.read_bytes()
    files["truncated_faststart"] = tmp_path / "truncated_faststart.mp4"
    files["truncated_faststart"].write_bytes(data[: int(len(data) * 0.6)])
    return files


def _corrupt_middle(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose video data is overwritten with garbage from 40 % to 70 % of its length."""
    data = bytearray(source.read_bytes())
    start = data.find(b"mdat")
    begin = start + (len(data) - start) * 4 // 10
    end = start + (len(data) - start) * 7 // 10
    rng = np.random.default_rng(0)
    data[begin:end] = rng.integers(0, 256, end - begin, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


@pytest.fixture()
def corpus(tmp_path: Path, video_dir: Path) -> Path:
    """A folder tree with good videos, a frame folder, a corrupt file and a text file."""
    root = tmp_path / "corpus"
    (root / "a").mkdir(parents=True)
    (root / "b" / "frames").mkdir(parents=True)
    shutil.copy(video_dir / "h264.mp4", root / "a" / "one.mp4")
    shutil.copy(video_dir / "mpeg4.avi", root / "b" / "two.avi")
    for i in range(12):
        from PIL import Image

        Image.fromarray(_frame_pattern(i, 24, 32)).save(root / "b" / "frames" / f"{i}.png")
    (root / "a" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    (root / "readme.txt").write_text("not a video")
    return root


@pytest.fixture(scope="session")
def frame_pattern() -> Callable[[int, int, int], np.ndarray]:
    """The function drawing test frame ``index`` at ``(height, width)``."""
    return _frame_pattern


@pytest.fixture(scope="session")
def make_video() -> Callable[..., Path]:
    """The function writing a test video (see ``_write_video``)."""
    return _write_video


@pytest.fixture(scope="session")
def corrupt_middle() -> Callable[[Path, Path], Path]:
    """The function writing a copy of a video with garbage in the middle of its data."""
    return _corrupt_middle
