"""Frozen-feature evaluation of a backbone: k-NN and a linear probe on a labelled video set.

The labelled set is in the PolypDiag layout (``videos/`` + ``splits/<split>.txt``); features of the
``train`` split are the memory (or the probe's training set), another split (``test`` by default) is
evaluated. Nothing is tuned on the evaluated split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from endofm.data.datasets.polypdiag import PolypDiagDataset
from endofm.data.transforms import eval_transform
from endofm.errors import InputError
from endofm.metrics.knn import knn_accuracy
from endofm.models.backbone import EndoFMBackbone


@dataclass
class SplitFeatures:
    """CLS embeddings ``[N, D]`` and labels ``[N]`` of one split."""

    features: np.ndarray
    labels: np.ndarray


@torch.inference_mode()
def extract_features(
    backbone: EndoFMBackbone,
    root: str | os.PathLike,
    split: str,
    num_frames: int = 8,
    size: int = 224,
    normalization: str = "imagenet",
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    pool: str = "cls",
) -> SplitFeatures:
    """Embed every video of ``splits/<split>.txt`` (``num_frames`` evenly spaced, centre crop ``size``) as the
    ``pool`` clip embedding (see :meth:`~endofm.models.backbone.EndoFMBackbone.forward_pooled`)."""
    dataset = PolypDiagDataset(root, split, num_frames=num_frames,
                               transform=eval_transform(size, normalization=normalization))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    backbone = backbone.to(device).eval()
    features, labels = [], []
    for batch in tqdm(loader, desc=f"features of {split}", unit="batch", disable=not progress):
        features.append(backbone.forward_pooled(batch["video"].to(device), pool).float().cpu())
        labels.append(batch["label"])
    return SplitFeatures(torch.cat(features).numpy(), torch.cat(labels).numpy())


def linear_probe_accuracy(
    train: SplitFeatures, test: SplitFeatures, epochs: int = 300, lr: float = 0.05, weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Accuracy on ``test`` of a logistic-regression layer fit on standardised ``train`` features."""
    if len(train.features) == 0:
        raise InputError("the linear probe needs training features")
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(train.features, dtype=torch.float32)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.as_tensor(train.labels, dtype=torch.long)
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    layer = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.normal_(layer.weight, std=0.01, generator=generator)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(layer(x), y).backward()
        optimizer.step()
    x_test = (torch.as_tensor(test.features, dtype=torch.float32) - mean) / std
    with torch.no_grad():
        predicted = layer(x_test).argmax(1).numpy()
    return float((predicted == test.labels).mean())


def evaluate_frozen(
    backbone: EndoFMBackbone,
    root: str | os.PathLike,
    train_split: str = "train",
    test_split: str = "test",
    k: int = 5,
    **feature_kwargs: object,
) -> dict[str, float]:
    """k-NN and linear-probe accuracy of ``backbone``'s frozen features on ``test_split``."""
    train = extract_features(backbone, root, train_split, **feature_kwargs)
    test = extract_features(backbone, root, test_split, **feature_kwargs)
    return {
        "knn_accuracy": knn_accuracy(train.features, train.labels, test.features, test.labels, k),
        "linear_probe_accuracy": linear_probe_accuracy(train, test),
        "train_videos": len(train.labels),
        "test_videos": len(test.labels),
    }
