"""Evaluation and prediction of a classifier: metrics on a dataset, per-frame and whole-video polyp
probabilities of a video, and how they are drawn and tabulated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader, Subset, default_collate
from tqdm import tqdm

from endofm.data.datasets.polypdiag import evenly_spaced
from endofm.data.transforms import eval_transform
from endofm.data.video import VideoReader
from endofm.engine.distributed import gather_shards, shard
from endofm.engine.logging import bar_off
from endofm.metrics.classification import classification_metrics
from endofm.report.labels import draw_label, font_size
from endofm.tasks.base import LoadedFinetuned, Prediction
from endofm.tasks.classify.data import polypdiag_dataset


@torch.inference_mode()
def predict_probabilities(network: nn.Module, dataset: Any, batch_size: int, device: torch.device,
                          num_workers: int = 0, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, C]`` and labels ``[N]`` of every sample of a dataset (in a distributed run,
    each process predicts its :func:`~endofm.engine.distributed.shard` and every process gets them all)."""
    was_training = network.training
    network.eval()
    probs, labels = [], []
    loader = DataLoader(Subset(dataset, shard(len(dataset))), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=default_collate)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=bar_off(progress), leave=False):
        probs += F.softmax(network(batch["video"].to(device)).float(), dim=1).cpu().unbind(0)
        labels += torch.as_tensor(batch["label"]).unbind(0)
    network.train(was_training)
    return torch.stack(gather_shards(probs)).numpy(), torch.stack(gather_shards(labels)).numpy()


def evaluate_classifier(network: nn.Module, dataset: Any, batch_size: int = 4, device: str | torch.device = "cpu",
                        num_workers: int = 0, progress: bool = False) -> dict[str, Any]:
    """Binary F1, macro F1, accuracy and AUROC (and the sample count) of a classifier on a dataset."""
    probs, labels = predict_probabilities(network, dataset, batch_size, torch.device(device), num_workers, progress)
    return {**classification_metrics(labels, probs), "samples": int(len(labels))}


def evaluate_classify_model(loaded: LoadedFinetuned, root: str, split: str = "test", device: str = "cpu",
                            batch_size: int = 2, progress: bool = False) -> dict[str, Any]:
    """Metrics of a classifier (:func:`~endofm.tasks.loading.load_finetuned`) on one split of a
    PolypDiag-layout dataset, with the preprocessing it was trained with."""
    dataset = polypdiag_dataset(root, split, loaded.metadata["data"])
    return evaluate_classifier(loaded.model.to(device), dataset, batch_size, device, progress=progress)


def predict_classify(loaded: LoadedFinetuned, reader: VideoReader, device: torch.device,
                     progress: bool = False) -> Prediction:
    """Per-frame and whole-video polyp probabilities: each frame gets the mean polyp probability of the
    sliding windows covering it (``num_frames`` frames spread over ``4 * num_frames`` consecutive frames,
    half-overlapping), and the video gets one prediction from ``num_frames`` frames spread over all of it (as
    in training)."""
    data = loaded.metadata["data"]
    num_frames, transform = int(data["num_frames"]), eval_transform(int(data["size"]),
                                                                     normalization=data["normalization"])
    network = loaded.model.to(device).eval()
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
    for start in tqdm(starts, desc="windows", unit="window", disable=bar_off(progress)):
        indices = [start + i for i in evenly_spaced(span, num_frames)]
        total[start : start + span] += probability(indices)[1]
        covered[start : start + span] += 1
    per_frame = total / np.maximum(covered, 1)
    video_probs = probability(evenly_spaced(count, num_frames))
    classes = data.get("classes") or [str(i) for i in range(len(video_probs))]
    return Prediction({
        "video": {"label": classes[int(video_probs.argmax())], "probabilities": dict(zip(classes, video_probs.tolist(),
                                                                                       strict=True))},
        "frames": [{"frame": i, "time": i / reader.info.fps, "polyp_probability": float(p),
                    "label": classes[int(p >= 0.5)]} for i, p in enumerate(per_frame)],
    })


def draw_frame(image: Image.Image, frame: dict[str, Any], scale: tuple[float, float],
               arrays: dict[str, np.ndarray]) -> Image.Image:
    """The label and the polyp probability on a dark band along the top, a bar of the probability under it."""
    p = frame["polyp_probability"]
    size = font_size(image)
    _, _, _, bottom = draw_label(image, (0, 0), f"{frame['label']}   P(polyp) {100 * p:.1f}%", size=size)
    draw = ImageDraw.Draw(image)
    bar = max(3, size // 4)
    draw.rectangle([0, bottom, image.width, bottom + bar], fill=(16, 16, 16))
    draw.rectangle([0, bottom, round(image.width * p), bottom + bar],
                   fill=(255, 90, 90) if p >= 0.5 else (90, 220, 90))
    return image


def csv_rows(frames: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per frame."""
    return ["frame", "time", "polyp_probability", "label"], [
        [f["frame"], f"{f['time']:.3f}", f"{f['polyp_probability']:.6f}", f["label"]] for f in frames]


def caveat(test: Mapping[str, Any]) -> str | None:
    """A sentence when the test metrics show the classifier did not learn."""
    if (test.get("accuracy") or 0.0) <= 0.5:
        return "The classifier is no better than chance on the test split."
    return None
