"""The original segmentation system in use: a tiny TransUNet fine-tuned through the command line learns,
``evaluate`` and ``predict`` run it (and a released-layout file as it is), the original protocol's recipe,
lists and loss, and the preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import endofm
from endofm.cli.main import main
from endofm.config import load_config
from endofm.data.datasets.cvc import ORIGINAL_SPLITS
from endofm.data.synthetic import write_cvc
from endofm.metrics.segmentation import dice
from endofm.models.segmentation import TransUNet, TransUNetConfig
from endofm.tasks.segment import (
    SegmentConfig,
    SegmentRecipe,
    dice_loss,
    evaluate_segment_model,
    segment_datasets,
    segment_transforms,
)

EPOCHS = 30


@pytest.mark.slow
def test_a_tiny_transunet_learns_and_runs_through_evaluate_and_predict(tmp_path: Path, user_video: Path) -> None:
    """From a random micro backbone, 30 epochs on 4 short synthetic sequences take the test Dice from about 0
    (the untrained model's) to far above it; the saved folder is what ``evaluate`` and ``predict`` run."""
    root = write_cvc(tmp_path / "cvc", num_sequences=6, seed=0, length_range=(2, 4), size=64, test_fraction=0.34)
    out = tmp_path / "run"
    overrides = [f"run.epochs={EPOCHS}", f"selection.every={EPOCHS}", "selection.select_on_test=true",
                 "run.progress=false", "run.seed=0"]
    assert main(["finetune", "segment", "--config", "segment_transunet_cpu", "--data", str(root), "--out", str(out),
                 *overrides]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["select_on_test"] and "select-on-test" in report["protocol"]

    config = load_config(SegmentConfig, "segment_transunet_cpu", overrides=[f"data.root={root}", *overrides],
                         kind="finetune")
    torch.manual_seed(0)
    untrained = SegmentRecipe.build_network(type("R", (), {"config": config})())
    assert isinstance(untrained, TransUNet)
    test_set = segment_datasets(config.data, select_on_test=True)[2]
    from endofm.tasks.segment import evaluate_segmenter

    before = evaluate_segmenter(untrained, test_set, 1)["dice"]
    assert report["test"]["dice"] > before + 0.3, (before, report["test"]["dice"])

    loaded = endofm.load_finetuned(out / "model")
    assert loaded.task == "segment" and loaded.input_spec.channel_order == "BGR" and loaded.input_spec.minmax
    assert evaluate_segment_model(loaded, str(root))["dice"] == pytest.approx(report["test"]["dice"])
    assert main(["evaluate", "segment", "--checkpoint", str(out / "model"), "--data", str(root),
                 "--out", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["dice"] == pytest.approx(report["test"]["dice"])
    assert main(["predict", str(user_video), "--checkpoint", str(out / "model"), "--out", str(tmp_path / "pred"),
                 "--device", "cpu", "--quiet"]) == 0
    result = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert result["task"] == "segment" and len(result["frames"]) == 10 and result["mask_size"] == [224, 224]
    assert (tmp_path / "pred" / "annotated.mp4").stat().st_size > 0


def test_a_released_layout_file_runs_as_it_is(tmp_path: Path, user_video: Path, cvc_root: Path) -> None:
    torch.manual_seed(0)
    model = TransUNet(TransUNetConfig(hidden=32, depth=1, num_heads=2, resnet_width=32, resnet_units=(1, 1, 1),
                                      decoder_channels=(8, 8, 8, 8)))
    torch.save(model.state_dict(), tmp_path / "cvc.pth")
    assert main(["predict", str(user_video), "--checkpoint", str(tmp_path / "cvc.pth"), "--num-heads", "2",
                 "--out", str(tmp_path / "pred"), "--device", "cpu", "--quiet"]) == 0
    masks = np.load(tmp_path / "pred" / "masks.npz")["masks"]
    assert masks.shape == (10, 224, 224)
    assert main(["evaluate", "segment", "--checkpoint", str(tmp_path / "cvc.pth"), "--num-heads", "2",
                 "--data", str(cvc_root), "--empty-rule", "original", "--out", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())  # the evaluation options are recorded
    assert report["options"] == {"batch_size": 2, "device": "cpu", "num_heads": 2, "empty_rule": "original"}
    assert report["metrics"]["empty_rule"] == "original"


def _fake_clinicdb(root: Path) -> Path:
    """612 tiny frames and masks: enough for the original's lists."""
    for folder in ("Original", "Ground Truth"):
        (root / folder).mkdir(parents=True)
    frame, mask = Image.new("RGB", (8, 8), (90, 40, 20)), Image.new("L", (8, 8), 255)
    for i in range(1, 613):
        frame.save(root / "Original" / f"{i}.tif")
        mask.save(root / "Ground Truth" / f"{i}.tif")
    return root


def test_the_original_recipe_and_lists(tmp_path: Path) -> None:
    config = load_config(SegmentConfig, "segment_original", kind="finetune",
                         overrides=[f"data.root={_fake_clinicdb(tmp_path / 'cvc')}"])
    assert config.segmenter == "transunet" and config.selection.select_on_test and config.empty_rule == "original"
    assert config.data.clip_length is None and config.run.batch_size == 1 and config.run.epochs == 150
    assert (config.data.resize, config.data.size, config.data.rotation, config.data.hflip) == (256, 224, 5.0, 0.5)
    assert config.data.channel_order == "BGR" and config.data.minmax and config.data.per_frame_augment
    assert (config.optim.name, config.optim.lr, config.optim.weight_decay) == ("adamw", 1e-4, 0.05)
    assert config.optim.decay_all and config.optim.schedule == "poly" and config.dice_denominator == "squared"
    assert config.transunet.resnet_units == (3, 4, 9) and config.transunet.decoder_channels == (256, 128, 64, 16)
    train, val, test, names = segment_datasets(config.data, select_on_test=True)
    assert len(train) == 20 and len(test) == 9 and val is test
    assert [len(frames) for _, frames in test.samples] == [s.length for s in ORIGINAL_SPLITS["original_test"]]
    assert "test shares 7 of its 9 cases" in names["leakage"]
    default = load_config(SegmentConfig, "segment", kind="finetune")
    assert default.segmenter == "transunet" and not default.selection.select_on_test


def test_the_original_transforms_draw_per_frame_and_feed_bgr_min_max() -> None:
    config = load_config(SegmentConfig, "segment_original", kind="finetune")
    train, evaluate = segment_transforms(config.data)
    torch.manual_seed(0)
    video = torch.randint(0, 256, (6, 3, 40, 50), dtype=torch.uint8)
    video[:, 0] = 200  # red constant: the last channel after BGR
    mask = torch.zeros(6, 40, 50, dtype=torch.bool)
    mask[:, 10:30, 10:30] = True
    out = evaluate(video, mask=mask)
    assert out["video"].shape == (3, 6, 224, 224) and out["mask"].shape == (6, 224, 224)
    assert out["video"].amin() == -1 and out["video"].amax() == 1
    assert out["video"][2, :, 50:150, 50:150].std() < out["video"][0, :, 50:150, 50:150].std()  # red is channel 2
    crops = train(video, mask=mask)["mask"]
    areas = {int(m.sum()) for m in crops}
    assert len(areas) > 1  # frames of a clip get their own crop and rotation, as the original's


def test_soft_dice_has_the_original_squared_denominators_and_the_empty_rule() -> None:
    logits = torch.randn(1, 2, 3, 4, 4)
    target = torch.randint(0, 2, (1, 3, 4, 4))
    probs = logits.softmax(1)
    expected = []
    for k in range(2):
        p, t = probs[:, k], (target == k).float()
        expected.append(1 - (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5))
    assert torch.allclose(dice_loss(logits, target), torch.stack(expected).mean())
    assert not torch.allclose(dice_loss(logits, target, squared=False), torch.stack(expected).mean())
    empty, some = np.zeros((2, 4, 4), bool), np.ones((2, 4, 4), bool)
    assert dice(empty, empty) == 1.0 and dice(empty, empty, "original") == 0.0
    assert dice(some, empty) == 0.0 and dice(some, empty, "original") == 1.0


def test_the_poly_schedule_is_set_after_each_step_as_transunet_does():
    """TransUNet's trainer steps at base_lr, then sets base_lr * (1 - iter / max) ** 0.9 with the iteration it
    just ran: steps 0 and 1 at the peak, step k at (1 - (k - 1) / max) ** 0.9."""
    from endofm.engine.optim import OptimConfig
    from endofm.engine.schedules import lr_schedule

    values = lr_schedule(OptimConfig(name="adamw", lr=1e-4, schedule="poly"), 1, epochs=2, steps_per_epoch=5)
    expected = [1e-4] + [1e-4 * (1 - k / 10) ** 0.9 for k in range(9)]
    np.testing.assert_allclose(values, expected, rtol=1e-12)
