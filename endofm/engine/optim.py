"""Optimiser construction shared by pretraining and fine-tuning."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def decay_groups(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> list[dict]:
    """Two parameter groups of the trainable parameters: with weight decay, and without it (biases and other
    1-D parameters such as norms, as the original recipes do)."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if param.requires_grad:
            (no_decay if name.endswith(".bias") or param.ndim <= 1 else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict], **options: float) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with its fused kernel (CPU and GPU): one pass over every parameter.

    The default on CPU is a Python loop over the parameters, several passes each: a few percent of a small
    model's training step. The update is the same to float rounding.
    """
    return torch.optim.AdamW(groups, fused=True, **options)
