"""``endofm predict``: apply a fine-tuned model to a user's video, frame by frame.

The task comes from the checkpoint (a fine-tuned model folder records it; an original fine-tuned PolypDiag
classifier is a classifier). Outputs in ``out_dir``:

- ``predictions.csv``: one row per frame (classification, segmentation) or per box (detection);
- ``masks.npz`` (segmentation): the predicted masks, uint8 ``[N, size, size]``;
- ``annotated.mp4``: the video with the label and its probability over time, the mask overlay, or the boxes;
- ``predictions.json``: everything, written last: its presence marks a complete result (an older one is
  removed first, and every file is written to a temporary name and renamed when complete).

Classification: each frame gets the mean polyp probability of the sliding windows covering it (``num_frames``
frames spread over ``4 * num_frames`` consecutive frames, half-overlapping), and the video gets one
prediction from ``num_frames`` frames spread over all of it (as in training). Segmentation: windows of the
model's clip length covering the video (:func:`endofm.tasks.segment.predict_segment`; the original's TransUNet,
released or converted, takes windows of 25 frames). Detection: every frame with its reference frames
(the original STFT detector: its test-time queue of 19 frames and 10 seeded references,
:mod:`endofm.tasks.detect_stft`).
Boxes are given in the pixel coordinates of the input video.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2
from tqdm import tqdm

from endofm.data.datasets.polypdiag import evenly_spaced
from endofm.data.transforms import VideoTransform, eval_transform
from endofm.data.video import VideoReader, encode_mp4
from endofm.engine.distributed import resolve_device
from endofm.io import atomic_write, atomic_write_text
from endofm.tasks.classify import ClassifierNetwork
from endofm.tasks.folder import FinetunedModel, read_finetuned
from endofm.tasks.results import json_safe

DISPLAY_SHORT_SIDE = 360
CHUNK = 64


def _display_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, DISPLAY_SHORT_SIDE / min(height, width))
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def _chunks(count: int, size: int = CHUNK) -> Iterator[list[int]]:
    for start in range(0, count, size):
        yield list(range(start, min(start + size, count)))


def predict_classify(model: FinetunedModel, reader: VideoReader, device: torch.device,
                     progress: bool = False) -> dict[str, Any]:
    """Per-frame and whole-video polyp probabilities."""
    data = model.data
    num_frames, transform = int(data["num_frames"]), eval_transform(int(data["size"]),
                                                                     normalization=data["normalization"])
    network = ClassifierNetwork(model.backbone, model.head).to(device).eval()
    count = len(reader)

    def probability(indices: list[int]) -> np.ndarray:
        video = transform(reader.read(indices))["video"].unsqueeze(0).to(device)
        with torch.inference_mode():
            return torch.softmax(network(video).float(), dim=1)[0].cpu().numpy()

    span = min(count, 4 * num_frames)
    starts = list(range(0, max(count - span, 0) + 1, max(span // 2, 1)))
    if starts[-1] + span < count:
        starts.append(count - span)
    total, covered = np.zeros(count), np.zeros(count)
    for start in tqdm(starts, desc="windows", unit="window", disable=not progress):
        indices = [start + i for i in evenly_spaced(span, num_frames)]
        total[start : start + span] += probability(indices)[1]
        covered[start : start + span] += 1
    per_frame = total / np.maximum(covered, 1)
    video_probs = probability(evenly_spaced(count, num_frames))
    classes = data.get("classes") or [str(i) for i in range(len(video_probs))]
    return {
        "video": {"label": classes[int(video_probs.argmax())], "probabilities": dict(zip(classes, video_probs.tolist(),
                                                                                       strict=True))},
        "frames": [{"frame": i, "time": i / reader.info.fps, "polyp_probability": float(p),
                    "label": classes[int(p >= 0.5)]} for i, p in enumerate(per_frame)],
    }


def predict_detect(model: FinetunedModel, reader: VideoReader, device: torch.device, score_threshold: float = 0.5,
                   progress: bool = False) -> dict[str, Any]:
    """Boxes (input-video pixels) scoring at least ``score_threshold``, per frame."""
    from endofm.tasks.detect import detect_frames, stack_clip

    data = model.data
    max_size = data["max_size"] if data["max_size"] > data["short_side"] else None
    transform = VideoTransform(v2.Resize(int(data["short_side"]), max_size=max_size, antialias=True),
                               data["normalization"])
    detector = model.head.to(device).eval()
    offsets = [int(o) for o in data["ref_offsets"]]
    classes = data.get("classes") or [str(i) for i in range(model.head_config.get("num_classes", 1))]
    count = len(reader)
    frames = []
    for chunk in tqdm(list(_chunks(count, 8)), desc="frames", unit="batch", disable=not progress):
        clips = []
        for k in chunk:
            indices = [min(max(k + o, 0), count - 1) for o in offsets] + [k]
            clips.append(stack_clip(transform(reader.read(indices))["video"]))
        outputs = detect_frames(detector, clips, device)
        for k, clip, out in zip(chunk, clips, outputs, strict=True):
            sy, sx = reader.info.height / clip.shape[-2], reader.info.width / clip.shape[-1]
            keep = out["scores"] >= score_threshold
            boxes = (out["boxes"][keep] * torch.tensor([sx, sy, sx, sy])).tolist()
            frames.append({"frame": k, "time": k / reader.info.fps, "boxes": [
                {"box": box, "score": float(score), "label": classes[int(label)]}
                for box, score, label in zip(boxes, out["scores"][keep].tolist(), out["labels"][keep].tolist(),
                                             strict=True)]})
    return {"score_threshold": score_threshold, "frames": frames}


def _annotate(task: str, image: Image.Image, frame: dict[str, Any], scale: tuple[float, float],
              mask: np.ndarray | None) -> Image.Image:
    draw = ImageDraw.Draw(image)
    if task == "classify":
        p = frame["polyp_probability"]
        width = image.width
        draw.rectangle([0, 0, width, 22], fill=(0, 0, 0))
        draw.rectangle([0, 18, int(width * p), 22], fill=(255, 60, 60) if p >= 0.5 else (60, 200, 60))
        draw.text((4, 3), f"{frame['label']}  p(polyp)={p:.2f}", fill=(255, 255, 255))
    elif task == "segment" and mask is not None:
        overlay = np.asarray(Image.fromarray(mask * 255).resize(image.size, Image.NEAREST)) > 0
        pixels = np.asarray(image).copy()
        pixels[overlay] = (0.5 * pixels[overlay] + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
        image = Image.fromarray(pixels)
        ImageDraw.Draw(image).text((4, 3), f"polyp {100 * frame['polyp_fraction']:.1f}%", fill=(255, 255, 255))
    elif task == "detect":
        for item in frame["boxes"]:
            x1, y1, x2, y2 = item["box"]
            box = [x1 * scale[1], y1 * scale[0], x2 * scale[1], y2 * scale[0]]
            draw.rectangle(box, outline=(255, 255, 0), width=2)
            draw.text((box[0] + 2, max(box[1] - 12, 0)), f"{item['label']} {item['score']:.2f}", fill=(255, 255, 0))
    return image


def write_annotated(path: Path, reader: VideoReader, task: str, frames: list[dict[str, Any]],
                    masks: np.ndarray | None = None) -> Path:
    """Decode the video again at display size, draw the predictions and encode an mp4 (atomically)."""
    height, width = _display_size(reader.info.height, reader.info.width)
    display = VideoReader(reader.path, size=(height, width))
    scale = (height / reader.info.height, width / reader.info.width)

    def annotated() -> Iterator[np.ndarray]:
        for chunk in _chunks(len(display)):
            for k, image in zip(chunk, display.read(chunk).permute(0, 2, 3, 1).numpy(), strict=True):
                yield np.asarray(_annotate(task, Image.fromarray(image), frames[k], scale,
                                           masks[k] if masks is not None else None))

    try:
        return atomic_write(path, lambda tmp: encode_mp4(tmp, annotated(), width, height, reader.info.fps))
    finally:
        display.close()


def _csv_rows(task: str, frames: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    if task == "classify":
        return ["frame", "time", "polyp_probability", "label"], [
            [f["frame"], f"{f['time']:.3f}", f"{f['polyp_probability']:.6f}", f["label"]] for f in frames]
    if task == "segment":
        return ["frame", "time", "polyp_fraction", "x1", "y1", "x2", "y2"], [
            [f["frame"], f"{f['time']:.3f}", f"{f['polyp_fraction']:.6f}",
             *([f"{v:.1f}" for v in f["box"]] if f["box"] else ["", "", "", ""])] for f in frames]
    return ["frame", "time", "label", "score", "x1", "y1", "x2", "y2"], [
        [f["frame"], f"{f['time']:.3f}", b["label"], f"{b['score']:.6f}", *[f"{v:.1f}" for v in b["box"]]]
        for f in frames for b in f["boxes"]]


def predict_video(video: str | os.PathLike, checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                  device: str = "auto", score_threshold: float = 0.5, progress: bool = False,
                  num_heads: int | None = None, reference_seed: int = 0) -> dict[str, str]:
    """Apply a fine-tuned model to a video; returns the paths written (see the module docstring).
    ``num_heads`` is for released checkpoints (not stored in them); ``reference_seed`` seeds the STFT
    detector's reference draws."""
    from endofm.tasks.detect_stft import find_stft, predict_stft
    from endofm.tasks.segment import find_segmenter, predict_segment

    out = Path(out_dir)
    segmenter = find_segmenter(checkpoint, num_heads)
    stft = find_stft(checkpoint, num_heads) if segmenter is None else None
    model = segmenter or stft or read_finetuned(checkpoint)
    torch_device = resolve_device(device)
    with VideoReader(video) as reader:
        masks = None
        if model.task == "classify":
            result = predict_classify(model, reader, torch_device, progress)
        elif model.task == "segment":
            result, masks = predict_segment(model, reader, torch_device, progress)
        elif stft is not None:
            result = predict_stft(stft, reader, torch_device, score_threshold, reference_seed, progress)
        else:
            result = predict_detect(model, reader, torch_device, score_threshold, progress)
        (out / "predictions.json").unlink(missing_ok=True)
        written: dict[str, str] = {}
        if masks is not None:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, masks=masks)
            data = buffer.getvalue()
            written["masks"] = str(atomic_write(out / "masks.npz", lambda tmp: Path(tmp).write_bytes(data)))
        written["video"] = str(write_annotated(out / "annotated.mp4", reader, model.task, result["frames"], masks))
        header, rows = _csv_rows(model.task, result["frames"])
        text = io.StringIO()
        csv.writer(text).writerows([header, *rows])
        written["csv"] = str(atomic_write_text(out / "predictions.csv", text.getvalue()))
        info = reader.info
        report = {"task": model.task, "checkpoint": str(checkpoint), "input": str(video),
                  "num_frames": info.num_frames, "fps": info.fps, "size": [info.height, info.width], **result,
                  "files": written}
        written["json"] = str(atomic_write_text(out / "predictions.json", json.dumps(json_safe(report)) + "\n"))
    return written
