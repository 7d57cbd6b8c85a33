"""The original decoder's temporal window: which frames of a video a clip is read from.

The original Endo-FM reads a clip (pretraining and PolypDiag alike) through a window of ``sampling_rate *
num_frames`` frames at ``target_fps``, i.e. :func:`window_span` frames of the video at its own frame rate. In
training the window starts at a float drawn uniformly from ``[0, max(N - span, 0)]``, at test time at 0. The
decoder works in presentation timestamps (``pts_per_frame`` per frame: 512 for the 30 fps mp4 files ffmpeg
writes): it keeps the frames whose timestamp lies in ``[int(start * ppf), int((start + span - 1) * ppf)]``
plus the next one, so the first frame kept is ``floor(start)`` when the start's fraction is below one
timestamp (``frac(start) * ppf < 1``) and ``ceil(start)`` otherwise.
"""

from __future__ import annotations

import math

from endofm.errors import InputError

PTS_PER_FRAME = 512


def window_span(fps: float, num_frames: int = 8, sampling_rate: int = 32, target_fps: float = 30.0) -> float:
    """Frames of a video at ``fps`` that the window of ``sampling_rate * num_frames`` frames at ``target_fps``
    spans."""
    if fps <= 0 or target_fps <= 0 or num_frames < 1 or sampling_rate < 1:
        raise InputError(f"window needs positive fps, target_fps, num_frames and sampling_rate, got {fps}, "
                         f"{target_fps}, {num_frames} and {sampling_rate}")
    return sampling_rate * num_frames / target_fps * fps


def decoded_window(num_available: int, span: float, start: float = 0.0,
                   pts_per_frame: int = PTS_PER_FRAME) -> tuple[int, int]:
    """``(first, count)``: the frames ``first .. first + count - 1`` the decoder keeps for a window of ``span``
    frames starting at frame ``start`` (a float) of a video of ``num_available`` frames."""
    if num_available < 1:
        raise InputError("cannot sample frames from an empty video")
    if start < 0 or span <= 0 or pts_per_frame < 1:
        raise InputError(f"window start must be >= 0 and span, pts_per_frame positive, got {start}, {span}, "
                         f"{pts_per_frame}")
    first = min(math.ceil(int(start * pts_per_frame) / pts_per_frame), num_available - 1)
    last = math.floor(int((start + span - 1) * pts_per_frame) / pts_per_frame) + 1
    return first, min(last, num_available - 1) - first + 1
