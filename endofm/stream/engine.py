"""The live loop: frames of a source (:class:`~endofm.stream.source.LiveFrames`) through a causal predictor
(:mod:`endofm.stream.steps`), one result per frame the model took, and :func:`run_stream`, which writes them.

Outputs of :func:`run_stream` in ``out_dir``:

- ``frames.jsonl``: one line per frame as it is predicted (flushed, so a run cut short keeps its lines):
  ``frame`` (index in the source), ``timestamp`` (source seconds), ``output_time`` (seconds since the run
  started), ``latency_ms`` (from the frame's arrival to its prediction) and ``prediction``;
- ``annotated.mp4`` (``video=True``): the frames the model took with their predictions drawn, at their source
  timestamps; closed and renamed into place however the run ends;
- ``summary.json``: frames in, out and dropped, latency p50/p95/max, sustained frames per second, and how the
  source ended (``end``, ``broken``, ``stalled``, ``interrupted``, ``stopped``), written last.

This module does not import PyTorch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from endofm.errors import InputError, StreamError
from endofm.io import atomic_write_text, temporary_beside
from endofm.stream.frames import draw
from endofm.stream.source import LiveFrames
from endofm.stream.steps import CausalPredictor

OUTPUTS = ("frames.jsonl", "annotated.mp4", "summary.json")
DISPLAY_SHORT_SIDE = 360


@dataclass
class StreamResult:
    """One frame's prediction: ``frame`` (index in the source), ``timestamp`` (source seconds),
    ``output_time`` (seconds since the stream started), ``latency`` (seconds from arrival to prediction),
    ``prediction`` (JSON-ready), ``arrays`` (e.g. a segmentation ``mask``) and the frame itself (``image``)."""

    frame: int
    timestamp: float
    output_time: float
    latency: float
    prediction: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    image: np.ndarray | None = None

    def record(self) -> dict[str, Any]:
        """The ``frames.jsonl`` line of this result."""
        return {"frame": self.frame, "timestamp": round(self.timestamp, 6), "output_time": round(self.output_time, 6),
                "latency_ms": round(1000 * self.latency, 3), "prediction": self.prediction}


class Stream:
    """Iterate over the results of ``predictor`` on a live ``source`` (a file played at its own rate, or as
    fast as the model goes with ``live=False``; a V4L2 device; a URL). :meth:`summary` tells how it went.

    Example:
        >>> for result in Stream("case.mp4", predictor):  # doctest: +SKIP
        ...     print(result.frame, result.prediction)
    """

    def __init__(self, source: str, predictor: CausalPredictor, live: bool = True,
                 stall_timeout: float = 10.0) -> None:
        self.source, self.predictor, self.live, self.stall_timeout = source, predictor, live, stall_timeout
        self.frames = LiveFrames(source, live, stall_timeout)
        self.latencies: list[float] = []
        self.started = self.finished = 0.0
        self.interrupted = False

    def __iter__(self) -> Iterator[StreamResult]:
        self.started = time.perf_counter()
        try:
            for item in self.frames:
                prediction, arrays = self.predictor.push(item.image)
                done = time.perf_counter()
                self.latencies.append(done - item.arrival)
                yield StreamResult(item.index, item.timestamp, done - self.started, done - item.arrival, prediction,
                                   arrays, item.image)
        except KeyboardInterrupt:
            self.interrupted = True
            raise
        finally:
            self.finished = time.perf_counter()
            self.frames.__exit__(None, None, None)

    def summary(self) -> dict[str, Any]:
        """Frames in (received from the source), out (predicted) and dropped, latency p50/p95/max in ms,
        sustained frames per second (out over the run's duration), and how the source ended."""
        frames = self.frames if self.started else None
        latencies = np.asarray(self.latencies) * 1000
        elapsed = max((self.finished or time.perf_counter()) - self.started, 1e-9)
        ended = "interrupted" if self.interrupted else (frames.ended if frames else None)
        message = f"{self.source}: interrupted" if self.interrupted else (frames.message if frames else "")
        quantile = (lambda q: round(float(np.quantile(latencies, q)), 3)) if latencies.size else (lambda q: None)
        return {"source": self.source, "task": self.predictor.task, "live": self.live,
                "fps_source": frames.fps if frames else None,
                "frames_in": frames.received if frames else 0, "frames_out": len(self.latencies),
                "frames_dropped": frames.dropped if frames else 0,
                "latency_ms": {"p50": quantile(0.5), "p95": quantile(0.95), "max": quantile(1.0)},
                "sustained_fps": round(len(self.latencies) / elapsed, 3), "seconds": round(elapsed, 3),
                "ended": ended, "message": message}


class AnnotatedVideo:
    """An mp4 of the frames shown, drawn as they come, at their source timestamps; written to a temporary
    name beside ``path`` and renamed onto it by :meth:`close`."""

    def __init__(self, path: Path, task: str) -> None:
        self.path, self.task = path, task
        self.tmp, self.mode = temporary_beside(path, ".mp4")
        self.container: Any = None
        self.last_pts = -1

    def add(self, result: StreamResult) -> None:
        image = Image.fromarray(result.image)
        scale = min(1.0, DISPLAY_SHORT_SIDE / min(image.size))
        width, height = (max(2, round(side * scale / 2) * 2) for side in image.size)
        if self.container is None:
            self.container = av.open(str(self.tmp), "w", format="mp4")
            codec = next((c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available), "mpeg4")
            self.stream = self.container.add_stream(codec, rate=1000)
            self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
            self.stream.time_base = Fraction(1, 1000)
            self.stream.thread_count = 1
            self.size = (width, height)
        shown = draw(image.resize(self.size, Image.BILINEAR), self.task, result.prediction,
                     result.arrays.get("mask"), (self.size[1] / image.height, self.size[0] / image.width))
        frame = av.VideoFrame.from_ndarray(np.asarray(shown), format="rgb24")
        frame.pts = max(round(result.timestamp * 1000), self.last_pts + 1)
        frame.time_base = Fraction(1, 1000)
        self.last_pts = frame.pts
        self.container.mux(self.stream.encode(frame))

    def close(self) -> Path | None:
        """Finish the file and move it into place (None when no frame came)."""
        if self.container is None:
            self.tmp.unlink(missing_ok=True)
            return None
        try:
            self.container.mux(self.stream.encode())
            self.container.close()
            os.chmod(self.tmp, self.mode)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        return self.path


def run_stream(source: str, predictor: CausalPredictor, out_dir: str | os.PathLike, live: bool = True,
               stall_timeout: float = 10.0, video: bool = False, overwrite: bool = False,
               max_frames: int | None = None, echo: Any = None) -> dict[str, Any]:
    """Run ``predictor`` on ``source`` and write the outputs of the module docstring into ``out_dir``; returns
    the summary. Ctrl-C, a source that ends or breaks off, or one that stalls ends the run with everything
    written so far kept and the summary written; ``max_frames`` ends it after that many predictions.
    ``echo(result)`` is called per result (the command prints a status line)."""
    out = Path(out_dir)
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present and not overwrite:
        raise InputError(f"{out}: already holds {', '.join(present)}; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    stream = Stream(source, predictor, live, stall_timeout)
    annotated = AnnotatedVideo(out / "annotated.mp4", predictor.task) if video else None
    error: StreamError | None = None
    (out / "summary.json").unlink(missing_ok=True)
    try:
        with open(out / "frames.jsonl", "w", encoding="utf-8") as lines:
            try:
                for result in stream:
                    lines.write(json.dumps(result.record()) + "\n")
                    lines.flush()
                    if annotated is not None:
                        annotated.add(result)
                    if echo is not None:
                        echo(result)
                    if max_frames is not None and len(stream.latencies) >= max_frames:
                        break
            except StreamError as caught:  # a stall: the summary says so
                error = caught
            except KeyboardInterrupt:
                stream.interrupted = True
    finally:
        if annotated is not None:
            annotated.close()
        summary = stream.summary()
        if error is not None:
            summary["message"] = str(error)
        files = [name for name in OUTPUTS[:2] if (out / name).exists()]
        summary["files"] = {name: str(out / name) for name in files}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
