"""What a model expects as input: :class:`InputSpec`, the record that travels with a model's weights.

A spec says how to turn uint8 RGB frames into the model's input tensor (size, frame count, channel order,
scaling, mean and std), so preprocessing goes with the weights instead of living in the caller's head.

Example:
    >>> spec = InputSpec(size=(224, 224), frames=8, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
    >>> spec.normalize(torch.full((8, 3, 224, 224), 255, dtype=torch.uint8)).shape
    torch.Size([3, 8, 224, 224])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from endofm.errors import InputError

CHANNEL_ORDERS = ("RGB", "BGR")
RESIZE_MODES = ("stretch", "short_side_center_crop", "short_side", "center_crop")
"""How frames reach ``InputSpec.size``: ``stretch`` to exactly that size (aspect ratio not kept),
``short_side_center_crop`` (short side to 8/7 of the size, then the centre crop), ``short_side`` (the
short side to ``size[0]``, the long side capped at ``size[1]``), ``center_crop`` (the short side to the size,
then the centre crop, as :func:`endofm.embed_video` does)."""


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: frames resized to ``size`` (``resize``), ``frames`` per clip (None: any count),
    channels in ``channel_order``, values in ``[0, 1]`` (each image min-max scaled first when ``minmax``)
    times ``value_scale``, then ``(x - mean) / std`` per channel (in ``channel_order``)."""

    size: tuple[int, int]
    frames: int | None
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    value_scale: float = 1.0
    minmax: bool = False
    resize: str = "stretch"

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise InputError(f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        if self.resize not in RESIZE_MODES:
            raise InputError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames ``[T, 3, H, W]`` (already at ``size``) -> the model's input ``[3, T, H, W]``."""
        if video.ndim != 4 or video.shape[1] != 3:
            raise InputError(f"expected RGB frames [T, 3, H, W], got shape {tuple(video.shape)}")
        x = video.float()
        if self.channel_order == "BGR":
            x = x.flip(1)
        if self.minmax:
            low = x.amin(dim=(1, 2, 3), keepdim=True)
            high = x.amax(dim=(1, 2, 3), keepdim=True)
            x = (x - low) / (high - low).clamp_min(1e-12)
        else:
            x = x / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x * self.value_scale - mean) / std).transpose(0, 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"size": list(self.size), "frames": self.frames, "channel_order": self.channel_order,
                "mean": list(self.mean), "std": list(self.std), "value_scale": self.value_scale,
                "minmax": self.minmax, "resize": self.resize}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> InputSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(size=tuple(values["size"]), frames=values.get("frames"),  # type: ignore[arg-type]
                   channel_order=values.get("channel_order", "RGB"), mean=tuple(values.get("mean", (0, 0, 0))),
                   std=tuple(values.get("std", (1, 1, 1))), value_scale=float(values.get("value_scale", 1.0)),
                   minmax=bool(values.get("minmax", False)), resize=values.get("resize", "stretch"))
