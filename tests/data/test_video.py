"""VideoReader: seeking, resizing, frame folders, errors; and normalisation."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from endofm.data.normalization import NORMALIZATION, normalize
from endofm.data.video import VideoReader, read_video_info
from endofm.errors import InputError, VideoError


@pytest.mark.parametrize("name", ["h264.mp4", "audio.mp4", "mpeg4.avi", "clip.mkv", "program.mpg", "vp9.webm",
                                  "transport.ts", "hevc.mp4", "mjpeg.mov", "corpus.mp4"])
def test_seek_reads_equal_full_decode(video_dir: Path, name: str) -> None:
    with VideoReader(video_dir / name) as reader:
        full = reader.read_all()
        assert full.shape[0] == len(reader)
        rng = random.Random(0)
        for _ in range(12):
            indices = [rng.randrange(len(reader)) for _ in range(rng.randint(1, 5))]
            assert torch.equal(reader.read(indices), full[indices]), indices
        backwards = list(range(len(reader) - 1, -1, -7)) + [3, 3]
        assert torch.equal(reader.read(backwards), full[backwards])


def test_frames_match_what_was_encoded(video_dir: Path, frame_pattern: Callable) -> None:
    with VideoReader(video_dir / "h264.mp4") as reader:
        frames = reader.read([0, 17, 39])
    for k, index in enumerate([0, 17, 39]):
        expected = torch.from_numpy(frame_pattern(index, 48, 64)).permute(2, 0, 1).float()
        assert (frames[k].float() - expected).abs().mean() < 6.0


@pytest.mark.parametrize(("codec", "pix_fmt", "tolerance"),
                         [("libx265", "yuv420p10le", 6.0), ("ffv1", "gray16le", 3.0)])
def test_10_and_16_bit_videos_decode_to_8_bit_rgb(tmp_path: Path, make_video: Callable, frame_pattern: Callable,
                                                  codec: str, pix_fmt: str, tolerance: float) -> None:
    path = make_video(tmp_path / "deep.mkv", num_frames=12, codec=codec, pix_fmt=pix_fmt)
    with VideoReader(path) as reader:
        full = reader.read_all()
        assert full.dtype == torch.uint8 and full.shape == (12, 3, 48, 64)
        assert torch.equal(reader.read([9, 2]), full[[9, 2]])
    expected = torch.from_numpy(frame_pattern(9, 48, 64)).permute(2, 0, 1).float()
    if pix_fmt.startswith("gray"):
        expected = (expected * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0).expand(3, -1, -1)
    assert (full[9].float() - expected).abs().mean() < tolerance


def test_info_and_shapes(video_dir: Path) -> None:
    info = read_video_info(video_dir / "mpeg4.avi")
    assert (info.num_frames, info.fps, info.width, info.height) == (20, 25.0, 48, 32)
    assert info.duration == pytest.approx(0.8)
    with VideoReader(video_dir / "h264.mp4") as reader:
        frames = reader.read([1, 2])
        assert frames.dtype == torch.uint8 and frames.shape == (2, 3, 48, 64)
        assert reader.read([]).shape == (0, 3, 48, 64)


def test_audio_stream_is_ignored(video_dir: Path) -> None:
    info = read_video_info(video_dir / "audio.mp4")
    assert info.num_frames == 30 and info.fps == 30.0


@pytest.mark.parametrize(("size", "shape"), [(24, (24, 32)), ((20, 30), (20, 30)), (None, (48, 64))])
def test_resize_on_decode(video_dir: Path, size: int | tuple[int, int] | None, shape: tuple[int, int]) -> None:
    with VideoReader(video_dir / "h264.mp4", size=size) as reader:
        assert reader.read([5]).shape == (1, 3, *shape)
        assert reader.info.width == 64 and reader.frame_size == shape


def test_index_out_of_range(video_dir: Path) -> None:
    with VideoReader(video_dir / "h264.mp4") as reader:
        for bad in ([40], [-1], [0, 100]):
            with pytest.raises(InputError, match="out of range"):
                reader.read(bad)


def test_missing_zero_text_and_truncated_files(tmp_path: Path, broken_files: dict[str, Path]) -> None:
    with pytest.raises(VideoError, match="no such file"):
        VideoReader(tmp_path / "missing.mp4")
    for kind, path in broken_files.items():
        with pytest.raises(VideoError, match=str(path)), VideoReader(path) as reader:
            reader.read_all()
        assert kind


def test_truncated_file_with_index_at_start_is_reported(broken_files: dict[str, Path]) -> None:
    with pytest.raises(VideoError, match="truncated"):
        VideoReader(broken_files["truncated_faststart"])


def test_corrupt_frame_mid_video_names_file_and_frame(
    tmp_path: Path, video_dir: Path, corrupt_middle: Callable
) -> None:
    bad = corrupt_middle(video_dir / "h264.mp4", tmp_path / "bad.mp4")
    with pytest.raises(VideoError, match=r"bad\.mp4.*frame \d+"), VideoReader(bad) as reader:
        reader.read_all()


def test_frame_folder_natural_sort_gray_and_16_bit(tmp_path: Path, frame_pattern: Callable) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10):
        Image.fromarray(frame_pattern(i, 24, 32)).save(folder / f"frame{i}.png")
    Image.fromarray(np.full((24, 32), 77, np.uint8)).save(folder / "frame11.png")
    Image.fromarray(np.full((24, 32), 32896, np.uint16)).save(folder / "frame12.png")
    Image.fromarray(np.full((24, 32), 65535, np.uint16)).save(folder / "frame13.tif")
    Image.fromarray(np.full((24, 32, 3), 200, np.uint8)).save(folder / "frame20.jpeg")
    (folder / "notes.txt").write_text("ignored")
    with VideoReader(folder) as reader:
        assert len(reader) == 7 and reader.info.width == 32 and reader.info.height == 24
        frames = reader.read(range(6))
        expected = torch.from_numpy(frame_pattern(10, 24, 32)).permute(2, 0, 1).float()
        assert torch.equal(frames[2].float(), expected)
        assert frames.dtype == torch.uint8 and frames.shape == (6, 3, 24, 32)
        assert torch.all(frames[3] == 77)
        assert torch.all(frames[4] == 128)
        assert torch.all(frames[5] == 255)
        assert (reader.read([6]).float() - 200).abs().max() <= 2
    with VideoReader(folder, size=12) as reader:
        assert reader.read([0, 5]).shape == (2, 3, 12, 16)


def test_frame_folder_errors(tmp_path: Path, frame_pattern: Callable) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoError, match="no frames"):
        VideoReader(empty)
    folder = tmp_path / "bad"
    folder.mkdir()
    Image.fromarray(frame_pattern(0, 8, 8)).save(folder / "0.png")
    (folder / "1.png").write_bytes(b"not a png")
    with VideoReader(folder) as reader, pytest.raises(VideoError, match=r"1\.png: frame 1"):
        reader.read([1])


def test_normalize() -> None:
    video = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(video, "imagenet")
    mean, std = NORMALIZATION["imagenet"]
    assert out.dtype == torch.float32 and out.shape == video.shape
    assert out[0, 1, 0, 0].item() == pytest.approx((1 - mean[1]) / std[1])
    assert normalize(video, "half").max().item() == pytest.approx(1.0)
    with pytest.raises(InputError, match="preset"):
        normalize(video, "nope")
    with pytest.raises(InputError, match="shape"):
        normalize(video[0], "half")


def test_seek_with_many_keyframes(tmp_path: Path, make_video: Callable) -> None:
    path = make_video(tmp_path / "long.mp4", num_frames=90, size=(32, 32))
    with VideoReader(path) as reader:
        full = reader.read_all()
        for start in (0, 7, 8, 45, 81, 89):
            assert torch.equal(reader.read([start]), full[[start]])


@pytest.mark.parametrize(
    ("name", "frames", "width", "height"),
    [("bigbuckbunny.mp4", 132, 1280, 720), ("bikes.mp4", 250, 640, 272)],
)
def test_real_videos(real_videos: Path, name: str, frames: int, width: int, height: int) -> None:
    path = real_videos / name
    info = read_video_info(path)
    assert (info.num_frames, info.width, info.height) == (frames, width, height)
    assert info.fps == pytest.approx(25.0) and info.duration == pytest.approx(frames / 25)
    with VideoReader(path, size=(36, 64)) as reader:
        full = reader.read_all()
        picks = [frames - 1, 0, frames // 2, frames // 2 + 1, 13]
        assert torch.equal(reader.read(picks), full[picks])


def test_a_wanted_frame_lost_to_frame_skipping_is_decoded_again(video_dir: Path, monkeypatch) -> None:
    calls = []
    original = VideoReader._decode_from

    def losing_one(self, keyframe, wanted, skip):
        calls.append(skip)
        frames = original(self, keyframe, wanted, skip)
        if skip and frames:
            frames.pop(max(frames))
        return frames

    with VideoReader(video_dir / "h264.mp4") as reader:
        full = reader.read_all()
        monkeypatch.setattr(VideoReader, "_decode_from", losing_one)
        assert torch.equal(reader.read([5, 17, 30]), full[[5, 17, 30]])
    assert calls == [True, False]


def test_upscale_false_only_shrinks(video_dir: Path) -> None:
    path = video_dir / "h264.mp4"
    with VideoReader(path, size=96) as enlarged, VideoReader(path, size=96, upscale=False) as native, \
            VideoReader(path) as unresized:
        assert enlarged.frame_size == (96, 128) and native.frame_size == (48, 64)
        assert torch.equal(native.read([5]), unresized.read([5]))
    with VideoReader(path, size=24, upscale=False) as shrunk:
        assert shrunk.frame_size == (24, 32) and shrunk.read([0]).shape == (1, 3, 24, 32)
