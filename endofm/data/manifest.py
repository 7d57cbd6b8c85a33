"""Video manifests: scanning a corpus into clips and reading the original's list formats (pre-resizing videos:
:mod:`endofm.data.transcode`).

A manifest is a CSV file with a header and one row per clip (one per video when clips are off, one per
unreadable file). Columns:

==============  ==========================================================================================
``path``        absolute path of the video file or frame folder (relative paths, in hand-written
                manifests, are read relative to the manifest's folder)
``status``      ``ok``, or ``error: <reason>`` for a file that could not be read (it has no clip)
``clip_start``  first frame of the clip (0-based position in the video); empty on error rows
``clip_length`` number of frames of the clip; empty on error rows
``num_frames``  frames in the whole video
``fps``         frames per second of the video (frame folders: 30)
``width``       native frame width in pixels
``height``      native frame height in pixels
``duration``    length of the whole video in seconds
``size_bytes``  file size when scanned (folders: total size of their frames)
``mtime_ns``    modification time when scanned, nanoseconds (folders: the newest frame's)
==============  ==========================================================================================

``size_bytes`` and ``mtime_ns`` let a rerun of :func:`scan_videos` re-read only new or changed files. Clips
are ``round(clip_seconds * fps)`` frames long (150 at 30 fps for 5 s); the remainder of a video joins its
last clip, and a video shorter than one clip is one clip (see :func:`clip_ranges`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from endofm.data.video import (
    FRAME_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoReader,
    is_video_file,
    list_frame_files,
)
from endofm.engine.logging import bar_off
from endofm.errors import DatasetError, EndoFMError, InputError
from endofm.io import atomic_write

COLUMNS = (
    "path",
    "status",
    "clip_start",
    "clip_length",
    "num_frames",
    "fps",
    "width",
    "height",
    "duration",
    "size_bytes",
    "mtime_ns",
)


@dataclass(frozen=True)
class ClipRef:
    """A clip of a video: ``length`` frames from frame ``start``; ``length=None`` runs to the video's end."""

    path: Path
    start: int = 0
    length: int | None = None


@dataclass(frozen=True)
class LabelledVideo:
    """A whole video with a class label (PolypDiag split files)."""

    path: Path
    label: int


@dataclass
class ManifestRow:
    """One video of a manifest with its clips as ``(start, length)`` pairs."""

    path: Path
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float
    status: str
    clips: list[tuple[int, int]] = field(default_factory=list)
    size_bytes: int = 0
    mtime_ns: int = 0

    @property
    def ok(self) -> bool:
        """Whether the video could be read."""
        return self.status == "ok"


@dataclass
class ScanSummary:
    """What :func:`scan_videos` found: readable videos, failures with reasons, clips, files re-read."""

    out_csv: Path
    videos_ok: int
    failed: list[tuple[Path, str]]
    clips: int
    frames: int
    scanned: int
    reused: int


def clip_ranges(num_frames: int, clip_frames: int) -> list[tuple[int, int]]:
    """Split ``num_frames`` into ``(start, length)`` clips of ``clip_frames``; the rest joins the last."""
    if clip_frames <= 0:
        raise InputError(f"clip length must be positive, got {clip_frames}")
    if num_frames <= 0:
        return []
    count = max(1, num_frames // clip_frames)
    clips = [(i * clip_frames, clip_frames) for i in range(count - 1)]
    last_start = (count - 1) * clip_frames
    clips.append((last_start, num_frames - last_start))
    return clips


def find_videos(root: Path) -> Iterator[Path]:
    """Video files and frame folders under ``root``, in a stable order."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        if here != root and any(Path(name).suffix.lower() in FRAME_EXTENSIONS for name in files):
            yield here
        for name in sorted(files):
            if is_video_file(name):
                yield here / name


def _fingerprint(path: Path) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a file, or of a frame folder's frames."""
    if path.is_dir():
        stats = [p.stat() for p in list_frame_files(path)]
        return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _probe(path: Path, size_bytes: int, mtime_ns: int) -> ManifestRow:
    """Read one video's metadata; any failure becomes an error row with its reason."""
    try:
        with VideoReader(path) as reader:
            info = reader.info
            reader.read([info.num_frames - 1])
    except EndoFMError as error:
        reason = str(error).removeprefix(f"{path}: ")
        return ManifestRow(path, 0, 0.0, 0, 0, 0.0, f"error: {reason}", [], size_bytes, mtime_ns)
    return ManifestRow(
        path,
        info.num_frames,
        info.fps,
        info.width,
        info.height,
        info.duration,
        "ok",
        [],
        size_bytes,
        mtime_ns,
    )


def _with_clips(row: ManifestRow, clip_seconds: float | None) -> ManifestRow:
    if not row.ok:
        row.clips = []
    elif clip_seconds is None:
        row.clips = [(0, row.num_frames)]
    else:
        row.clips = clip_ranges(row.num_frames, max(1, round(clip_seconds * row.fps)))
    return row


def _line_clean(text: str) -> str:
    return " ".join(text.split())


def write_manifest(rows: list[ManifestRow], out_csv: str | os.PathLike) -> Path:
    """Write manifest rows (one CSV row per clip, one per error) atomically."""

    def write(temp: str) -> None:
        with open(temp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in rows:
                common = [row.num_frames, f"{row.fps:.6g}", row.width, row.height, f"{row.duration:.6g}"]
                tail = [row.size_bytes, row.mtime_ns]
                if not row.ok:
                    writer.writerow([str(row.path), _line_clean(row.status), "", "", *common, *tail])
                for start, length in row.clips:
                    writer.writerow([str(row.path), "ok", start, length, *common, *tail])

    return atomic_write(out_csv, write)


def load_manifest_rows(csv_path: str | os.PathLike) -> list[ManifestRow]:
    """Rows of a manifest CSV grouped per video (clips gathered), in file order."""
    path = Path(csv_path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"path", "status", "clip_start", "clip_length"} - set(reader.fieldnames or ())
            if missing:
                raise DatasetError(f"{path}: not a manifest, missing columns {sorted(missing)}")
            rows: dict[Path, ManifestRow] = {}
            for line, record in enumerate(reader, start=2):
                video = Path(record["path"])
                if not video.is_absolute():
                    video = path.parent / video
                try:
                    row = rows.get(video)
                    if row is None:
                        row = ManifestRow(
                            video,
                            int(record.get("num_frames") or 0),
                            float(record.get("fps") or 0),
                            int(record.get("width") or 0),
                            int(record.get("height") or 0),
                            float(record.get("duration") or 0),
                            record["status"] or "ok",
                            [],
                            int(record.get("size_bytes") or 0),
                            int(record.get("mtime_ns") or 0),
                        )
                        rows[video] = row
                    if record["status"] == "ok":
                        row.clips.append((int(record["clip_start"]), int(record["clip_length"])))
                except (TypeError, ValueError) as error:
                    raise DatasetError(f"{path}: line {line}: bad value ({error})") from error
    except OSError as error:
        raise DatasetError(f"{path}: cannot read manifest: {error}") from error
    return list(rows.values())


def read_manifest(csv_path: str | os.PathLike) -> list[ClipRef]:
    """The clips of a manifest CSV (rows with status ``ok``)."""
    return [
        ClipRef(row.path, start, length)
        for row in load_manifest_rows(csv_path)
        if row.ok
        for start, length in row.clips
    ]


def scan_videos(
    root: str | os.PathLike,
    out_csv: str | os.PathLike,
    clip_seconds: float | None = 5.0,
    progress: bool = True,
) -> ScanSummary:
    """Walk ``root`` for videos and frame folders and write a manifest CSV (see the module docstring).

    Unreadable files are listed with their reason and get no clips; the scan never aborts on a bad file.
    When ``out_csv`` exists, files whose size and modification time are unchanged are not read again.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    if clip_seconds is not None and clip_seconds <= 0:
        raise InputError(f"clip_seconds must be positive, got {clip_seconds}")
    out = Path(out_csv)
    previous: dict[Path, ManifestRow] = {}
    if out.exists():
        try:
            previous = {row.path: row for row in load_manifest_rows(out)}
        except DatasetError:
            previous = {}
    paths = list(find_videos(root.resolve()))
    if not paths:
        raise DatasetError(f"{root}: no videos ({', '.join(VIDEO_EXTENSIONS)}) or frame folders found; nothing written")
    if progress:
        from tqdm import tqdm

        paths_iter = tqdm(paths, desc="scanning", unit="video", disable=bar_off(True))
    else:
        paths_iter = paths
    rows: list[ManifestRow] = []
    scanned = reused = 0
    for path in paths_iter:
        try:
            size_bytes, mtime_ns = _fingerprint(path)
        except OSError as error:
            rows.append(ManifestRow(path, 0, 0.0, 0, 0, 0.0, f"error: {error}"))
            scanned += 1
            continue
        old = previous.get(path)
        if old is not None and (old.size_bytes, old.mtime_ns) == (size_bytes, mtime_ns):
            rows.append(_with_clips(old, clip_seconds))
            reused += 1
        else:
            rows.append(_with_clips(_probe(path, size_bytes, mtime_ns), clip_seconds))
            scanned += 1
    write_manifest(rows, out)
    ok = [row for row in rows if row.ok]
    return ScanSummary(
        out_csv=out,
        videos_ok=len(ok),
        failed=[(row.path, row.status.removeprefix("error: ")) for row in rows if not row.ok],
        clips=sum(len(row.clips) for row in ok),
        frames=sum(row.num_frames for row in ok),
        scanned=scanned,
        reused=reused,
    )


def read_original_list(
    path: str | os.PathLike, root: str | os.PathLike | None = None
) -> list[ClipRef | LabelledVideo]:
    """Entries of one of the original Endo-FM list files.

    Formats, one entry a line: ``path,-1`` (pretraining ``train.csv``: a whole clip file), ``<dir> <start>
    <len> -1`` (pretraining frame-folder lists; ``start`` is the 0-based position in the folder) and
    ``path,label`` with ``label >= 0`` (PolypDiag ``splits/*.txt``). Relative paths are joined to ``root``
    when given. Blank lines and lines starting with ``#`` are skipped.
    """
    list_path = Path(path)
    base = Path(root) if root is not None else None
    try:
        lines = list_path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{list_path}: cannot read list file: {error}") from error
    entries: list[ClipRef | LabelledVideo] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if "," in line:
                name, label_text = (part.strip() for part in line.rsplit(",", 1))
                label = int(label_text)
                if label < -1:
                    raise ValueError(f"label {label} is negative")
                video = _join(base, name)
                entries.append(ClipRef(video) if label == -1 else LabelledVideo(video, label))
            else:
                parts = line.split()
                if len(parts) != 4:
                    raise ValueError("expected `path,label` or `<dir> <start> <len> -1`")
                start, length = int(parts[1]), int(parts[2])
                if start < 0 or length <= 0:
                    raise ValueError(f"bad clip range start={start} len={length}")
                entries.append(ClipRef(_join(base, parts[0]), start, length))
        except ValueError as error:
            raise DatasetError(f"{list_path}: line {number}: {error}: {raw!r}") from error
    return entries


def is_manifest(path: str | os.PathLike) -> bool:
    """Whether a file is a manifest CSV (its header names ``path`` and ``status``), not an original list."""
    try:
        with Path(path).open(newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read: {error}") from error
    return {"path", "status"} <= {name.strip() for name in header}


def read_pretrain_clips(path: str | os.PathLike) -> list[ClipRef]:
    """The clips of a pretraining list as given: a manifest CSV, or one of the original's lists as they are,
    ``train.csv`` (``path,-1``: whole clip files) or ``<dir> <start> <len> -1`` (frame-folder clips).

    A relative path in an original list is read as the original reads it, from the working folder, and,
    when nothing is there, from the list's folder. Listed files that exist nowhere are one error naming them.
    """
    path = Path(path)
    if is_manifest(path):
        return read_manifest(path)
    clips, missing = [], []
    for entry in read_original_list(path):
        found = entry.path
        if not found.is_absolute() and not found.exists() and (path.parent / found).exists():
            found = path.parent / found
        if not found.exists():
            missing.append(str(entry.path))
        start, length = (entry.start, entry.length) if isinstance(entry, ClipRef) else (0, None)
        clips.append(ClipRef(found, start, length))
    if missing:
        raise DatasetError(f"{path}: {len(missing)} listed clips exist neither from the working folder nor from "
                           f"{path.parent}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return clips


def _join(base: Path | None, name: str) -> Path:
    path = Path(name)
    return base / path if base is not None and not path.is_absolute() else path
