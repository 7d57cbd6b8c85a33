"""Learning evidence for the STFT detector: the original's training step (key + 2 references as one clip,
the five losses, the original's SGD groups and warm-up) on synthetic KUMC-layout videos."""

from __future__ import annotations

import torch

from endofm.data.synthetic import write_kumc
from endofm.engine.schedules import warmup_multistep
from endofm.models.backbone import BackboneConfig
from endofm.models.detection.stft import STFTConfig, STFTDetector
from endofm.tasks.detect.data import STFTTrainFrames
from endofm.tasks.detect.stft_inference import evaluate_stft
from endofm.tasks.detect.stft_train import original_optimizer, train_step


def test_warmup_multistep_is_the_original_schedule():
    assert warmup_multistep(0) == 1 / 3 and abs(warmup_multistep(4000) - 2 / 3) < 1e-12
    assert warmup_multistep(8000) == 1.0 and warmup_multistep(63999) == 1.0
    assert warmup_multistep(64000) == 0.5 and warmup_multistep(80000) == 0.25 and warmup_multistep(95999) == 0.125


def test_training_learns_boxes(tmp_path):
    root = write_kumc(tmp_path / "kumc", num_videos=6, seed=0, num_frames=12, size=96)
    torch.manual_seed(0)
    config = STFTConfig(BackboneConfig(embed_dim=64, depth=1, num_heads=2, img_size=96, num_frames=4,
                                       drop_path_rate=0.0), out_channels=32, num_convs=1)
    model = STFTDetector(config)
    before = evaluate_stft(model.eval(), root, "val", size=96, score_threshold=0.05)
    data = STFTTrainFrames(root, "train", size=96)
    sample = data[0]
    assert sample["frames"].shape == (3, 3, 96, 96) and sample["labels"].min() >= 1
    optimizer = original_optimizer(model, lr=0.01)
    biases = [g for g in optimizer.param_groups if g["weight_decay"] == 0.0]
    assert biases and all(g["lr"] == 0.02 for g in biases)
    model.train()
    steps = 500
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * warmup_multistep(step, warmup_iters=20, milestones=(400,))
        losses = train_step(model, data[int(torch.randint(len(data), ()))])
        assert set(losses) == {"loss_cls", "loss_reg", "loss_centerness", "loss_stft_cls", "loss_stft_reg"}
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert model.head.dcn_cls_subnet.conv_offset.weight.grad is None  # no gradient, as the original
    after = evaluate_stft(model.eval(), root, "val", size=96, score_threshold=0.05)
    assert before["box_recall"] == 0.0 and after["box_recall"] >= 0.5
    assert after["map_50_class_agnostic"] > before["map_50_class_agnostic"] + 0.01
