"""k-nearest-neighbour evaluation of frozen features (cosine similarity, majority vote)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from endofm.errors import InputError


def knn_predict(train: np.ndarray, train_labels: np.ndarray, query: np.ndarray, k: int = 5) -> np.ndarray:
    """Label of each query row by a vote of its ``k`` most cosine-similar training rows.

    Ties go to the label whose members are most similar in total.

    Example:
        >>> knn_predict(np.eye(2), np.array([0, 1]), np.array([[0.9, 0.1]]), k=1)
        array([0])
    """
    if len(train) == 0 or len(train) != len(train_labels):
        raise InputError(f"need as many training labels as features, got {len(train_labels)} and {len(train)}")
    k = min(k, len(train))
    similarity = F.normalize(torch.as_tensor(query, dtype=torch.float32), dim=1) @ F.normalize(
        torch.as_tensor(train, dtype=torch.float32), dim=1
    ).T
    top_sim, top_idx = similarity.topk(k, dim=1)
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    num_classes = int(labels.max()) + 1
    votes = torch.zeros(len(query), num_classes).scatter_add_(1, labels[top_idx], torch.ones_like(top_sim))
    weights = torch.zeros(len(query), num_classes).scatter_add_(1, labels[top_idx], top_sim)
    return (votes + 1e-3 * weights.softmax(dim=1)).argmax(dim=1).numpy()


def knn_accuracy(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray, k: int = 5
) -> float:
    """Share of test rows whose k-NN label (see :func:`knn_predict`) is right."""
    predicted = knn_predict(train, train_labels, test, k)
    return float((predicted == np.asarray(test_labels)).mean())
