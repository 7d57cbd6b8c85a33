"""Live frames from a video file (played at its own rate, as if live), a V4L2 camera or a network stream, all
through PyAV, with the drop policy that keeps a slow model live.

:class:`LiveFrames` decodes on a thread of its own and hands frames over through a one-frame slot: when the
model is still busy with a frame, a newer one replaces the waiting one and the replaced one counts as
dropped, so a frame waits at most one model step and nothing is buffered without limit. With ``live=False``
(``--as-fast-as-possible``) a file is decoded as fast as the model takes frames and none is dropped.
A source that sends nothing for ``stall_timeout`` seconds ends the run with a :class:`StreamError`.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from endofm.errors import StreamError

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


@dataclass
class SourceFrame:
    """A decoded frame: its index in the source, its timestamp (seconds from the first frame), the wall-clock
    time it arrived (``time.perf_counter``), and its pixels (uint8 RGB ``[H, W, 3]``)."""

    index: int
    timestamp: float
    arrival: float
    image: np.ndarray


def source_kind(source: str) -> str:
    """``camera`` (a V4L2 device), ``network`` (a URL) or ``file``."""
    if source.startswith("/dev/video") or source.startswith("v4l2:"):
        return "camera"
    if source.lower().startswith(NETWORK_SCHEMES):
        return "network"
    return "file"


def open_container(source: str, stall_timeout: float) -> av.container.InputContainer:
    """The PyAV container of ``source``, or a :class:`StreamError` saying why it cannot be opened (a busy
    camera named as such). Opening and each read wait at most ``stall_timeout`` seconds."""
    kind = source_kind(source)
    path = source.removeprefix("v4l2:")
    if kind == "file" and not Path(path).exists():
        raise StreamError(f"{source}: no such video file")
    if kind == "file" and Path(path).is_dir():
        raise StreamError(f"{source}: a folder, not a video file")
    options = {"format": "v4l2"} if kind == "camera" else {}
    try:
        container = av.open(path, timeout=(stall_timeout, stall_timeout), **options)
    except (av.error.FFmpegError, OSError) as error:
        if getattr(error, "errno", None) == errno.EBUSY:
            raise StreamError(f"{source}: the camera is busy (another program is using it); close that program "
                              "or choose another device") from error
        reason = getattr(error, "strerror", None) or str(error)
        raise StreamError(f"{source}: cannot open the {kind} source: {reason}") from error
    if not container.streams.video:
        container.close()
        raise StreamError(f"{source}: no video stream")
    return container


class LiveFrames:
    """Frames of ``source`` as they arrive (see the module docstring): iterate, then read :attr:`dropped`,
    :attr:`received`, :attr:`ended` (why the source ended: ``None`` while running) and :attr:`message`."""

    def __init__(self, source: str, live: bool = True, stall_timeout: float = 10.0) -> None:
        if stall_timeout <= 0:
            raise StreamError(f"the stall timeout must be positive, got {stall_timeout}")
        self.source, self.live, self.stall_timeout = source, live, stall_timeout
        self.kind = source_kind(source)
        self._container = open_container(source, stall_timeout)
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 25.0
        self.expected = int(stream.frames or 0) if self.kind == "file" else 0
        self.received = self.dropped = 0
        self.ended: str | None = None
        self.message = ""
        self._slot: SourceFrame | None = None
        self._done = False
        self._stop = threading.Event()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._capture, name="endofm-capture", daemon=True)
        self._thread.start()

    def _decode(self) -> Iterator[tuple[float, np.ndarray]]:
        stream = self._container.streams.video[0]
        stream.thread_count = 1
        base = None
        for frame in self._container.decode(stream):
            seconds = float(frame.pts * stream.time_base) if frame.pts is not None and stream.time_base else None
            if seconds is None:
                seconds = self.received / self.fps
            base = seconds if base is None else base
            yield seconds - base, frame.to_ndarray(format="rgb24")

    def _capture(self) -> None:
        start = time.perf_counter()
        ended, message = "end", f"{self.source}: the source ended"
        try:
            for timestamp, image in self._decode():
                if self._stop.is_set():
                    return
                if self.live and self.kind == "file":  # played at its own rate
                    delay = start + timestamp - time.perf_counter()
                    if delay > 0 and self._stop.wait(delay):
                        return
                self._put(SourceFrame(self.received, timestamp, time.perf_counter(), image))
                self.received += 1
            if self.expected and self.received < self.expected:
                ended, message = "broken", (f"{self.source}: the stream broke off after {self.received} of "
                                            f"{self.expected} frames (a truncated file?)")
        except (av.error.FFmpegError, OSError, ValueError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            ended, message = "broken", f"{self.source}: the stream broke off after {self.received} frames: {reason}"
        finally:
            with self._ready:
                self.ended = self.ended or ended
                self.message = self.message or message
                self._done = True
                self._ready.notify_all()

    def _put(self, frame: SourceFrame) -> None:
        with self._ready:
            if self.live:
                if self._slot is not None:
                    self.dropped += 1
                self._slot = frame
                self._ready.notify_all()
            else:
                while self._slot is not None and not self._stop.is_set():
                    self._ready.wait(0.1)
                self._slot = frame
                self._ready.notify_all()

    def __iter__(self) -> Iterator[SourceFrame]:
        return self

    def __next__(self) -> SourceFrame:
        deadline = time.perf_counter() + self.stall_timeout
        with self._ready:
            while self._slot is None and not self._done:
                left = deadline - time.perf_counter()
                if left <= 0:
                    self.ended = "stalled"
                    self.message = (f"{self.source}: no frame for {self.stall_timeout:g} s; the stream stalled "
                                    "(the stall timeout is a setting: --stall-timeout)")
                    self.close()
                    raise StreamError(self.message)
                self._ready.wait(left)
            if self._slot is None:
                raise StopIteration
            frame, self._slot = self._slot, None
            if not self.live:  # handed over now: the wait for the model is not latency
                frame.arrival = time.perf_counter()
            self._ready.notify_all()
            return frame

    def close(self) -> None:
        """Stop decoding (the capture thread ends at its next frame)."""
        self._stop.set()
        if self.ended is None:
            self.ended, self.message = "stopped", f"{self.source}: stopped"
        if threading.current_thread() is not self._thread and not self._thread.is_alive():
            self._container.close()

    def __enter__(self) -> LiveFrames:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
        self._thread.join(timeout=1.0)
        if not self._thread.is_alive():
            self._container.close()
