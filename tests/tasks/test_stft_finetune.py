"""``endofm finetune detect`` with the original STFT: the recipe end to end on synthetic KUMC data (model folder
read by predict, evaluate and load_finetuned), the iteration schedule against torch's own schedulers, the
original's values in detect_original, the body initialised from the pretrained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import endofm
from endofm.cli.main import main
from endofm.config import load_config
from endofm.data.synthetic import write_kumc
from endofm.errors import ConfigError
from endofm.models.checkpoint import export_original, load_checkpoint
from endofm.models.heads import DINOHead
from endofm.models.registry import build_model
from endofm.tasks.config import FinetuneModelConfig
from endofm.tasks.detect import DetectConfig
from endofm.tasks.detect.config import IterationSchedule, STFTModelConfig
from endofm.tasks.detect.stft_train import STFTRecipe, build_stft_network, original_optimizer

TINY = ["--config", "detect_stft_cpu", "model.num_heads=2", "stft.size=64", "iterations.max_iter=4",
        "iterations.warmup_iters=3", "iterations.steps=[2]", "iterations.test_period=2", "run.progress=false"]


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro teacher in the original flat ``endo_fm.pth`` layout."""
    torch.manual_seed(3)
    backbone = build_model("endofm_vit_micro")
    path = tmp_path_factory.mktemp("init") / "endo_fm.pth"
    export_original(path, backbone, DINOHead(backbone.embed_dim, 64, 32, 16))
    return path


def test_finetune_detect_stft_end_to_end(kumc_root: Path, micro_checkpoint: Path, user_video: Path,
                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["finetune", "detect", "--data", str(kumc_root), "--init", str(micro_checkpoint), "--out", str(out),
                 *TINY]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["detector"] == "stft" and report["iterations"] == 4 and not report["select_on_test"]
    assert report["splits"] == {"train": "train", "val": "val", "test": "test"}
    assert [row["iteration"] for row in report["val_history"]] == [2, 4]  # every test_period and the last
    assert report["iteration"] in (2, 4) and "chosen on val" in report["protocol"]
    expected = {"frame_f1_original", "frame_precision_original", "frame_recall_original", "box_precision",
                "box_recall", "box_f1", "map", "map_50", "map_75"}
    assert expected <= set(report["test"]) and report["test"]["frames"] > 0
    # The learning rate of each iteration, applied to every parameter group: 0.01 (the recipe) x the linear
    # warm-up from 1/3 over 3 iterations, x0.5 from iteration 2 (0-based); biases at twice the rate.
    steps = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "step" in r]
    warm = [1 / 3 + (1 - 1 / 3) * i / 3 for i in range(3)] + [1.0]
    assert [r["lr"] for r in steps] == pytest.approx([0.01 * w * (0.5 if i >= 2 else 1) for i, w in enumerate(warm)])
    assert {"loss_cls", "loss_reg", "loss_centerness", "loss_stft_cls", "loss_stft_reg"} <= set(steps[0])
    # The model folder: load_finetuned, evaluate (same seed: the same metrics) and predict read it.
    loaded = endofm.load_finetuned(out / "model")
    assert loaded.task == "detect" and loaded.layout == "endofm-stft" and loaded.input_spec.size == (64, 64)
    assert main(["evaluate", "detect", "--checkpoint", str(out / "model"), "--data", str(kumc_root),
                 "--out", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert evaluated["map"] == pytest.approx(report["test"]["map"])
    assert evaluated["frame_f1_original"] == pytest.approx(report["test"]["frame_f1_original"])
    assert main(["predict", str(user_video), "--checkpoint", str(out / "model"), "--out", str(tmp_path / "pred"),
                 "--device", "cpu", "--quiet", "--score-threshold", "0.0"]) == 0
    predicted = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert predicted["detector"] == "stft" and len(predicted["frames"]) == 10


def test_original_protocol_evaluates_the_last_model_on_val(kumc_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["finetune", "detect", "--data", str(kumc_root), "--out", str(out), *TINY,
                 "iterations.keep=last", "data.splits.test=val", "model.arch=endofm_vit_micro"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["iteration"] == 4 and report["splits"]["test"] == "val" and not report["select_on_test"]
    assert report["protocol"].startswith("the original protocol") and "nothing selected" in report["protocol"]
    last = report["val_history"][-1]
    assert report["test"]["map"] == pytest.approx(last["val_map"])  # the last evaluation is the one reported


def test_schedule_is_the_original_warmup_multistep() -> None:
    """The factor of every chosen iteration equals torch's LinearLR(1/3 over 8000) chained with
    MultiStepLR(64k/80k/88k, 0.5), stepped after every iteration as the original's WarmupMultiStepLR."""
    schedule = load_config(DetectConfig, "detect_original", kind="finetune").iterations
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    chained = torch.optim.lr_scheduler.ChainedScheduler([
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / 3, end_factor=1.0, total_iters=8000),
        torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[64000, 80000, 88000], gamma=0.5)])
    chosen = {0, 1, 2, 4000, 7999, 8000, 8001, 63999, 64000, 64001, 79999, 80000, 87999, 88000, 95999}
    reference = {}
    for iteration in range(96000):
        if iteration in chosen:
            reference[iteration] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        chained.step()
    for iteration, value in reference.items():
        assert schedule.factor(iteration) == pytest.approx(value, rel=1e-9), iteration
    assert schedule.factor(0) == pytest.approx(1 / 3) and schedule.factor(95999) == 0.125
    constant = IterationSchedule(warmup_method="constant")
    assert constant.factor(7999) == pytest.approx(1 / 3) and constant.factor(8000) == 1.0


def test_before_step_sets_every_group() -> None:
    """Each parameter group gets its own base rate (biases x2) times the iteration's factor."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    optimizer = original_optimizer(model, lr=0.0025, weight_decay=1e-4)  # type: ignore[arg-type]
    recipe = SimpleNamespace(config=load_config(DetectConfig, "detect_original", kind="finetune"), skipped_iterations=0)
    logged = STFTRecipe.before_step(recipe, 64000, 0, optimizer)  # type: ignore[arg-type]
    names = [name for name, _ in model.named_parameters()]
    for name, group in zip(names, optimizer.param_groups, strict=True):
        base = 0.0025 * (2 if "bias" in name else 1)
        assert group["lr"] == pytest.approx(base * 0.5)
        assert group["weight_decay"] == (0.0 if "bias" in name else 1e-4) and group["momentum"] == 0.9
    assert logged["lr"] == pytest.approx(0.00125)


def test_detect_original_is_the_original_recipe_value_for_value() -> None:
    """kumc_R_50_STFT.yaml over defaults.py: the values typed here from the original files."""
    config = load_config(DetectConfig, "detect_original", kind="finetune")
    assert config.detector == "stft" and config.model.arch == "endofm_vit_base" and config.model.drop_path_rate == 0.1
    assert (config.stft.out_channels, config.stft.num_convs, config.stft.size) == (256, 4, 640)
    assert (config.optim.name, config.optim.lr, config.optim.momentum, config.optim.weight_decay) == (
        "sgd", 0.0025, 0.9, 0.0001)
    it = config.iterations
    assert (it.max_iter, it.warmup_iters, it.warmup_method, it.steps, it.gamma) == (
        96000, 8000, "linear", (64000, 80000, 88000), 0.5)
    assert it.warmup_factor == pytest.approx(1 / 3) and (it.bias_lr_factor, it.weight_decay_bias) == (2.0, 0.0)
    assert (it.test_period, it.keep, config.run.checkpoint_every, config.run.batch_size) == (4000, "last", 4000, 1)
    assert config.data.hflip == 0.5 and config.run.precision == "fp32"
    assert (config.data.splits.train, config.data.splits.test) == ("train", "val")
    ours = load_config(DetectConfig, "detect", kind="finetune")
    assert ours.detector == "stft" and ours.iterations == IterationSchedule(keep="best")
    assert ours.data.splits.val == "val" and ours.data.splits.test == "test"
    assert load_config(DetectConfig, "detect_cpu", kind="finetune").detector == "fcos"
    assert load_config(DetectConfig, "detect_fcos", kind="finetune").detector == "fcos"
    assert DetectConfig().detector == "stft"
    with pytest.raises(ConfigError, match="optim.name sgd"):
        load_config(DetectConfig, "detect", ["optim.name=adamw"], kind="finetune")
    with pytest.raises(ConfigError, match="detector must be one of"):
        load_config(DetectConfig, "detect", ["detector=yolo"], kind="finetune")


def test_body_starts_from_the_pretrained_checkpoint(micro_checkpoint: Path) -> None:
    """Every tensor of the checkpoint's teacher backbone is in the STFT body; the training drop path is set."""
    teacher = load_checkpoint(micro_checkpoint, num_heads=2).backbone.state_dict()
    model = FinetuneModelConfig(init=str(micro_checkpoint), num_heads=2, drop_path_rate=0.1)
    detector = build_stft_network(model, STFTModelConfig(out_channels=32, num_convs=1, size=64))
    body = detector.backbone.body.state_dict()
    for key, value in teacher.items():
        torch.testing.assert_close(body[key], value, rtol=0, atol=0)
    assert detector.config.backbone.drop_path_rate == 0.1 and detector.training


def test_training_frames_without_boxes_are_left_out(tmp_path: Path) -> None:
    from endofm.tasks.detect.data import STFTTrainFrames

    root = write_kumc(tmp_path / "kumc", 3, seed=0, num_frames=16, size=32)  # 2 of 16 training frames empty
    every = STFTTrainFrames(root, "train", size=32)
    boxed = STFTTrainFrames(root, "train", size=32, skip_empty=True)
    counts = [len(every[i]["boxes"]) for i in range(len(every))]
    assert len(boxed) == sum(c > 0 for c in counts) < len(every)
    assert all(len(boxed[i]["boxes"]) for i in range(len(boxed)))


def test_evaluate_detect_reads_released_kumc_and_its_converted_folder(kumc_root: Path, tmp_path: Path) -> None:
    """``endofm evaluate detect`` on a file in the released ``kumc.pth`` layout and on its converted folder:
    the metrics of the original's test path at the model's 640 x 640 input."""
    from endofm.models.backbone import BackboneConfig
    from endofm.models.detection.stft import STFTConfig, STFTDetector
    from endofm.tasks.detect.stft_inference import evaluate_stft

    torch.manual_seed(0)
    config = STFTConfig(BackboneConfig(embed_dim=48, depth=1, num_heads=4, img_size=64, num_frames=4),
                        out_channels=32, num_convs=1)
    model = STFTDetector(config).eval()
    with torch.no_grad():  # boxes through the thresholds
        model.head.cls_logits.bias.fill_(2.0)
        model.head.dcn_cls_score.bias.fill_(2.0)
    torch.save({"model": model.state_dict(), "optimizer": {}, "scheduler": {}, "iteration": 96000},
               tmp_path / "kumc.pth")
    expected = evaluate_stft(model, kumc_root, "val", 640)
    assert expected["frames"] > 0 and expected["box_tp"] + expected["box_fp"] > 0
    assert main(["convert", str(tmp_path / "kumc.pth"), str(tmp_path / "folder"), "--num-heads", "4"]) == 0
    for checkpoint in (tmp_path / "kumc.pth", tmp_path / "folder"):
        out = tmp_path / f"{checkpoint.name}.json"
        assert main(["evaluate", "detect", "--checkpoint", str(checkpoint), "--data", str(kumc_root), "--split", "val",
                     "--num-heads", "4", "--out", str(out)]) == 0
        metrics = json.loads(out.read_text())["metrics"]
        for key in ("frame_f1_original", "box_f1", "map", "map_50"):
            assert metrics[key] == pytest.approx(expected[key], nan_ok=True), (checkpoint, key)
