"""A fine-tuned detector at work: its metrics on a split (:func:`evaluate_detect_model`; the FCOS frame by
frame, the STFT through the original's test-time video path), its boxes on a video (:func:`predict_detect`)
and how they are drawn (:func:`draw_frame`) and listed (:func:`csv_rows`).

Metrics: the original's frame-level F1 at score >= 0.5 (``frame_f1_original``: no IoU check), box-level
precision/recall/F1 at IoU 0.5, and COCO mAP through pycocotools (:mod:`endofm.metrics.detection`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.models.detection import FCOS
from torchvision.transforms import v2
from tqdm import tqdm

from endofm.data.datasets.kumc import KUMCDataset
from endofm.data.transforms import VideoTransform
from endofm.data.video import VideoReader
from endofm.engine.distributed import gather_shards, shard
from endofm.engine.logging import bar_off
from endofm.errors import InputError
from endofm.metrics.detection import detection_metrics
from endofm.models.detection.stft import STFTDetector
from endofm.models.inputs import InputSpec
from endofm.report.labels import draw_label
from endofm.tasks.base import FinetunedModel, LoadedFinetuned, Prediction, preset_input
from endofm.tasks.detect.config import DetectDataConfig
from endofm.tasks.detect.data import collate_detection, detect_transforms, stack_clip
from endofm.tasks.detect.stft_inference import evaluate_loaded_stft, predict_stft


@torch.inference_mode()
def detect_frames(model: FCOS, images: list[torch.Tensor], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Detections (boxes xyxy, scores, 0-based labels) of a list of stacked clips, on the CPU."""
    outputs = model([image.to(device) for image in images])
    return [{"boxes": o["boxes"].cpu(), "scores": o["scores"].cpu(), "labels": o["labels"].cpu() - 1}
            for o in outputs]


def evaluate_detector(model: FCOS, dataset: KUMCDataset, batch_size: int = 2, device: str | torch.device = "cpu",
                      num_workers: int = 0, score_threshold: float = 0.5, progress: bool = False) -> dict[str, Any]:
    """Frame-level F1 (original), box P/R/F1 at IoU 0.5 and COCO mAP of a detector on a dataset (in a
    distributed run each process detects in its :func:`~endofm.engine.distributed.shard` of the frames)."""
    was_training = model.training
    model.eval()
    predictions, targets = [], []
    loader = DataLoader(Subset(dataset, shard(len(dataset))), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_detection)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=bar_off(progress), leave=False):
        predictions += detect_frames(model, batch["images"], torch.device(device))
        targets += batch["targets"]
    model.train(was_training)
    predictions, targets = gather_shards(predictions), gather_shards(targets)  # every process's frames
    num_classes = len(dataset.classes)
    return {**detection_metrics(predictions, targets, num_classes, score_threshold=score_threshold),
            "frames": len(targets)}


def assemble(found: FinetunedModel) -> tuple[nn.Module, InputSpec]:
    """A fine-tuned FCOS folder's network and the input it was trained with (:attr:`Task.assemble
    <endofm.tasks.base.Task.assemble>`)."""
    data = found.data
    spec = preset_input(data["normalization"], (int(data["short_side"]), int(data["max_size"])),
                        len(data["ref_offsets"]) + 1, resize="short_side")
    return found.head, spec


def evaluate_detect_model(loaded: LoadedFinetuned, root: str, split: str = "test", device: str = "cpu",
                          batch_size: int = 2, reference_seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Metrics of a detector (:func:`~endofm.tasks.loading.load_finetuned`) on one split of a KUMC-layout
    dataset: the STFT through the original's test-time video path (``reference_seed`` seeds its reference
    draws), the FCOS frame by frame with the preprocessing it was trained with."""
    if isinstance(loaded.model, STFTDetector):
        return evaluate_loaded_stft(loaded, root, split, device, reference_seed, progress)
    data = loaded.metadata["data"]
    config = DetectDataConfig(root=root, ref_offsets=tuple(data["ref_offsets"]), short_side=int(data["short_side"]),
                              max_size=int(data["max_size"]), normalization=data["normalization"])
    dataset = KUMCDataset(root, split, ref_offsets=config.ref_offsets, transform=detect_transforms(config)[1])
    return evaluate_detector(loaded.model.to(device), dataset, batch_size, device, progress=progress)


def _chunks(count: int, size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def predict_fcos(loaded: LoadedFinetuned, reader: VideoReader, device: torch.device, score_threshold: float = 0.5,
                 progress: bool = False) -> dict[str, Any]:
    """Boxes (input-video pixels) of an FCOS detector scoring at least ``score_threshold``, per frame (every
    frame with its reference frames)."""
    data = loaded.metadata["data"]
    max_size = data["max_size"] if data["max_size"] > data["short_side"] else None
    transform = VideoTransform(v2.Resize(int(data["short_side"]), max_size=max_size, antialias=True),
                               data["normalization"])
    detector = loaded.model.to(device).eval()
    offsets = [int(o) for o in data["ref_offsets"]]
    classes = data.get("classes") or [str(i) for i in range((loaded.metadata.get("head") or {}).get("num_classes", 1))]
    count = len(reader)
    frames = []
    for chunk in tqdm(_chunks(count, 8), desc="frames", unit="batch", disable=bar_off(progress)):
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


def predict_detect(loaded: LoadedFinetuned, reader: VideoReader, device: torch.device, progress: bool = False,
                   score_threshold: float = 0.5, reference_seed: int = 0) -> Prediction:
    """Boxes (input-video pixels) scoring at least ``score_threshold`` in every frame of a video: the STFT
    with its test-time queue of 19 frames and 10 references drawn with ``reference_seed``
    (:func:`~endofm.tasks.detect.stft_inference.predict_stft`), the FCOS with its reference frames."""
    if not 0.0 <= score_threshold <= 1.0:
        raise InputError(f"score_threshold (--score-threshold) is a box score in [0, 1], got {score_threshold}")
    if isinstance(loaded.model, STFTDetector):
        return Prediction(predict_stft(loaded, reader, device, score_threshold, reference_seed, progress))
    return Prediction(predict_fcos(loaded, reader, device, score_threshold, progress))


BOX_COLOUR = (255, 230, 0)
"""Predicted boxes and their tabs: yellow stands out on red and pink tissue."""


def draw_frame(image: Image.Image, frame: dict[str, Any], scale: tuple[float, float],
               arrays: dict[str, np.ndarray]) -> Image.Image:
    """Every box in yellow with its label and score in dark text on a yellow tab above it (inside it at the top
    of the frame)."""
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 180))
    for item in frame["boxes"]:
        x1, y1, x2, y2 = item["box"]
        box = [x1 * scale[1], y1 * scale[0], x2 * scale[1], y2 * scale[0]]
        draw.rectangle(box, outline=BOX_COLOUR, width=width)
        draw_label(image, (box[0], box[1]), f"{item['label']} {100 * item['score']:.1f}%", fill=(0, 0, 0),
                   background=BOX_COLOUR, anchor_bottom=True)
    return image


def csv_rows(frames: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per box."""
    return ["frame", "time", "label", "score", "x1", "y1", "x2", "y2"], [
        [f["frame"], f"{f['time']:.3f}", b["label"], f"{b['score']:.6f}", *[f"{v:.1f}" for v in b["box"]]]
        for f in frames for b in f["boxes"]]
