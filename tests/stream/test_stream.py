"""Live streaming: causality of every task's predictor, the drop policy, a broken and a stalled stream, the
JSONL schema, bad sources, and the command."""

from __future__ import annotations

import errno
import io
import json
import os
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from endofm.cli.main import main
from endofm.data.synthetic import render_video
from endofm.errors import InputError, StreamError
from endofm.models.backbone import BackboneConfig
from endofm.models.classification import ClassifierNetwork
from endofm.models.detection.stft import STFTConfig, STFTDetector
from endofm.models.detection.transform import STFT_INPUT
from endofm.models.heads import LinearClassifier
from endofm.models.registry import build_model
from endofm.models.segmentation import SegmentationDecoder, SegmentationNetwork
from endofm.stream import Stream, load_predictor, run_stream
from endofm.stream.source import LiveFrames
from endofm.stream.steps import STFT_REACH, past_positions
from endofm.stream.torch_nets import embed_predictor, finetuned_predictor
from endofm.tasks.base import LoadedFinetuned, preset_input

SIZE = 32


def _models() -> dict[str, object]:
    """Tiny models of the four live tasks."""
    torch.manual_seed(0)
    backbone = build_model("endofm_vit_micro", embed_dim=32, num_heads=1, depth=1, img_size=SIZE, num_frames=2)
    classify = LoadedFinetuned("classify", ClassifierNetwork(backbone, LinearClassifier(32, 2)).eval(),
                               preset_input("polypdiag", (SIZE, SIZE), 2), "tiny", "endofm",
                               {"data": {"num_frames": 2}})
    segmenter = SegmentationNetwork(backbone, SegmentationDecoder(32, channels=(8, 8, 8, 8))).eval()
    segment = LoadedFinetuned("segment", segmenter, preset_input("half", (SIZE, SIZE), 2), "tiny", "endofm")
    detector = STFTDetector(STFTConfig(BackboneConfig(embed_dim=32, depth=1, num_heads=1, img_size=64, num_frames=1),
                                       out_channels=64, num_convs=1)).eval()  # GroupNorm(32, 64): 1x1 maps run
    with torch.no_grad():  # boxes above the thresholds
        detector.head.cls_logits.bias.zero_()
        detector.head.bbox_pred.bias.fill_(1.0)
    detect = LoadedFinetuned("detect", detector, STFT_INPUT.__class__(**{**STFT_INPUT.__dict__, "size": (64, 64)}),
                             "tiny", "stft")
    return {"classify": classify, "segment": segment, "detect": detect, "embed": backbone.eval()}


@pytest.fixture(scope="module")
def models():
    return _models()


def _predictor(models, task: str):
    if task == "embed":
        return embed_predictor(models["embed"])
    return finetuned_predictor(models[task], score_threshold=0.0 if task == "detect" else None)


def _video(path: Path, frames: int, fps: int = 25, size: int = 48, faststart: bool = False) -> Path:
    clip = render_video(0, frames, size, polyp=True).frames
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("task", ["classify", "segment", "detect", "embed"])
def test_a_frames_output_is_unchanged_when_later_frames_change(models, task):
    frames = render_video(1, 3, 48, polyp=True).frames
    other = frames.copy()
    other[1:] = 255 - other[1:]
    runs = []
    for video in (frames, other):
        predictor = _predictor(models, task)
        runs.append([predictor.push(frame) for frame in video])
    def seen(run: list, t: int) -> str:
        prediction, arrays = run[t]
        return json.dumps(prediction) + str({name: array.tolist() for name, array in arrays.items()})

    for t in range(3):
        assert (seen(runs[0], t) == seen(runs[1], t)) == (t < 1), (task, t)  # the change shows from frame 1 on
    if task == "detect":
        assert runs[0][2][0]["boxes"] and all(-2 <= o <= 0 for o in runs[0][2][0]["reference_offsets"])


def test_past_references_mirror_the_original_draws():
    rng, original = np.random.RandomState(3), np.random.RandomState(3)
    offsets = past_positions(rng)
    left = original.choice(range(0, 9), 5, replace=False) - STFT_REACH
    right = original.choice(range(10, 19), 5, replace=False) - STFT_REACH
    assert offsets == [*left.tolist(), *(-right).tolist()] and all(-9 <= o <= -1 for o in offsets)


class Slow:
    """A predictor that takes ``seconds`` per frame."""

    task = "classify"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def push(self, frame):
        time.sleep(self.seconds)
        return {"polyp_probability": 0.0, "label": "normal"}, {}

    def reset(self) -> None:
        pass


def test_real_time_rate_and_a_slow_model_drops_frames_with_bounded_latency(tmp_path):
    video = _video(tmp_path / "live.mp4", 20)  # 0.8 s at 25 frames/s
    start = time.perf_counter()
    fast = run_stream(str(video), Slow(0.0), tmp_path / "fast")
    assert time.perf_counter() - start >= 0.7  # played at its own rate, not as fast as it decodes
    assert fast["frames_in"] == 20 and fast["frames_out"] + fast["frames_dropped"] == 20
    slow = run_stream(str(video), Slow(0.1), tmp_path / "slow")
    assert slow["frames_in"] == 20 and slow["frames_dropped"] >= 8
    assert slow["frames_out"] + slow["frames_dropped"] == 20
    assert slow["latency_ms"]["max"] < 400  # one model step waiting at most, never a growing queue
    every = run_stream(str(video), Slow(0.02), tmp_path / "all", live=False)
    assert every["frames_out"] == 20 and every["frames_dropped"] == 0


def test_jsonl_schema_summary_and_annotated_video(models, tmp_path):
    video = _video(tmp_path / "case.mp4", 6)
    summary = run_stream(str(video), _predictor(models, "segment"), tmp_path / "out", live=False, video=True)
    lines = [json.loads(line) for line in (tmp_path / "out" / "frames.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(6))
    for line in lines:
        assert set(line) == {"frame", "timestamp", "output_time", "latency_ms", "prediction"}
        assert set(line["prediction"]) == {"polyp_fraction", "box"} and line["latency_ms"] >= 0
    assert lines[1]["timestamp"] == pytest.approx(0.04) and lines[-1]["output_time"] > lines[0]["output_time"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["ended"] == "end" and summary["frames_out"] == 6 and summary["latency_ms"]["p95"] is not None
    with av.open(str(tmp_path / "out" / "annotated.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6
    with pytest.raises(InputError, match="--overwrite"):
        run_stream(str(video), _predictor(models, "segment"), tmp_path / "out")
    assert len((tmp_path / "out" / "frames.jsonl").read_text().splitlines()) == 6


def test_a_truncated_file_ends_with_a_message_and_keeps_what_was_written(tmp_path):
    video = _video(tmp_path / "full.mp4", 40, faststart=True)
    data = video.read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[: len(data) // 2])
    summary = run_stream(str(broken), Slow(0.0), tmp_path / "out", live=False, stall_timeout=5)
    assert summary["ended"] == "broken" and "broke off" in summary["message"]
    assert 0 < summary["frames_out"] < 40
    assert len((tmp_path / "out" / "frames.jsonl").read_text().splitlines()) == summary["frames_out"]


def test_a_stalled_stream_is_reported_after_the_timeout(tmp_path, monkeypatch):
    video = _video(tmp_path / "case.mp4", 4)

    def stalls(self):
        yield 0.0, np.zeros((8, 8, 3), np.uint8)
        time.sleep(3)

    monkeypatch.setattr(LiveFrames, "_decode", stalls)
    start = time.perf_counter()
    summary = run_stream(str(video), Slow(0.0), tmp_path / "out", stall_timeout=0.3)
    assert time.perf_counter() - start < 2
    assert summary["ended"] == "stalled" and "stalled" in summary["message"] and summary["frames_out"] == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_live_pipe_that_stops_sending_is_reported_as_stalled(tmp_path):
    """A real live source: an MPEG-TS stream on a named pipe whose sender stops mid-stream but keeps the pipe
    open. The frames that came are predicted and written; the run ends with the stall message, not a hang."""
    encoded = io.BytesIO()
    with av.open(encoded, "w", format="mpegts") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 48
        stream.pix_fmt = "yuv420p"
        for frame in render_video(0, 50, 48, polyp=True).frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = encoded.getvalue()
    pipe = tmp_path / "live.ts"
    os.mkfifo(pipe)
    done = threading.Event()

    def sender() -> None:
        with open(pipe, "wb") as out:
            out.write(data[: len(data) * 2 // 3])
            out.flush()
            done.wait(30)  # silent, the pipe still open: a stalled sender

    threading.Thread(target=sender, daemon=True).start()
    try:
        start = time.perf_counter()
        summary = run_stream(str(pipe), Slow(0.0), tmp_path / "out", live=False, stall_timeout=1.0)
        assert time.perf_counter() - start < 15
    finally:
        done.set()
    assert summary["ended"] == "stalled" and "stalled" in summary["message"]
    assert 0 < summary["frames_out"] < 50
    assert len((tmp_path / "out" / "frames.jsonl").read_text().splitlines()) == summary["frames_out"]


def test_sources_that_cannot_be_opened(tmp_path, monkeypatch):
    with pytest.raises(StreamError, match="no such video file"):
        Stream(str(tmp_path / "missing.mp4"), Slow(0.0))
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(StreamError, match="cannot open the file source"):
        Stream(str(tmp_path / "notes.mp4"), Slow(0.0))
    assert not (tmp_path / "out").exists()

    def busy(*args, **kwargs):
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(av, "open", busy)
    with pytest.raises(StreamError, match="camera is busy"):
        Stream("/dev/video0", Slow(0.0))


def test_the_stream_command(tmp_path, capsys):
    torch.manual_seed(0)
    backbone = build_model("endofm_vit_micro", embed_dim=64, num_heads=1, depth=1)
    torch.save({"backbone_state_dict": backbone.state_dict(),
                "state_dict": LinearClassifier(64, 2).state_dict()}, tmp_path / "polypdiag.pth")
    video = _video(tmp_path / "case.mp4", 4)
    out = tmp_path / "live"
    assert main(["stream", str(video), "--checkpoint", str(tmp_path / "polypdiag.pth"), "--out", str(out),
                 "--as-fast-as-possible", "--video", "--device", "cpu", "--window", "4"]) == 0
    assert "frames in 4, out 4, dropped 0" in capsys.readouterr().err
    assert (out / "annotated.mp4").is_file() and json.loads((out / "summary.json").read_text())["task"] == "classify"
    assert main(["stream", str(video), "--checkpoint", str(tmp_path / "polypdiag.pth"), "--out", str(tmp_path / "x"),
                 "--reference-seed", "1"]) == 1
    assert "takes no reference seed" in capsys.readouterr().err
    with pytest.raises(InputError, match="embed predictor takes no reference seed"):
        load_predictor(tmp_path / "polypdiag.pth", embed=True, window=None, seed=1)
