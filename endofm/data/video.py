"""Reading frames from video files and frame folders, decoding only the frames asked for.

:class:`VideoReader` opens a video file (mp4, avi, mov, mkv, webm, ... through PyAV) or a folder of frames
(jpg, jpeg, png, tif, tiff, in natural sort order) and returns frames as ``uint8 [T, 3, H, W]`` RGB.

Frames of a video file are indexed by their position in the presentation order of the video stream
(audio and other streams are ignored). On opening, the reader demultiplexes the video stream once, without
decoding, to learn every frame's timestamp and which frames are keyframes; the result is cached per file
(path, size, modification time) in the process. :meth:`VideoReader.read` then seeks to the last keyframe at
or before the first wanted frame, decodes forward and stops after the last wanted frame; only the wanted
frames are converted to RGB, already resized (``size``), so a large frame never exists at full size in RGB.

Grayscale, 10/16-bit and palette frames are converted to 8-bit RGB. Every failure to open or decode raises
:class:`~endofm.errors.VideoError` naming the file (and the frame where one is at fault); an index out of
range raises :class:`~endofm.errors.InputError`.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from endofm.errors import InputError, VideoError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv",
                    ".flv")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
FRAME_FOLDER_FPS = 30.0
"""Frame rate assumed for a folder of frames (which carries none): the rate of the pretraining corpus."""

_INDEX_CACHE_SIZE = 256

THREADED_DECODE_MIN_PIXELS = 256 * 256
"""Frames at least this large are decoded with FFmpeg's frame and slice threads; smaller ones in one thread,
where starting and joining the threads costs more than they save."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds: native frame size, frame count, frame rate and duration in seconds."""

    path: Path
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float


@dataclass(frozen=True)
class _StreamIndex:
    """Timestamps of a video stream's frames in presentation order and the positions of its keyframes."""

    pts: tuple[int, ...]
    keyframes: tuple[int, ...]


_index_cache: OrderedDict[tuple[str, int, int], _StreamIndex] = OrderedDict()


def natural_key(name: str) -> list[object]:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def is_video_file(path: str | os.PathLike) -> bool:
    """Whether the file name has a video extension."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """Image files of a frame folder in natural sort order."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


def output_size(height: int, width: int, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) of frames after resizing: short side to ``size`` (int), exact (tuple) or native."""
    if size is None:
        return height, width
    if isinstance(size, int):
        if size <= 0:
            raise InputError(f"size must be positive, got {size}")
        if height <= width:
            return size, max(1, round(width * size / height))
        return max(1, round(height * size / width)), size
    if len(size) != 2 or min(size) <= 0:
        raise InputError(f"size must be an int or a (height, width) pair of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


class VideoReader:
    """Random access to the frames of a video file or a folder of frames.

    ``size``: an int resizes so that the short side is ``size`` (aspect kept), ``(h, w)`` resizes exactly,
    ``None`` keeps the native size; with ``upscale=False`` an int ``size`` only shrinks (smaller frames keep
    their size). ``info`` describes the source at its native size; ``frame_size`` is the (height, width) of
    the frames :meth:`read` returns.
    """

    def __init__(self, path: str | os.PathLike, size: int | tuple[int, int] | None = None, *, upscale: bool = True):
        self.path = Path(path)
        self._container: av.container.InputContainer | None = None
        self._frame_files: list[Path] | None = None
        if not self.path.exists():
            raise VideoError(f"{self.path}: no such file or folder")
        if self.path.is_dir():
            self._open_folder()
        else:
            self._open_file()
        if not upscale and isinstance(size, int) and min(self.info.height, self.info.width) <= size:
            size = None
        self.frame_size = output_size(self.info.height, self.info.width, size)

    # -- opening -------------------------------------------------------------------------------------------
    def _open_folder(self) -> None:
        self._frame_files = list_frame_files(self.path)
        if not self._frame_files:
            raise VideoError(f"{self.path}: folder holds no frames ({', '.join(FRAME_EXTENSIONS)})")
        first = _load_image(self._frame_files[0], 0)
        height, width = first.shape[:2]
        count = len(self._frame_files)
        self.info = VideoInfo(self.path, count, FRAME_FOLDER_FPS, width, height, count / FRAME_FOLDER_FPS)

    def _open_file(self) -> None:
        try:
            stat = self.path.stat()
            if stat.st_size == 0:
                raise VideoError(f"{self.path}: empty file (0 bytes)")
            self._container = av.open(str(self.path))
            if not self._container.streams.video:
                raise VideoError(f"{self.path}: no video stream")
            stream = self._container.streams.video[0]
            key = (str(self.path.resolve()), stat.st_size, stat.st_mtime_ns)
            index = _index_cache.get(key)
            if index is None:
                index = self._build_index(stream)
                _index_cache[key] = index
                if len(_index_cache) > _INDEX_CACHE_SIZE:
                    _index_cache.popitem(last=False)
            else:
                _index_cache.move_to_end(key)
            width, height = stream.codec_context.width, stream.codec_context.height
            if not width or not height:
                raise VideoError(f"{self.path}: video stream has no frame size")
            if width * height >= THREADED_DECODE_MIN_PIXELS:
                stream.thread_type = "AUTO"
            else:
                stream.thread_count = 1
        except VideoError:
            self.close()
            raise
        except (av.error.FFmpegError, OSError, ValueError, IndexError) as error:
            self.close()
            raise VideoError(f"{self.path}: cannot open as a video: {_reason(error)}") from error
        self._stream = stream
        self._reformatter = VideoReformatter()  # one scaler for every frame (a frame's own is rebuilt per call)
        self._index = index
        self._pts_to_index = {pts: i for i, pts in enumerate(index.pts)}
        fps = _frame_rate(stream, index)
        count = len(index.pts)
        self.info = VideoInfo(self.path, count, fps, width, height, count / fps)

    def _build_index(self, stream: av.VideoStream) -> _StreamIndex:
        """Demultiplex the video stream (no decoding) to list frame timestamps and keyframes."""
        packets: list[tuple[int, bool]] = []
        for packet in self._container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts is None:
                raise VideoError(f"{self.path}: video packets without timestamps are not supported")
            packets.append((packet.pts, packet.is_keyframe))
        if not packets:
            raise VideoError(f"{self.path}: video stream has no frames")
        packets.sort()
        pts = tuple(p for p, _ in packets)
        if len(set(pts)) != len(pts):
            raise VideoError(f"{self.path}: video stream has repeated frame timestamps")
        if stream.frames and len(pts) < stream.frames:
            raise VideoError(f"{self.path}: truncated: header promises {stream.frames} frames, file holds {len(pts)}")
        keyframes = tuple(i for i, (_, key) in enumerate(packets) if key) or (0,)
        return _StreamIndex(pts, keyframes)

    # -- reading -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.info.num_frames

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as ``uint8 [T, 3, H, W]`` RGB."""
        indices = [int(i) for i in indices]
        count = self.info.num_frames
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise InputError(f"{self.path}: frame index {bad[0]} out of range [0, {count})")
        height, width = self.frame_size
        if not indices:
            return torch.empty((0, 3, height, width), dtype=torch.uint8)
        wanted = sorted(set(indices))
        frames = self._decode(wanted) if self._frame_files is None else self._read_images(wanted)
        stacked = np.stack([frames[i] for i in indices])
        return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()

    def read_all(self) -> torch.Tensor:
        """Every frame, as ``uint8 [T, 3, H, W]`` RGB."""
        return self.read(range(self.info.num_frames))

    def _read_images(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Load the wanted frames of a frame folder, resized to ``frame_size``."""
        from PIL import Image

        height, width = self.frame_size
        frames = {}
        for index in wanted:
            image = _load_image(self._frame_files[index], index)
            if image.shape[:2] != (height, width):
                image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
            frames[index] = image
        return frames

    def _decode(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Decode from the keyframe before ``wanted[0]`` up to ``wanted[-1]``; convert only wanted frames.

        Frames that are not wanted and that no other frame references (most B-frames) are not decoded at
        all; should a stream hide a wanted frame that way, the range is decoded again in full. A seek that
        misses (it lands past the first wanted frame, or where nothing decodes, as timestamp seeks in MPEG
        program streams can) is replaced by decoding from the start of the file.
        """
        if self._container is None:
            raise VideoError(f"{self.path}: reader is closed")
        first = wanted[0]
        start = max((k for k in self._index.keyframes if k <= first), default=0)
        frames = self._decode_from(start, wanted, skip=True)
        if not frames and start > 0:
            start = 0
            frames = self._decode_from(start, wanted, skip=True)
        if frames is not None and len(frames) < len(wanted):
            frames = self._decode_from(start, wanted, skip=False)
        if frames is None:
            raise VideoError(f"{self.path}: cannot seek to frame {first}")
        missing = [i for i in wanted if i not in frames]
        if missing:
            raise VideoError(f"{self.path}: frame {missing[0]} could not be decoded (file truncated?)")
        return frames

    def _decode_from(self, keyframe: int, wanted: list[int], skip: bool) -> dict[int, np.ndarray] | None:
        """Seek to frame ``keyframe`` and decode; ``None`` when the seek lands past the first wanted one.
        Frame 0 is reached by seeking the container to its start, not to the frame's timestamp: in MPEG
        transport streams a timestamp seek to the first frame lands after it. With ``skip`` the decoder drops
        unwanted non-reference frames."""
        height, width = self.frame_size
        wanted_set = set(wanted)
        last = wanted[-1]
        frames: dict[int, np.ndarray] = {}
        position = keyframe
        first_seen = True
        try:
            if keyframe == 0:
                self._container.seek(0)
            else:
                self._container.seek(self._index.pts[keyframe], stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError as error:
            raise VideoError(f"{self.path}: cannot decode frame {position}: {_reason(error)}") from error
        context = self._stream.codec_context
        try:
            for packet in self._container.demux(self._stream):
                if skip:
                    packet_index = self._pts_to_index.get(packet.pts)
                    unwanted = packet_index is not None and packet_index not in wanted_set
                    context.skip_frame = "NONREF" if unwanted else "DEFAULT"
                for frame in packet.decode():
                    index = self._pts_to_index.get(frame.pts)
                    if index is None:
                        continue
                    if first_seen and index > wanted[0] and keyframe > 0:
                        return None
                    first_seen = False
                    position = index + 1
                    if index in wanted_set:
                        frames[index] = self._reformatter.reformat(
                            frame, width, height, format="rgb24", interpolation="BILINEAR"
                        ).to_ndarray()
                    if index >= last:
                        return frames
        except av.error.FFmpegError as error:
            raise VideoError(f"{self.path}: cannot decode frame {position}: {_reason(error)}") from error
        finally:
            context.skip_frame = "DEFAULT"
        return frames

    # -- closing -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file."""
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _frame_rate(stream: av.VideoStream, index: _StreamIndex) -> float:
    """Frames per second: the stream's average rate, else its guessed rate, else timestamps."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    if len(index.pts) > 1 and stream.time_base is not None:
        span = float((index.pts[-1] - index.pts[0]) * stream.time_base)
        if span > 0:
            return (len(index.pts) - 1) / span
    return FRAME_FOLDER_FPS


def _reason(error: Exception) -> str:
    """An FFmpeg or OS error's reason without the file name it repeats (messages name the file already)."""
    return getattr(error, "strerror", None) or str(error)


def _load_image(path: Path, index: int) -> np.ndarray:
    """One image as ``uint8 [H, W, 3]`` RGB; grayscale and 16-bit images are converted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "1", "PA", "LAB", "HSV"):
                array = np.asarray(image.convert("RGB"))
            else:
                array = np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise VideoError(f"{path}: frame {index} cannot be read as an image: {error}") from error
    if array.dtype != np.uint8:
        array = _to_uint8(array, path, index)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] > 3:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, path: Path, index: int) -> np.ndarray:
    """Scale integer images of up to 16 bits, or float images in [0, 1], to 8 bits."""
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        wide = array.astype(np.int64)
        if wide.min(initial=0) < 0 or wide.max(initial=0) > 65535:
            raise VideoError(f"{path}: frame {index} has pixel values outside 16 bits")
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    raise VideoError(f"{path}: frame {index} has an unsupported pixel type {array.dtype}")


def read_video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame count, frame rate, size and duration of a video file or frame folder."""
    with VideoReader(path) as reader:
        return reader.info
