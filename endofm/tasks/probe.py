"""Frozen-feature evaluation of a backbone: k-NN and a linear probe on a labelled video set.

The labelled set is in the PolypDiag layout (``videos/`` + ``splits/<split>.txt``); features of the
``train`` split are the memory (or the probe's training set), another split (``test`` by default) is
evaluated. Nothing is tuned on the evaluated split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from endofm.data.datasets.polypdiag import PolypDiagDataset
from endofm.data.transforms import eval_transform
from endofm.engine.logging import bar_off
from endofm.errors import InputError
from endofm.metrics.knn import knn_accuracy
from endofm.models.backbone import EndoFMBackbone


@dataclass
class SplitFeatures:
    """CLS embeddings ``[N, D]`` and labels ``[N]`` of one split."""

    features: np.ndarray
    labels: np.ndarray


def extract_features(
    backbone: EndoFMBackbone, root: str | os.PathLike, split: str, *, pool: str = "cls", **options: Any
) -> SplitFeatures:
    """Embed every video of ``splits/<split>.txt`` as the ``pool`` clip embedding (see
    :meth:`~endofm.models.backbone.EndoFMBackbone.forward_pooled`); ``options`` as :func:`extract_pooled_features`."""
    return extract_pooled_features(backbone, root, split, (pool,), **options)[pool]


@torch.inference_mode()
def extract_pooled_features(
    backbone: EndoFMBackbone,
    root: str | os.PathLike,
    split: str,
    pools: Sequence[str] = ("cls",),
    num_frames: int = 8,
    size: int = 224,
    normalization: str = "imagenet",
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, SplitFeatures]:
    """Embed every video of ``splits/<split>.txt`` (``num_frames`` evenly spaced, centre crop ``size``) as each of
    the ``pools`` clip embeddings, all from one forward pass per batch."""
    dataset = PolypDiagDataset(root, split, num_frames=num_frames,
                               transform=eval_transform(size, normalization=normalization))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    backbone = backbone.to(device).eval()
    features: dict[str, list[torch.Tensor]] = {pool: [] for pool in pools}
    labels = []
    for batch in tqdm(loader, desc=f"features of {split}", unit="batch", disable=bar_off(progress)):
        for pool, embedding in backbone.forward_pools(batch["video"].to(device), pools).items():
            features[pool].append(embedding.float().cpu())
        labels.append(batch["label"])
    label_array = torch.cat(labels).numpy()
    return {pool: SplitFeatures(torch.cat(chunks).numpy(), label_array) for pool, chunks in features.items()}


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
    pool: str = "cls",
    **feature_options: Any,
) -> dict[str, float]:
    """k-NN and linear-probe accuracy of ``backbone``'s frozen ``pool`` embeddings on ``test_split``;
    ``feature_options`` as :func:`extract_pooled_features`."""
    return evaluate_frozen_pools(backbone, root, (pool,), train_split, test_split, k, **feature_options)[pool]


def evaluate_frozen_pools(
    backbone: EndoFMBackbone,
    root: str | os.PathLike,
    pools: Sequence[str],
    train_split: str = "train",
    test_split: str = "test",
    k: int = 5,
    **feature_options: Any,
) -> dict[str, dict[str, float]]:
    """:func:`evaluate_frozen` of several embeddings by pool name, each video embedded once."""
    train = extract_pooled_features(backbone, root, train_split, pools, **feature_options)
    test = extract_pooled_features(backbone, root, test_split, pools, **feature_options)
    return {
        pool: {
            "knn_accuracy": knn_accuracy(train[pool].features, train[pool].labels, test[pool].features,
                                         test[pool].labels, k),
            "linear_probe_accuracy": linear_probe_accuracy(train[pool], test[pool]),
            "train_videos": len(train[pool].labels),
            "test_videos": len(test[pool].labels),
        }
        for pool in pools
    }
