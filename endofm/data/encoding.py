"""Writing videos: mp4 files encoded for reads at random frames (the synthetic corpus, transcodes, predictions).

Files that training reads at random frames need keyframes close together and frames that few others depend
on; :func:`random_access_options` gives those encoder settings, :func:`encode_mp4` encodes frames with them and
:func:`write_video` writes an array of frames atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np

from endofm.errors import InputError
from endofm.io import atomic_write


def random_access_options(codec: str, rate: int, crf: int = 20) -> dict[str, str]:
    """Encoder options for files that training reads at random frames (the synthetic corpus, transcodes).

    For x264: a keyframe every second (a read seeks at most ``rate`` frames back), 7 B-frames between
    reference frames that no frame references (:class:`VideoReader` skips those it does not need, so a
    read decodes about one frame in 8 besides those it wants), and ``tune=fastdecode`` (no CABAC, no
    deblocking: frames decode faster, in larger files). Macroblock-tree rate control is off: with
    it the same frames encode to different files from one process to the next.
    """
    if codec != "libx264":
        return {"crf": str(crf), "preset": "veryfast"}
    return {
        "crf": str(crf),
        "preset": "veryfast",
        "tune": "fastdecode",
        "g": str(rate),
        "x264-params": "mbtree=0:b-pyramid=none:bframes=7:b-adapt=0",
    }


def encode_mp4(path: str, frames: Iterable[np.ndarray], width: int, height: int, fps: float) -> None:
    """Encode uint8 ``[height, width, 3]`` RGB frames as an mp4 at ``path`` (h264 when FFmpeg has it, else
    mpeg4; yuv420p, so both sizes must be even), with :func:`random_access_options`. Callers write through
    :func:`~endofm.io.atomic_write`."""
    codec = next((c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available), "mpeg4")
    rate = max(1, round(fps))
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1
        if codec == "mpeg4":
            stream.bit_rate = 8 * height * width * rate
        else:
            stream.options = random_access_options(codec, rate)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 30.0) -> Path:
    """Encode uint8 [T, H, W, 3] RGB frames as an mp4 (see :func:`encode_mp4`), atomically."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"frames for {path} must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise InputError(f"yuv420p needs even frame sizes, got {height}x{width} for {path}")
    return atomic_write(path, lambda tmp: encode_mp4(tmp, frames, width, height, fps))
