"""Figures of fine-tuned models for the demo's report: a classifier's confusion matrix, ROC and
precision-recall curves, and a segmenter's masks beside the ground truth on a sequence. Each figure has a
title and labelled axes, so that it says what it shows on its own."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from endofm.io import atomic_write
from endofm.metrics.classification import auroc

TILE_INCHES = 2.2
"""Width of one frame in the segmentation figure."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    _pyplot().close(fig)
    return written


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every score threshold (from the highest score down)."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] == 1
    tp, fp = np.concatenate([[0], np.cumsum(hits)]), np.concatenate([[0], np.cumsum(~hits)])
    return fp / max(int(fp[-1]), 1), tp / max(int(tp[-1]), 1)


def precision_recall_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at every score threshold (from the highest score down)."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] == 1
    tp = np.cumsum(hits)
    predicted = np.arange(1, len(hits) + 1)
    return tp / max(int(hits.sum()), 1), tp / predicted


def classification_figure(labels: Sequence[int], probabilities: np.ndarray, classes: Sequence[str],
                          path: str | os.PathLike, title: str = "") -> Path:
    """A confusion matrix (counts, rows the true class), and for two classes the ROC and precision-recall
    curves of the positive (second) class's probability, side by side in one PNG."""
    plt = _pyplot()
    labels, probabilities = np.asarray(labels, dtype=int), np.asarray(probabilities, dtype=float)
    count = len(classes)
    predicted = probabilities.argmax(axis=1)
    matrix = np.zeros((count, count), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    binary = count == 2
    fig, axes = plt.subplots(1, 3 if binary else 1, figsize=(13 if binary else 4.5, 4.2), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(matrix, cmap="Blues", vmin=0)
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, str(value), ha="center", va="center", fontsize=14,
                color="white" if value > matrix.max() / 2 else "black")
    ax.set_xticks(range(count), classes)
    ax.set_yticks(range(count), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix ({len(labels)} test videos)")
    if binary:
        scores = probabilities[:, 1]
        fpr, tpr = roc_points(labels, scores)
        ax = axes[0, 1]
        ax.plot(fpr, tpr, linewidth=1.8, drawstyle="steps-post")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate (recall)")
        ax.set_title(f"ROC of P({classes[1]}): AUROC {auroc(labels, scores):.3f}")
        ax.legend(loc="lower right")
        recall, precision = precision_recall_points(labels, scores)
        ax = axes[0, 2]
        ax.plot(recall, precision, linewidth=1.8)
        ax.axhline(labels.mean(), linestyle="--", color="grey", linewidth=1, label="chance (positive share)")
        ax.set_xlabel(f"recall of {classes[1]}")
        ax.set_ylabel("precision")
        ax.set_title(f"precision-recall of P({classes[1]})")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower left")
        for ax in axes[0, 1:]:
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _tint(frames: np.ndarray, masks: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    on = masks[..., None] > 0
    return np.where(on, (0.45 * frames + 0.55 * np.array(colour)).astype(np.uint8), frames)


def segmentation_figure(frames: np.ndarray, predicted: np.ndarray, truth: np.ndarray, indices: Sequence[int],
                        path: str | os.PathLike, title: str = "") -> Path:
    """Frames ``uint8 [N, H, W, 3]`` of a sequence in columns; rows: the frame, the predicted mask (green) and
    the ground truth (blue), each ``[N, H, W]`` at the frames' size; each column is titled with its frame and
    Dice."""
    plt = _pyplot()
    count = len(frames)
    fig, axes = plt.subplots(3, count, figsize=(TILE_INCHES * count + 0.8, TILE_INCHES * 3 + 0.6), squeeze=False)
    rows = (("frame", frames), ("prediction", _tint(frames, predicted, (0, 255, 0))),
            ("ground truth", _tint(frames, truth, (40, 110, 255))))
    for row, (name, images) in enumerate(rows):
        for col in range(count):
            ax = axes[row, col]
            ax.imshow(images[col])
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=12)
    for col, index in enumerate(indices):
        p, t = predicted[col] > 0, truth[col] > 0
        total = p.sum() + t.sum()
        dice = 2 * (p & t).sum() / total if total else 1.0
        axes[0, col].set_title(f"frame {index + 1}: Dice {dice:.2f}", fontsize=11)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
