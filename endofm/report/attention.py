"""CLS-to-patch spatial attention of the backbone's last block, overlaid on the frames of a clip."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from endofm.data.encoding import write_video
from endofm.data.normalization import normalize
from endofm.data.video import VideoReader
from endofm.io import atomic_write
from endofm.models.backbone import EndoFMBackbone
from endofm.report.labels import draw_label
from endofm.tasks.embed import center_crop, sample_indices

GRID_TILE = 224
"""The least side of a frame in the attention grid (a 64-pixel frame is enlarged 4 times)."""


@dataclass
class AttentionMaps:
    """Frames ``uint8 [T, S, S, 3]``, their attention maps ``float [T, S, S]`` in [0, 1] and frame indices."""

    frames: np.ndarray
    maps: np.ndarray
    indices: list[int]


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with matplotlib's ``inferno`` colour map."""
    from matplotlib import colormaps

    return (colormaps["inferno"](np.clip(values, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def overlay(frames: np.ndarray, maps: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend attention heat maps over frames (both ``[T, H, W, ...]``)."""
    blended = (1 - alpha) * frames.astype(np.float32) + alpha * heat_colours(maps).astype(np.float32)
    return blended.round().astype(np.uint8)


@torch.inference_mode()
def attention_maps(
    path: str | os.PathLike,
    model: EndoFMBackbone,
    num_frames: int | None = None,
    size: int | None = None,
    normalization: str = "imagenet",
    device: str | torch.device = "cpu",
) -> AttentionMaps:
    """Per-frame attention of the CLS query over the patches in the last block (mean over heads).

    Each map is upsampled (bilinear) to the crop size and scaled to [0, 1] per frame.
    """
    num_frames = num_frames or model.config.num_frames
    size = size or model.config.img_size[0]
    with VideoReader(path, size=size) as reader:
        indices = sample_indices(0, len(reader), num_frames)
        frames = center_crop(reader.read(indices), size)
    clip = normalize(frames, normalization).transpose(0, 1)[None].to(device)
    model = model.to(device).eval()
    attn = model.last_attention(clip)[0]  # [T, heads, 1 + h*w, 1 + h*w]
    grid_h, grid_w = size // model.patch_size, size // model.patch_size
    cls_to_patch = attn[:, :, 0, 1:].mean(dim=1).reshape(num_frames, 1, grid_h, grid_w).float().cpu()
    maps = F.interpolate(cls_to_patch, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    maps = (maps - low) / (high - low).clamp_min(1e-12)
    return AttentionMaps(frames.permute(0, 2, 3, 1).numpy(), maps.numpy(), indices)


def attention_grid(frames: np.ndarray, blended: np.ndarray, indices: list[int]) -> np.ndarray:
    """One column per frame, the frame above its attention overlay, each tile enlarged to at least
    :data:`GRID_TILE` pixels and labelled (frame number, "attention")."""
    from PIL import Image

    side = frames.shape[1]
    scale = max(1, math.ceil(GRID_TILE / side))
    columns = []
    for frame, overlaid, index in zip(frames, blended, indices, strict=True):
        tiles = []
        for image, label in ((frame, f"frame {index}"), (overlaid, "attention")):
            tile = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.BICUBIC)
            draw_label(tile, (0, 0), label, size=max(14, round(0.07 * tile.height)))
            tiles.append(np.asarray(tile))
        columns.append(np.concatenate(tiles, axis=0))
    gap = np.full((columns[0].shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([part for column in columns for part in (column, gap)][:-1], axis=1)


RESULT_FILES = ("attention_frame*.png", "attention_grid.png", "attention.mp4")
"""The names :func:`save_attention` writes (glob patterns)."""


def save_attention(result: AttentionMaps, out_dir: str | os.PathLike, fps: float = 4.0) -> dict[str, Path]:
    """Write one overlay PNG per frame, a grid PNG of all frames and an mp4 of the overlays."""
    from PIL import Image

    out = Path(out_dir)
    blended = overlay(result.frames, result.maps)
    written: dict[str, Path] = {}
    for frame_index, image in zip(result.indices, blended, strict=True):
        path = out / f"attention_frame{frame_index:05d}.png"
        atomic_write(path, lambda tmp, image=image: Image.fromarray(image).save(tmp, format="PNG"))
    grid = attention_grid(result.frames, blended, result.indices)
    written["grid"] = atomic_write(out / "attention_grid.png",
                                   lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
    even = blended[:, : blended.shape[1] // 2 * 2, : blended.shape[2] // 2 * 2]
    written["video"] = write_video(out / "attention.mp4", np.ascontiguousarray(even), fps)
    return written
