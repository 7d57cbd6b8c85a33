"""Every schedule of the package: per-iteration learning rates of pretraining and fine-tuning (the STFT
detector's included) and the pretraining teacher's per-epoch temperature."""

from __future__ import annotations

import numpy as np

from endofm.engine.optim import OptimConfig


def cosine_schedule(
    base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """One value per iteration: linear warm-up from ``warmup_start`` to ``base``, then cosine towards ``final``
    (the original's form: the last value stops one step short of ``final``).

    Example:
        >>> cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=2).round(3).tolist()
        [1.0, 0.854, 0.5, 0.146]
    """
    total = epochs * steps_per_epoch
    warmup = min(warmup_epochs * steps_per_epoch, total)
    ramp = np.linspace(warmup_start, base, warmup) if warmup else np.array([])
    steps = np.arange(total - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate([ramp, cosine])


def lr_schedule(optim: OptimConfig, batch_size: int, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """One learning rate per step of a fine-tuning run (``optim.schedule``)."""
    peak = optim.lr * batch_size / 256.0 if optim.scale_lr else optim.lr
    total = max(epochs * steps_per_epoch, 1)
    if optim.schedule == "cosine":
        return cosine_schedule(peak, optim.min_lr, epochs, steps_per_epoch, optim.warmup_epochs)
    if optim.schedule == "cosine_epoch":
        per_epoch = optim.min_lr + (peak - optim.min_lr) * (1 + np.cos(np.pi * np.arange(epochs) / epochs)) / 2
        return np.repeat(per_epoch, max(steps_per_epoch, 1))
    warmup = min(optim.warmup_epochs * steps_per_epoch, total)
    steps = np.arange(total)
    poly = peak * (1 - np.maximum(steps - 1, 0) / total) ** 0.9  # set after each step as TransUNet: 0, 1 at peak
    values = poly if optim.schedule == "poly" else np.full(total, peak)
    ramp = np.minimum(1.0, (steps + 1) / warmup) if warmup else 1.0
    return values * ramp


def warmup_multistep(step: int, warmup_iters: int = 8000, warmup_factor: float = 1 / 3,
                     milestones: tuple[int, ...] = (64000, 80000, 88000), gamma: float = 0.5,
                     method: str = "linear") -> float:
    """The original STFT's ``WarmupMultiStepLR`` factor at ``step`` (0-based): warm-up from ``warmup_factor``
    (``linear`` to 1, or ``constant``), times ``gamma`` at each milestone passed.

    Example:
        >>> [warmup_multistep(s, warmup_iters=2, warmup_factor=0.5, milestones=(3,)) for s in range(4)]
        [0.5, 0.75, 1.0, 0.5]
    """
    factor = 1.0
    if step < warmup_iters:
        alpha = step / warmup_iters
        factor = warmup_factor if method == "constant" else warmup_factor * (1 - alpha) + alpha
    return factor * gamma ** sum(step >= m for m in milestones)


def teacher_temperature_schedule(start: float, end: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """One teacher temperature per epoch of pretraining: linear from ``start`` to ``end`` over ``warmup_epochs``.

    Example:
        >>> teacher_temperature_schedule(0.04, 0.07, warmup_epochs=2, epochs=3).round(3).tolist()
        [0.04, 0.07, 0.07]
    """
    warmup = min(warmup_epochs, epochs)
    return np.concatenate([np.linspace(start, end, warmup), np.full(epochs - warmup, end)])
