"""A segmentation model in use: metrics on a dataset (Dice and HD95 per sequence, averaged,
:mod:`endofm.metrics.segmentation`, at the network's resolution), masks of a video, and their drawing and CSV
rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset, default_collate
from tqdm import tqdm

from endofm.data.datasets.cvc import CVCDataset, clip_windows
from endofm.data.video import VideoReader
from endofm.engine.distributed import all_gather_objects, shard, world_size
from endofm.engine.logging import bar_off
from endofm.metrics.segmentation import segmentation_metrics
from endofm.report.labels import draw_label
from endofm.tasks.base import LoadedFinetuned, Prediction
from endofm.tasks.segment.data import input_transform


@torch.inference_mode()
def evaluate_segmenter(network: nn.Module, dataset: CVCDataset, batch_size: int = 2,
                       device: str | torch.device = "cpu", num_workers: int = 0,
                       empty_rule: str = "standard", progress: bool = False) -> dict[str, Any]:
    """Per-sequence Dice (empty masks by ``empty_rule``) and HD95, averaged, of a segmentation network on a
    dataset (frames of overlapping windows are counted once; whole sequences go one at a time; in a
    distributed run each process segments its :func:`~endofm.engine.distributed.shard` of the clips)."""
    if any(len(frames) != len(dataset.samples[0][1]) for _, frames in dataset.samples):
        batch_size = 1
    was_training = network.training
    network.eval()
    pred_frames: dict[str, dict[int, np.ndarray]] = {}
    true_frames: dict[str, dict[int, np.ndarray]] = {}
    loader = DataLoader(Subset(dataset, shard(len(dataset))), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=default_collate)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=bar_off(progress), leave=False):
        logits = network(batch["video"].to(device))
        pred = logits.argmax(1).cpu().numpy().astype(bool)
        mask = batch["mask"][..., : pred.shape[-2], : pred.shape[-1]].numpy().astype(bool)
        for b, name in enumerate(batch["meta"]["sequence"]):
            for t, frame in enumerate(batch["meta"]["frame_indices"][b].tolist()):
                pred_frames.setdefault(name, {})[frame] = pred[b, t]
                true_frames.setdefault(name, {})[frame] = mask[b, t]
    network.train(was_training)
    if world_size() > 1:  # every process's clips
        for part in all_gather_objects((pred_frames, true_frames)):
            for mine, theirs in zip((pred_frames, true_frames), part, strict=True):
                for name, frames in theirs.items():
                    mine.setdefault(name, {}).update(frames)
    sequences = {name: (np.stack([frames[i] for i in sorted(frames)]),
                        np.stack([true_frames[name][i] for i in sorted(frames)]))
                 for name, frames in pred_frames.items()}
    result = segmentation_metrics(sequences, empty_rule)
    result["frames"] = int(sum(len(f) for f in pred_frames.values()))
    return result


PREDICT_WINDOW = 25
"""Frames per clip when a model takes whole sequences (the original's longest CVC sequence): a long video is
cut into windows of this many frames."""


def evaluate_segment_model(loaded: LoadedFinetuned, root: str, split: str = "test", device: str = "cpu",
                           batch_size: int = 1, empty_rule: str | None = None,
                           progress: bool = False) -> dict[str, Any]:
    """Metrics of a segmentation model (:func:`~endofm.tasks.loading.load_finetuned`) on one split of a
    CVC-ClinicDB-layout dataset, with the model's own input; Dice of empty masks by ``empty_rule`` (default:
    the rule the model was trained with, else ``standard``; the metrics name the rule applied), masks read with
    the grey-level threshold it was trained with (else 128)."""
    data = loaded.metadata.get("data") or {}
    rule = empty_rule or data.get("empty_rule", "standard")
    spec = loaded.input_spec
    dataset = CVCDataset(root, split, clip_length=spec.frames, transform=input_transform(spec),
                         mask_threshold=data.get("mask_threshold", 128))
    return {**evaluate_segmenter(loaded.model.to(device), dataset, batch_size, device, empty_rule=rule,
                                 progress=progress), "empty_rule": rule}


def predict_segment(loaded: LoadedFinetuned, reader: VideoReader, device: torch.device,
                    progress: bool = False) -> Prediction:
    """Per-frame masks of a video (at the model's input size, the array ``masks``) and each frame's polyp
    fraction and box, by clips of the model's frame count (whole-sequence models, as the original's TransUNet:
    windows of :data:`PREDICT_WINDOW` frames)."""
    transform = input_transform(loaded.input_spec)
    network = loaded.model.to(device).eval()
    count = len(reader)
    masks = np.zeros((count, *loaded.input_spec.size), dtype=np.uint8)
    length = loaded.input_spec.frames or min(PREDICT_WINDOW, count)
    windows = clip_windows(list(range(count)), length)
    for window in tqdm(windows, desc="windows", unit="window", disable=bar_off(progress)):
        video = transform(reader.read(window))["video"].unsqueeze(0).to(device)
        with torch.inference_mode():
            masks[window] = network(video).argmax(1)[0].cpu().numpy().astype(np.uint8)
    sy, sx = reader.info.height / masks.shape[1], reader.info.width / masks.shape[2]
    frames = []
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = [cols[0] * sx, rows[0] * sy, (cols[-1] + 1) * sx, (rows[-1] + 1) * sy] if rows.size else None
        frames.append({"frame": i, "time": i / reader.info.fps, "polyp_fraction": float(mask.mean()), "box": box})
    return Prediction({"mask_size": list(masks.shape[1:]), "frames": frames}, {"masks": masks})


def draw_frame(image: Image.Image, frame: dict[str, Any], scale: tuple[float, float],
               arrays: dict[str, np.ndarray]) -> Image.Image:
    """The predicted mask blended in green, and the share of the frame it covers on a dark box."""
    mask = arrays.get("masks")
    if mask is None:
        return image
    overlay = np.asarray(Image.fromarray(mask * 255).resize(image.size, Image.NEAREST)) > 0
    pixels = np.asarray(image).copy()
    pixels[overlay] = (0.5 * pixels[overlay] + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw_label(image, (0, 0), f"polyp area {100 * frame['polyp_fraction']:.1f}%")
    return image


def csv_rows(frames: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per frame: the polyp fraction and the box around the mask (empty without one)."""
    return ["frame", "time", "polyp_fraction", "x1", "y1", "x2", "y2"], [
        [f["frame"], f"{f['time']:.3f}", f"{f['polyp_fraction']:.6f}",
         *([f"{v:.1f}" for v in f["box"]] if f["box"] else ["", "", "", ""])] for f in frames]
