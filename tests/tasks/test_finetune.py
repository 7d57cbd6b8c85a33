"""End to end on tiny synthetic data: fine-tune through the CLI, evaluate, predict, resume rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from endofm.cli.main import main
from endofm.errors import CheckpointError
from endofm.models.checkpoint import load_checkpoint

TINY = ["model.arch=endofm_vit_micro", "run.progress=false", "run.num_workers=0"]


def finetune(task: str, root: Path, out: Path, *extra: str) -> int:
    flags = [e for e in extra if e.startswith("--")]
    overrides = [e for e in extra if not e.startswith("--")]
    return main(["finetune", task, "--data", str(root), "--config", f"{task}_cpu",
                 "--out", str(out), *flags, *TINY, *overrides])


def check_run(out: Path, task: str, capsys: pytest.CaptureFixture) -> dict:
    report = json.loads((out / "metrics.json").read_text())
    assert report["task"] == task and not report["select_on_test"]
    assert "validation split" in report["protocol"]
    assert report["splits"]["val"] != report["splits"]["test"]
    assert (out / "config.yaml").exists() and (out / "checkpoints" / "last.pt").exists()
    assert not list((out / "checkpoints").glob("epoch_*.pt")), "only last.pt and model/ are kept by default"
    assert (out / "model" / "config.json").exists() and (out / "model" / "task_head.safetensors").exists()
    assert list((out / "plots").glob("*.png"))
    assert "test metrics" in capsys.readouterr().out
    return report


def check_predict(model: Path, video: Path, out: Path, task: str) -> dict:
    threshold = ["--score-threshold", "0.0"] if task == "detect" else []  # the detector's option, refused by others
    assert main(["predict", str(video), "--checkpoint", str(model), "--out", str(out), "--device", "cpu",
                 "--quiet", *threshold]) == 0
    result = json.loads((out / "predictions.json").read_text())
    assert result["task"] == task and len(result["frames"]) == 10
    assert (out / "predictions.csv").read_text().count("\n") >= 2
    with av.open(str(out / "annotated.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10
    return result


@pytest.mark.slow
def test_classify_end_to_end(polypdiag_root: Path, user_video: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert finetune("classify", polypdiag_root, out, "run.epochs=2", "data.size=32") == 0
    report = check_run(out, "classify", capsys)
    assert {"binary_f1", "macro_f1", "accuracy", "auroc"} <= set(report["test"])
    assert main(["evaluate", "classify", "--checkpoint", str(out / "model"), "--data", str(polypdiag_root),
                 "--out", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert evaluated["accuracy"] == pytest.approx(report["test"]["accuracy"])
    assert "binary_f1" in capsys.readouterr().out
    result = check_predict(out / "model", user_video, tmp_path / "pred", "classify")
    assert 0.0 <= result["frames"][0]["polyp_probability"] <= 1.0
    assert finetune("classify", polypdiag_root, out, "run.epochs=2", "data.size=32") == 1
    assert "--resume" in capsys.readouterr().err


def test_linear_probe_from_an_original_pretraining_checkpoint_keeps_its_teacher(polypdiag_root: Path,
                                                                                 tmp_path: Path) -> None:
    """``--init`` takes the original's full training checkpoint (DDP student, teacher, optimiser); the linear
    probe leaves the backbone as it was, so the fine-tuned model holds exactly the teacher's weights."""
    from endofm import build_model, load_checkpoint

    teacher, student = build_model("endofm_vit_micro"), build_model("endofm_vit_micro")
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()},
                "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, path)
    out = tmp_path / "run"
    assert finetune("classify", polypdiag_root, out, f"model.init={path}", "model.num_heads=2", "run.epochs=1",
                    "data.size=32") == 0
    tuned = load_checkpoint(out / "model").backbone.state_dict()
    torch.testing.assert_close(tuned, teacher.state_dict(), rtol=0, atol=0)


@pytest.mark.slow
def test_predict_on_a_real_video(polypdiag_root: Path, real_videos: Path, tmp_path: Path) -> None:
    """A real 1280x720 h264 video with an audio stream: one prediction per frame and an annotated video of
    every frame at the source frame rate."""
    assert finetune("classify", polypdiag_root, tmp_path / "run", "run.epochs=1", "data.size=32") == 0
    out = tmp_path / "pred"
    assert main(["predict", str(real_videos / "bigbuckbunny.mp4"), "--checkpoint", str(tmp_path / "run" / "model"),
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    frames = json.loads((out / "predictions.json").read_text())["frames"]
    assert len(frames) == 132 and all(0.0 <= f["polyp_probability"] <= 1.0 for f in frames)
    with av.open(str(out / "annotated.mp4")) as container:
        assert container.streams.video[0].average_rate == 25
        assert sum(1 for _ in container.decode(video=0)) == 132


@pytest.mark.slow
def test_classify_select_on_test_says_so(polypdiag_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert finetune("classify", polypdiag_root, out, "--select-on-test", "run.epochs=1", "data.size=32") == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["select_on_test"] and "select-on-test" in report["protocol"]
    assert report["splits"]["val"] == report["splits"]["test"]


@pytest.mark.slow
def test_classify_resume(polypdiag_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--resume`` says where it continues; each epoch prints its validation figures (progress bars off)."""
    out = tmp_path / "run"
    assert finetune("classify", polypdiag_root, out, "run.epochs=2", "run.max_steps=3", "data.size=32") == 0
    assert not (out / "metrics.json").exists() or json.loads((out / "metrics.json").read_text())
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    capsys.readouterr()
    assert finetune("classify", polypdiag_root, out, "--resume", "run.epochs=2", "data.size=32") == 0
    printed = capsys.readouterr().out
    assert f"resuming at epoch {state['epoch'] + 1}, step {state['next_step'] + 1} " in printed
    assert re.search(r"^epoch 2/2  mean_loss \S+  val_binary_f1 ", printed, re.MULTILINE), printed
    report = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in report["val_history"]] == [1, 2]
    with pytest.raises(CheckpointError, match="fine-tuning run's training checkpoint; load the run's model/"):
        load_checkpoint(out / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_segment_end_to_end(cvc_root: Path, user_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert finetune("segment", cvc_root, out, "run.epochs=2", "data.size=32") == 0
    report = check_run(out, "segment", capsys)
    assert {"dice", "hd95", "sequences"} <= set(report["test"])
    assert main(["evaluate", "segment", "--checkpoint", str(out / "model"), "--data", str(cvc_root)]) == 0
    result = check_predict(out / "model", user_video, tmp_path / "pred", "segment")
    assert (tmp_path / "pred" / "masks.npz").exists()
    assert 0.0 <= result["frames"][0]["polyp_fraction"] <= 1.0


@pytest.mark.slow
def test_segment_with_gradient_checkpointing_trains_the_same_model(cvc_root: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.checkpoint

    import endofm.models.backbone as backbone_module

    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return torch.utils.checkpoint.checkpoint(*args, **kwargs)

    monkeypatch.setattr(backbone_module, "checkpoint", counting)
    for name, flag in (("plain", "false"), ("ckpt", "true")):
        assert finetune("segment", cvc_root, tmp_path / name, "run.epochs=1", "data.size=32",
                        f"model.grad_checkpointing={flag}") == 0
        assert bool(calls) == (flag == "true")
    plain, ckpt = (load_file(str(tmp_path / name / "model" / "model.safetensors")) for name in ("plain", "ckpt"))
    torch.testing.assert_close(ckpt, plain, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_detect_end_to_end(kumc_root: Path, user_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert finetune("detect", kumc_root, out, "run.epochs=1", "data.short_side=32", "data.max_size=48") == 0
    report = check_run(out, "detect", capsys)
    assert {"frame_f1_original", "box_f1", "map", "map_50"} <= set(report["test"])
    with safe_open(str(out / "model" / "task_head.safetensors"), "pt") as head_file:
        keys = list(head_file.keys())
    assert keys and not any(k.startswith("backbone.backbone.") for k in keys), "the backbone is stored once"
    assert main(["evaluate", "detect", "--checkpoint", str(out / "model"), "--data", str(kumc_root),
                 "--out", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert evaluated["map"] == pytest.approx(report["test"]["map"]) and evaluated["box_f1"] == report["test"]["box_f1"]
    result = check_predict(out / "model", user_video, tmp_path / "pred", "detect")
    for frame in result["frames"]:
        for box in frame["boxes"]:
            assert len(box["box"]) == 4 and box["label"] in ("adenomatous", "hyperplastic")


@pytest.mark.slow
def test_detect_learns(tmp_path: Path) -> None:
    """From random weights, 4 epochs on 9 synthetic KUMC videos find the polyps: AP50 and box F1 far above what
    boxes placed without looking score (about 0)."""
    from endofm.data.synthetic import write_kumc

    root = write_kumc(tmp_path / "kumc", 9, seed=1, num_frames=12, size=64)
    out = tmp_path / "run"
    assert finetune("detect", root, out, "run.epochs=4", "run.batch_size=4") == 0
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["map_50"] > 0.4
    assert test["box_f1"] > 0.25 and test["box_recall"] > 0.3


@pytest.mark.slow
def test_classify_learns_from_random_weights(tmp_path: Path) -> None:
    """Full fine-tuning of the micro backbone from random weights on 240 synthetic PolypDiag training videos
    (polyp in every frame), the head on the patch tokens' maximum (``pool=max``), tells polyp videos from clean
    ones on the held-out test split, well above chance (0.5 for both metrics). The model is chosen on the
    validation split."""
    from endofm.data.synthetic import write_polypdiag

    root = write_polypdiag(tmp_path / "polypdiag", 400, seed=5, num_frames=8, size=64, always_visible=True)
    out = tmp_path / "run"
    assert finetune("classify", root, out, "mode=finetune", "pool=max", "model.drop_path_rate=0.1",
                    "optim.lr=0.001", "optim.scale_lr=false", "optim.warmup_epochs=2", "optim.weight_decay=0.05",
                    "run.epochs=15", "run.batch_size=8") == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["splits"]["test"] == "test" and report["test"]["samples"] == 80
    assert report["test"]["auroc"] > 0.85 and report["test"]["accuracy"] > 0.7


@pytest.mark.slow
def test_segment_learns(tmp_path: Path) -> None:
    """On 10 synthetic sequences the CPU recipe reaches a test Dice far above the all-background baseline (0)."""
    from endofm.data.synthetic import write_cvc

    root = write_cvc(tmp_path / "cvc", 10, seed=2, length_range=(4, 6), size=32)
    out = tmp_path / "run"
    assert finetune("segment", root, out, "run.epochs=12", "data.size=32") == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["test"]["dice"] > 0.4
    assert report["test"]["hd95"] < 16.0


def test_a_mean_pooled_classifier_keeps_its_pooling_when_saved_and_read_back(tmp_path: Path) -> None:
    """``pool=mean`` feeds the head the mean of the patch tokens, not the CLS token, before and after saving."""
    from endofm.config import load_config
    from endofm.errors import ConfigError
    from endofm.models import build_model
    from endofm.models.classification import ClassifierNetwork
    from endofm.models.heads import LinearClassifier
    from endofm.tasks.classify import ClassifyConfig
    from endofm.tasks.folder import save_task_folder
    from endofm.tasks.loading import read_finetuned

    torch.manual_seed(0)
    backbone = build_model("endofm_vit_micro").eval()
    head = LinearClassifier(backbone.embed_dim, 2, pool="mean")
    torch.nn.init.normal_(head.linear.weight)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = head(backbone.forward_tokens(video)[1].mean(dim=(1, 2, 3)))
        from_cls = head(backbone(video))
    model = read_finetuned(save_task_folder(tmp_path / "model", "classify", backbone, head, head.config,
                                          {"num_frames": 4, "size": 32}))
    assert model.head.pool == "mean"
    with torch.no_grad():
        logits = ClassifierNetwork(model.backbone, model.head)(video)
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, from_cls, atol=1e-3)
    with pytest.raises(ConfigError, match="pool must be one of cls, mean, max, got 'min'"):
        load_config(ClassifyConfig, overrides=["pool=min"])
    torch.testing.assert_close(backbone.forward_pooled(video, "max"), backbone.forward_tokens(video)[1].amax((1, 2, 3)))
