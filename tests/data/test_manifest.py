"""Manifests: clip ranges, scanning (with bad files, reruns), list formats, transcoding, the CLI."""

from __future__ import annotations

import csv
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from endofm.cli.main import main
from endofm.data import manifest
from endofm.data.encoding import write_video
from endofm.data.manifest import (
    COLUMNS,
    ClipRef,
    LabelledVideo,
    clip_ranges,
    read_manifest,
    read_original_list,
    scan_videos,
)
from endofm.data.transcode import transcode_videos
from endofm.data.video import read_video_info
from endofm.errors import DatasetError, InputError


def test_clip_ranges() -> None:
    assert clip_ranges(450, 150) == [(0, 150), (150, 150), (300, 150)]
    assert clip_ranges(470, 150) == [(0, 150), (150, 150), (300, 170)]
    assert clip_ranges(299, 150) == [(0, 299)]
    assert clip_ranges(40, 150) == [(0, 40)]
    assert clip_ranges(0, 150) == []
    with pytest.raises(InputError):
        clip_ranges(10, 0)


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_scan_lists_bad_files_and_clips(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "m" / "manifest.csv"
    summary = scan_videos(corpus, out, clip_seconds=0.5, progress=False)
    # one.mp4: 40 frames at 30 fps -> 15-frame clips (0, 15) and (15, 25); two.avi: 20 frames at 25 fps ->
    # 12-frame clips, the remainder joins the only clip (0, 20); frame folder: 12 frames -> one clip.
    assert summary.videos_ok == 3 and summary.clips == 4 and summary.scanned == 4
    assert [p.name for p, _ in summary.failed] == ["broken.mp4"]
    rows = _rows(out)
    assert list(rows[0]) == list(COLUMNS)
    broken = [r for r in rows if r["path"].endswith("broken.mp4")]
    assert len(broken) == 1 and broken[0]["status"].startswith("error: ") and broken[0]["clip_start"] == ""
    clips = read_manifest(out)
    assert len(clips) == 4 and all(isinstance(c, ClipRef) for c in clips)
    one = sorted((c.start, c.length) for c in clips if c.path.name == "one.mp4")
    assert one == [(0, 15), (15, 25)]
    assert [c for c in clips if c.path.name == "frames"] == [ClipRef(corpus.resolve() / "b" / "frames", 0, 12)]
    assert not [p for p in out.parent.iterdir() if p.name != "manifest.csv"], "temporary file left behind"


def test_scan_reads_transport_streams_hevc_and_mjpeg(video_dir: Path, tmp_path: Path) -> None:
    """Recorders often write MPEG transport streams (.ts); HEVC and Motion JPEG are common too."""
    folder = tmp_path / "recorder"
    folder.mkdir()
    for name in ("transport.ts", "hevc.mp4", "mjpeg.mov"):
        shutil.copy(video_dir / name, folder / name)
    summary = scan_videos(folder, tmp_path / "m.csv", clip_seconds=None, progress=False)
    assert summary.videos_ok == 3 and not summary.failed
    clips = sorted((c.path.name, c.length) for c in read_manifest(tmp_path / "m.csv"))
    assert clips == [("hevc.mp4", 40), ("mjpeg.mov", 20), ("transport.ts", 40)]


def test_scan_without_clips_gives_one_row_per_video(corpus: Path, tmp_path: Path) -> None:
    summary = scan_videos(corpus, tmp_path / "m.csv", clip_seconds=None, progress=False)
    clips = read_manifest(tmp_path / "m.csv")
    assert summary.clips == 3
    assert sorted(c.length for c in clips) == [12, 20, 40]


def test_rescan_reads_only_new_or_changed_files(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, video_dir: Path
) -> None:
    out = tmp_path / "manifest.csv"
    scan_videos(corpus, out, progress=False)
    probed: list[str] = []
    original = manifest._probe
    monkeypatch.setattr(manifest, "_probe", lambda path, *a: probed.append(path.name) or original(path, *a))
    summary = scan_videos(corpus, out, progress=False)
    assert probed == [] and summary.reused == 4 and summary.videos_ok == 3
    shutil.copy(video_dir / "clip.mkv", corpus / "a" / "new.mkv")
    shutil.copy(video_dir / "h264.mp4", corpus / "b" / "two.avi")
    stat = (corpus / "b" / "two.avi").stat()
    os.utime(corpus / "b" / "two.avi", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    summary = scan_videos(corpus, out, progress=False)
    assert sorted(probed) == ["new.mkv", "two.avi"]
    assert summary.scanned == 2 and summary.reused == 3 and summary.videos_ok == 4
    two = [c for c in read_manifest(out) if c.path.name == "two.avi"]
    assert sum(c.length for c in two) == 40
    (corpus / "a" / "new.mkv").unlink()
    summary = scan_videos(corpus, out, progress=False)
    assert summary.videos_ok == 3 and not any(c.path.name == "new.mkv" for c in read_manifest(out))


def test_read_manifest_relative_paths_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "hand.csv"
    path.write_text("path,status,clip_start,clip_length\nvids/a.mp4,ok,0,150\nb.mp4,error: broken,,\n")
    assert read_manifest(path) == [ClipRef(tmp_path / "vids" / "a.mp4", 0, 150)]
    path.write_text("file,label\na.mp4,1\n")
    with pytest.raises(DatasetError, match="missing columns"):
        read_manifest(path)
    path.write_text("path,status,clip_start,clip_length\na.mp4,ok,zero,150\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_manifest(path)


def test_read_original_list_formats(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("clips/a.mp4,-1\nclips/b.mp4,-1\n")
    assert read_original_list(train, root=tmp_path) == [
        ClipRef(tmp_path / "clips" / "a.mp4"),
        ClipRef(tmp_path / "clips" / "b.mp4"),
    ]
    frames = tmp_path / "list.txt"
    frames.write_text("video_01 0 150 -1\n\n# comment\nvideo_01 150 170 -1\n")
    assert read_original_list(frames) == [ClipRef(Path("video_01"), 0, 150), ClipRef(Path("video_01"), 150, 170)]
    split = tmp_path / "train.txt"
    split.write_text("videos/1.mp4,0\nvideos/2.mp4,1\n")
    assert read_original_list(split) == [LabelledVideo(Path("videos/1.mp4"), 0), LabelledVideo(Path("videos/2.mp4"), 1)]
    for bad in ("a.mp4,x\n", "dir 0 -1\n", "a.mp4,-3\n", "dir 5 0 -1\n"):
        split.write_text("ok.mp4,1\n" + bad)
        with pytest.raises(DatasetError, match="line 2"):
            read_original_list(split)


def _x264_settings(path: Path) -> tuple[dict[str, str], list[int]]:
    """The settings x264 wrote into the stream, and the keyframes' positions in presentation order."""
    with av.open(str(path)) as container:
        packets = sorted((p.pts, p.is_keyframe, bytes(p)) for p in container.demux(video=0) if p.size)
    header = next(data for _, _, data in packets if b"x264 - core" in data)
    options = re.search(rb"options: ([^\x00]*)", header).group(1).decode()
    settings = dict(item.split("=", 1) for item in options.split() if "=" in item)
    return settings, [i for i, (_, key, _) in enumerate(packets) if key]


@pytest.mark.parametrize("writer", ["synthetic", "transcode"])
def test_training_videos_are_encoded_for_random_reads(tmp_path: Path, writer: str) -> None:
    """The synthetic corpus and transcoded corpora: a keyframe at least every second (30 frames), 7 B-frames
    between references that nothing references, no CABAC, no deblocking (``tune=fastdecode``), and no
    macroblock tree."""
    frames = np.random.default_rng(0).integers(0, 256, (70, 32, 48, 3), dtype=np.uint8)
    path = write_video(tmp_path / "src" / "v.mp4", frames, fps=30)
    if writer == "transcode":
        transcode_videos(tmp_path / "src", tmp_path / "out", short_side=16, progress=False)
        path = tmp_path / "out" / "v.mp4"
    settings, keyframes = _x264_settings(path)
    assert settings["keyint"] == "30" and max(np.diff([*keyframes, 70])) <= 30
    assert settings["bframes"] == "7" and settings["b_adapt"] == "0"
    assert settings["b_pyramid"] == "0" and settings["cabac"] == "0" and settings["deblock"].startswith("0")
    assert settings["mbtree"] == "0"


def test_transcode(tmp_path: Path, make_video: Callable) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    make_video(src / "sub" / "big.mkv", num_frames=12, size=(48, 64))
    make_video(src / "small.mp4", num_frames=6, size=(16, 16))
    summary = transcode_videos(src, tmp_path / "out", short_side=24, progress=False)
    assert len(summary.written) == 2 and not summary.failed
    big = read_video_info(tmp_path / "out" / "sub" / "big.mp4")
    assert (big.width, big.height, big.num_frames, big.fps) == (32, 24, 12, 30.0)
    small = read_video_info(tmp_path / "out" / "small.mp4")
    assert (small.width, small.height, small.num_frames) == (16, 16, 6)
    again = transcode_videos(src, tmp_path / "out", short_side=24, progress=False)
    assert len(again.up_to_date) == 2 and not again.written
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no video files"):
        transcode_videos(tmp_path / "empty", tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()


def test_cli_scan_prints_summary(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "manifest.csv"
    assert main(["data", "scan", str(corpus), "--out", str(out), "--quiet"]) == 1  # a file failed
    printed = capsys.readouterr().out
    assert "videos ok: 3" in printed and "clips: 3" in printed and "failed: 1" in printed
    assert "broken.mp4" in printed and out.exists()
    assert main(["data", "scan", str(corpus), "--out", str(out), "--no-progress"]) == 1  # the manifest is updated
    assert "unchanged since last scan: 0" not in capsys.readouterr().out
    assert main(["data", "scan", str(tmp_path / "nope"), "--out", str(out)]) == 1
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    empty_out = tmp_path / "empty.csv"
    assert main(["data", "scan", str(tmp_path / "empty"), "--out", str(empty_out), "--no-progress"]) == 1
    assert "no videos" in capsys.readouterr().err and not empty_out.exists()


def test_cli_synth_calls_the_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from endofm.tasks import corpus

    calls = []
    monkeypatch.setattr(corpus, "write_synthetic_corpus", lambda *a, **k: calls.append((a, k)) or a[0])
    assert main(["data", "synth", str(tmp_path), "--videos", "3", "--seed", "7"]) == 0
    assert main(["data", "synth", str(tmp_path), "--videos", "3", "--pretrain-clips", "50", "--pretrain-frames", "16",
                 "--pretrain-size", "64"]) == 0
    defaults = {"pretrain_videos": None, "pretrain_frames": 32, "pretrain_size": 128}
    assert calls == [((tmp_path,), {"num_videos": 3, "seed": 7, **defaults}),
                     ((tmp_path,), {"num_videos": 3, "seed": 0, "pretrain_videos": 50, "pretrain_frames": 16,
                                    "pretrain_size": 64})]


@pytest.mark.parametrize("option", [["--pretrain-size", "63"], ["--pretrain-frames", "0"], ["--pretrain-clips", "0"]])
def test_cli_synth_refuses_bad_pretraining_options_before_writing(tmp_path: Path, option: list[str],
                                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "synth", str(tmp_path / "out"), "--videos", "2", *option]) != 0
    assert "pretrain" in capsys.readouterr().err and not (tmp_path / "out").exists()
