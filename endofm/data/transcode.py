"""Pre-resizing a corpus: :func:`transcode_videos` re-encodes every video under a folder with a smaller short
side, encoded for reads at random frames (:func:`~endofm.data.encoding.random_access_options`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from endofm.data.encoding import random_access_options
from endofm.data.manifest import find_videos
from endofm.data.video import VIDEO_EXTENSIONS, VideoReader, output_size
from endofm.engine.logging import bar_off
from endofm.errors import DatasetError, EndoFMError, InputError
from endofm.io import atomic_write

TRANSCODE_CRF = 18
"""x264 quality of :func:`transcode_videos` (lower is better; 18 is close to visually lossless)."""


@dataclass
class TranscodeSummary:
    """What :func:`transcode_videos` did: files written, files already up to date, failures with reasons."""

    written: list[Path]
    up_to_date: list[Path]
    failed: list[tuple[Path, str]]


def transcode_videos(
    src_root: str | os.PathLike,
    out_root: str | os.PathLike,
    short_side: int = 256,
    codec: str = "libx264",
    progress: bool = True,
) -> TranscodeSummary:
    """Re-encode every video under ``src_root`` into ``out_root`` (same tree, ``.mp4``), short side resized.

    Videos smaller than ``short_side`` keep their size. The frame rate is kept; audio is dropped. A file
    whose output is newer than its source is skipped, so a rerun continues where it stopped. ``codec`` falls
    back to ``mpeg4`` when this FFmpeg build lacks it; x264 output is encoded for random reads
    (:func:`~endofm.data.encoding.random_access_options`). Failures are listed, not raised.
    """
    import av

    src, out = Path(src_root), Path(out_root)
    if not src.is_dir():
        raise InputError(f"{src}: not a folder")
    if short_side <= 0:
        raise InputError(f"short_side must be positive, got {short_side}")
    if codec not in av.codecs_available:
        codec = "mpeg4"
    sources = [p for p in find_videos(src.resolve()) if p.is_file()]
    if not sources:
        raise DatasetError(f"{src}: no video files ({', '.join(VIDEO_EXTENSIONS)}) found; nothing written")
    if progress:
        from tqdm import tqdm

        sources = tqdm(sources, desc="transcoding", unit="video", disable=bar_off(True))
    summary = TranscodeSummary([], [], [])
    for source in sources:
        target = (out / source.relative_to(src.resolve())).with_suffix(".mp4")
        if target.exists() and target.stat().st_mtime_ns >= source.stat().st_mtime_ns:
            summary.up_to_date.append(target)
            continue
        try:
            _transcode_one(source, target, short_side, codec)
        except (EndoFMError, av.error.FFmpegError, OSError, ValueError) as error:
            summary.failed.append((source, str(error)))
            continue
        summary.written.append(target)
    return summary


def _transcode_one(source: Path, target: Path, short_side: int, codec: str) -> None:
    import av

    with VideoReader(source) as reader:
        info = reader.info
    if min(info.width, info.height) > short_side:
        height, width = output_size(info.height, info.width, short_side)
    else:
        height, width = info.height, info.width
    height, width = height + height % 2, width + width % 2
    rate = Fraction(info.fps).limit_denominator(1001)

    def encode(temp: str) -> None:
        with av.open(str(source)) as inp, av.open(temp, "w", format="mp4") as outp:
            in_stream = inp.streams.video[0]
            in_stream.thread_type = "AUTO"
            out_stream = outp.add_stream(codec, rate=rate)
            out_stream.width, out_stream.height, out_stream.pix_fmt = width, height, "yuv420p"
            if codec != "mpeg4":
                out_stream.options = random_access_options(codec, max(1, round(info.fps)), crf=TRANSCODE_CRF)
            for number, frame in enumerate(inp.decode(in_stream)):
                new = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
                new.pts = number
                new.time_base = Fraction(1) / rate
                for packet in out_stream.encode(new):
                    outp.mux(packet)
            for packet in out_stream.encode():
                outp.mux(packet)

    atomic_write(target, encode, suffix=".mp4")
