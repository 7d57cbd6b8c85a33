"""Optimiser construction shared by pretraining and fine-tuning: weight-decay groups, the fused AdamW, and the
fine-tuning optimiser config with its builder."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from endofm.errors import ConfigError


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


@dataclass
class OptimConfig:
    """Optimiser and per-step learning-rate schedule of a fine-tuning run."""

    name: str = "sgd"
    """``sgd`` (momentum) or ``adamw``."""
    lr: float = 1e-3
    scale_lr: bool = False
    """Scale ``lr`` by ``run.batch_size / 256`` (the original PolypDiag rule)."""
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    """``cosine`` (per step, to ``min_lr``), ``cosine_epoch`` (one value per epoch, to ``min_lr``: torch's
    ``CosineAnnealingLR`` stepped at epoch ends, as the original PolypDiag fine-tuning), ``poly`` (power 0.9,
    step by step as TransUNet sets it) or ``constant``."""
    warmup_epochs: int = 0
    min_lr: float = 0.0
    decay_all: bool = False
    """Weight decay on every parameter, biases and norms included (the original TransUNet's AdamW); by
    default biases and other 1-D parameters have none."""

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise ConfigError(f"optim.name must be sgd or adamw, got {self.name!r}")
        if self.schedule not in ("cosine", "cosine_epoch", "poly", "constant"):
            raise ConfigError(f"optim.schedule must be cosine, cosine_epoch, poly or constant, got {self.schedule!r}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.lr}")


def build_optimizer(
    named_parameters: Iterable[tuple[str, nn.Parameter]], optim: OptimConfig
) -> torch.optim.Optimizer:
    """The configured optimiser over the trainable parameters (no weight decay on biases and 1-D ones unless
    ``optim.decay_all``)."""
    if optim.decay_all:
        groups = [{"params": [param for _, param in named_parameters if param.requires_grad]}]
    else:
        groups = decay_groups(named_parameters)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return adamw(groups, lr=optim.lr, weight_decay=optim.weight_decay)
