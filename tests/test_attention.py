"""Attention-map visualisation."""

from __future__ import annotations

import av
import numpy as np
import torch
from PIL import Image

from endofm import build_model, save_pretrained
from endofm.cli.main import main
from endofm.report.attention import attention_maps, overlay


def test_maps_are_the_cls_row_of_the_last_block(tiny_video):
    model = build_model("endofm_vit_micro").eval()
    result = attention_maps(tiny_video, model, num_frames=3, size=32)
    assert result.frames.shape == (3, 32, 32, 3) and result.maps.shape == (3, 32, 32)
    assert result.maps.min() >= 0 and np.isclose(result.maps.max(), 1.0)
    clip = torch.from_numpy(result.frames).permute(3, 0, 1, 2).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    clip = ((clip - mean.view(3, 1, 1, 1)) / std.view(3, 1, 1, 1))[None]
    with torch.no_grad():
        cls_row = model.last_attention(clip)[0, :, :, 0, 1:].mean(1)  # [T, 4 patches]
    top_patch = cls_row.argmax(-1)
    for t in range(3):  # the brightest quadrant of the map is the most-attended patch
        quadrants = result.maps[t].reshape(2, 16, 2, 16).mean(axis=(1, 3)).reshape(-1)
        assert quadrants.argmax() == top_patch[t]


def test_overlay_blends_and_command_writes_pngs_and_video(tmp_path, tiny_video):
    frames = np.zeros((1, 2, 2, 3), np.uint8)
    assert overlay(frames, np.ones((1, 2, 2)), alpha=1.0).max() > 200
    assert overlay(frames, np.ones((1, 2, 2)), alpha=0.0).max() == 0
    model_dir = save_pretrained(tmp_path / "model", build_model("endofm_vit_micro"))
    out = tmp_path / "att"
    assert main(["visualize", "attention", str(tiny_video), "--checkpoint", str(model_dir), "--out", str(out),
                 "--frames", "4", "--size", "32"]) == 0
    assert len(list(out.glob("attention_frame*.png"))) == 4 and (out / "attention_grid.png").exists()
    with Image.open(out / "attention_grid.png") as grid:  # frames enlarged to be readable, frame over attention
        assert min(grid.size) >= 2 * 224 and grid.width > grid.height
    with av.open(str(out / "attention.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4
