"""The segmentation loss: 0.5 cross-entropy + 0.5 soft Dice (classes averaged; squared denominators as the
original's, or plain sums), over the global batch in a distributed run."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from endofm.engine.distributed import global_sum, shared_loss


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5, squared: bool = True) -> torch.Tensor:
    """1 - soft Dice per class (softmax probabilities vs one-hot over the whole batch), averaged over classes;
    ``squared``: the denominator sums squares (the original TransUNet's ``DiceLoss``), else plain sums.

    In a distributed run the sums run over the global batch (every process's pixels), so the loss and its
    gradient are those of one process with the whole batch."""
    probs = logits.softmax(dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = tuple(d for d in range(probs.ndim) if d != 1)
    intersect = global_sum((probs * one_hot).sum(dims))
    total = (probs * probs).sum(dims) + one_hot.sum(dims) if squared else probs.sum(dims) + one_hot.sum(dims)
    return shared_loss((1 - (2 * intersect + smooth) / (global_sum(total) + smooth)).mean())


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, squared: bool = True) -> torch.Tensor:
    """0.5 cross-entropy + 0.5 Dice; logits ``[B, K, T, H, W]``, target ``[B, T, H, W]`` (cropped to fit)."""
    target = target[..., : logits.shape[-2], : logits.shape[-1]]
    logits = logits.float()
    return 0.5 * F.cross_entropy(logits, target) + 0.5 * dice_loss(logits, target, squared=squared)
