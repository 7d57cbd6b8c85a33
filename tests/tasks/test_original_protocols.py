"""The original KUMC protocol's remaining details: the skipped iterations on frames without boxes, the
test-time queue read from the original's list files, the evaluation's box cleanup."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from endofm.config import load_config
from endofm.tasks.detect.config import DetectConfig
from endofm.tasks.detect.stft_inference import clip_to_image, detect_videos, list_queue_windows, window_ids
from endofm.tasks.detect.stft_train import STFTRecipe, original_optimizer


def test_a_frame_without_boxes_skips_its_iteration_as_the_original():
    config = load_config(DetectConfig, "detect_original", kind="finetune")
    assert config.stft.empty_frames == "skip_iteration" and config.stft.queue == "list"
    assert load_config(DetectConfig, "detect", kind="finetune").stft.empty_frames == "leave_out"
    recipe = object.__new__(STFTRecipe)
    recipe.config, recipe.skipped_iterations, recipe.last_skipped = config, 0, False
    model = torch.nn.Linear(2, 2)
    optimizer = original_optimizer(model, lr=0.0025)  # type: ignore[arg-type]
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()  # momentum buffers exist
    before = [p.detach().clone() for p in model.parameters()]
    assert STFTRecipe.loss_parts(recipe, model, {"labels": torch.zeros(0, dtype=torch.long)}, 0) == []
    optimizer.zero_grad(set_to_none=True)
    optimizer.step()  # what the trainer does with no loss part: no parameter moves
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # the learning rate follows the steps taken, not the iterations counted: iteration 8001 after one skip
    logged = STFTRecipe.before_step(recipe, 8001, 0, optimizer)
    assert logged["lr"] == pytest.approx(0.0025) and recipe.skipped_iterations == 1
    STFTRecipe.before_step(recipe, 64000, 0, optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)  # milestone 64000 not reached yet
    assert len(STFTRecipe.loss_parts(recipe, model, {"labels": torch.ones(1, dtype=torch.long)}, 0)) == 1
    assert not recipe.last_skipped


def test_the_list_queue_is_built_once_and_never_reset():
    windows = list_queue_windows([12, 5])
    assert len(windows) == 17 and all(len(w) == 19 for w in windows)
    keys = [w[9] for w in windows]
    assert keys[:12] == [1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12]  # frames 2-10 lag, frame 10 never a key
    assert keys[12:] == [12] * 5  # the second video's first frames take the first video's last frame
    assert windows[0][10:] == list(range(1, 10)) and window_ids(1, 12)[10:] == list(range(2, 11))


def test_detect_videos_runs_both_queues():
    from endofm.models.backbone import BackboneConfig
    from endofm.models.detection.stft import STFTConfig, STFTDetector

    torch.manual_seed(0)
    model = STFTDetector(STFTConfig(BackboneConfig(embed_dim=48, depth=1, num_heads=4, img_size=32, num_frames=4),
                                    out_channels=32, num_convs=1)).eval()
    frames = [torch.randn(n, 3, 32, 32) for n in (3, 2)]
    reads = [lambda ids, f=f: f[[i - 1 for i in ids]] for f in frames]
    per_video = detect_videos(model, reads, [3, 2], queue="video")
    joined = detect_videos(model, reads, [3, 2], queue="list")
    assert [len(v) for v in per_video] == [len(v) for v in joined] == [3, 2]
    assert joined[1][0]["frame_ids"][0] == 0  # the key of the second video's first frame: the first's last
    assert per_video[1][0]["frame_ids"][0] == 1


def test_evaluation_clips_boxes_and_drops_empty_ones():
    boxes = torch.tensor([[-5.0, 2, 30, 20], [50, 2, 60, 9], [3, 3, 3, 8]])
    clipped, keep = clip_to_image(boxes, 24, 40)
    assert clipped[0].tolist() == [0, 2, 30, 20] and keep.tolist() == [True, False, False]
    assert np.all(clipped.numpy()[:, [2]] <= 39)
