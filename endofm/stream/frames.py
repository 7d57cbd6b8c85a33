"""Frames in and out of a model without PyTorch: :func:`prepare` turns a uint8 RGB frame into the model's input
as its :class:`~endofm.models.inputs.InputSpec` (given as its dict) says, and :func:`draw` draws a
prediction on a frame for the annotated video.

Resizing is PIL's bilinear (antialiased when shrinking); the offline ``predict`` path resizes with
torchvision, so inputs can differ by a grey level here and there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from endofm.errors import InputError


def _resize(image: Image.Image, height: int, width: int) -> Image.Image:
    return image if image.size == (width, height) else image.resize((width, height), Image.BILINEAR)


def _short_side(image: Image.Image, side: int, cap: int | None = None) -> Image.Image:
    width, height = image.size
    scale = side / min(width, height)
    if cap is not None:
        scale = min(scale, cap / max(width, height))
    return _resize(image, max(1, round(height * scale)), max(1, round(width * scale)))


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def resize(frame: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> uint8 RGB at the spec's size, by its ``resize`` mode."""
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise InputError(f"expected a uint8 RGB frame [H, W, 3], got {frame.dtype} {frame.shape}")
    height, width = (int(v) for v in spec["size"])
    image, mode = Image.fromarray(frame), spec.get("resize", "stretch")
    if mode == "stretch":
        image = _resize(image, height, width)
    elif mode == "short_side_center_crop":
        image = _center_crop(_short_side(image, round(height * 8 / 7)), height, width)
    elif mode == "center_crop":
        image = _center_crop(_short_side(image, height), height, width)
    elif mode == "short_side":
        image = _short_side(image, height, width)
    else:
        raise InputError(f"unknown resize mode {mode!r}")
    return np.asarray(image)


def prepare(frame: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> float32 ``[3, h, w]``, the model's input for that frame (resized, channel
    order, ``[0, 1]`` or min-max scaled, times ``value_scale``, minus mean over std)."""
    x = resize(frame, spec).astype(np.float32).transpose(2, 0, 1)
    if spec.get("channel_order", "RGB") == "BGR":
        x = x[::-1]
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12) if spec.get("minmax") else x / np.float32(255.0)
    mean = np.asarray(spec.get("mean", (0, 0, 0)), dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.get("std", (1, 1, 1)), dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((x * np.float32(spec.get("value_scale", 1.0)) - mean) / std, dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def draw(image: Image.Image, task: str, prediction: Mapping[str, Any], mask: np.ndarray | None = None,
         scale: tuple[float, float] = (1.0, 1.0)) -> Image.Image:
    """One frame's prediction drawn on it: the label and polyp probability (classify), the mask in green
    (segment), the boxes (detect); ``scale`` is display over source pixels (y, x)."""
    if task == "segment" and mask is not None:
        overlay = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(image.size, Image.NEAREST)) > 0
        pixels = np.asarray(image).copy()
        pixels[overlay] = (0.5 * pixels[overlay] + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
        image = Image.fromarray(pixels)
    canvas = ImageDraw.Draw(image)
    if task == "classify":
        p = prediction["polyp_probability"]
        canvas.rectangle([0, 0, image.width, 22], fill=(0, 0, 0))
        canvas.rectangle([0, 18, int(image.width * p), 22], fill=(255, 60, 60) if p >= 0.5 else (60, 200, 60))
        canvas.text((4, 3), f"{prediction['label']}  p(polyp)={p:.2f}", fill=(255, 255, 255))
    elif task == "segment":
        canvas.text((4, 3), f"polyp {100 * prediction['polyp_fraction']:.1f}%", fill=(255, 255, 255))
    elif task == "detect":
        for item in prediction["boxes"]:
            x1, y1, x2, y2 = item["box"]
            box = [x1 * scale[1], y1 * scale[0], x2 * scale[1], y2 * scale[0]]
            canvas.rectangle(box, outline=(255, 255, 0), width=2)
            canvas.text((box[0] + 2, max(box[1] - 12, 0)), f"{item['label']} {item['score']:.2f}",
                        fill=(255, 255, 0))
    return image
