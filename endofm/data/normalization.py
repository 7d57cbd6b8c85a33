"""The normalisation presets (mean and std by name) that models, datasets and transforms name, and
:func:`normalize`, which applies one to a video."""

from __future__ import annotations

import torch

from endofm.errors import InputError

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "polypdiag": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
"""Mean and standard deviation (RGB, of pixels in [0, 1]) of each preset."""


def normalize(video: torch.Tensor, preset: str = "imagenet") -> torch.Tensor:
    """``uint8`` (or float in [0, 1]) ``[T, 3, H, W]`` to floats normalised with a preset's mean/std."""
    if preset not in NORMALIZATION:
        raise InputError(f"unknown normalisation preset {preset!r}; choose from {sorted(NORMALIZATION)}")
    if video.ndim != 4 or video.shape[1] != 3:
        raise InputError(f"expected a [T, 3, H, W] video, got shape {tuple(video.shape)}")
    mean, std = NORMALIZATION[preset]
    x = video.float() / 255.0 if video.dtype == torch.uint8 else video.float()
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
