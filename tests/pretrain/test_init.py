"""Pretraining as the original starts it: whole networks (DINO head included) from ``model.init``, the
teacher's stochastic depth, the published recipe's values, and the original's list files as the corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from endofm.config import load_config
from endofm.data.encoding import write_video
from endofm.data.manifest import read_pretrain_clips
from endofm.data.synthetic import render_video
from endofm.engine.distributed import DistributedContext
from endofm.errors import ConfigError, DatasetError
from endofm.models.checkpoint import export_original
from endofm.models.heads import DINOHead
from endofm.models.registry import build_model
from endofm.pretrain import PretrainConfig, pretrain
from endofm.pretrain.recipe import KINETICS_URL, DINORecipe

HEAD = ["model.head_out_dim=64", "model.head_hidden_dim=32", "model.head_bottleneck_dim=16"]
MICRO = ["model.arch=endofm_vit_micro", *HEAD, "data.views.global_frames=[2,2]", "data.views.global_size=32",
         "data.views.local_frames=[2]", "data.views.local_size=16", "run.batch_size=2", "run.device=cpu"]


def _flat_file(path: Path, out_dim: int = 64, hidden: int = 32, bottleneck: int = 16) -> dict[str, torch.Tensor]:
    """A micro backbone and a head with random weights in the original flat layout; returns the file's dict."""
    torch.manual_seed(7)
    backbone = build_model("endofm_vit_micro")
    head = DINOHead(backbone.embed_dim, out_dim, hidden, bottleneck)
    with torch.no_grad():
        for param in head.parameters():
            param.add_(torch.randn_like(param))  # far from any fresh initialisation
    export_original(path, backbone, head)
    return torch.load(path, weights_only=True)


def _recipe(*overrides: str, config: str | None = None) -> DINORecipe:
    return DINORecipe(load_config(PretrainConfig, config, list(overrides), kind="pretrain"), DistributedContext())


def _assert_starts_from(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = network.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_a_run_from_a_flat_checkpoint_starts_from_its_backbone_and_head(tmp_path):
    state = _flat_file(tmp_path / "flat.pth")
    recipe = _recipe(*MICRO, f"model.init={tmp_path / 'flat.pth'}")
    _assert_starts_from(recipe.network, state)  # the student: backbone and head
    _assert_starts_from(recipe.teacher, state)
    assert any(key.startswith("head.last_layer") for key in state)


def test_full_and_training_checkpoints_give_their_teachers_head(tmp_path):
    state = _flat_file(tmp_path / "flat.pth")
    student = {f"module.{key}": value + 1 for key, value in state.items()}
    torch.save({"teacher": state, "student": student, "epoch": 3}, tmp_path / "checkpoint.pth")
    recipe = _recipe(*MICRO, f"model.init={tmp_path / 'checkpoint.pth'}")
    _assert_starts_from(recipe.network, state)
    _assert_starts_from(recipe.teacher, state)


def test_the_head_count_comes_from_the_recipes_architecture(tmp_path):
    """A micro-shaped file (96 dims: no multiple of 64) with the cpu_micro recipe needs no --num-heads."""
    backbone = build_model("endofm_vit_micro")
    export_original(tmp_path / "micro.pth", backbone, DINOHead(backbone.embed_dim, 256, 256, 64))
    recipe = _recipe("run.device=cpu", f"model.init={tmp_path / 'micro.pth'}", config="cpu_micro")
    assert recipe.network.backbone.config.num_heads == 2
    assert torch.equal(recipe.network.backbone.blocks[0].attn.qkv.weight, backbone.blocks[0].attn.qkv.weight)


def test_a_head_of_other_sizes_is_refused_naming_both(tmp_path):
    _flat_file(tmp_path / "flat.pth", out_dim=128)
    with pytest.raises(ConfigError, match=r"out_dim 128 vs 64.*model.head_out_dim=128"):
        _recipe(*MICRO, f"model.init={tmp_path / 'flat.pth'}")


def test_the_published_recipe_starts_from_the_kinetics_weights_and_says_where_they_are(tmp_path, monkeypatch):
    config = load_config(PretrainConfig, "endofm_vit_base", kind="pretrain")
    assert config.model.init == "kinetics400_vitb_ssl.pth"
    assert config.model.teacher_drop_path == 0.1 and config.model.drop_path_rate == 0.1
    assert config.run.epochs == 100 and config.run.batch_size == 12
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="kinetics400_vitb_ssl.pth does not exist.*" + KINETICS_URL):
        DINORecipe(config, DistributedContext())
    for value in ("null", "none"):
        assert load_config(PretrainConfig, "endofm_vit_base", [f"model.init={value}"]).model.init is None


def test_the_teachers_stochastic_depth_is_active_as_in_the_original():
    clips = [torch.randn(2, 3, 2, 32, 32)]
    recipe = _recipe(*MICRO, "model.drop_path_rate=0.5")  # the teacher follows the student's rate
    assert recipe.teacher.training and recipe.teacher.backbone.blocks[-1].drop_path.drop_prob == 0.5
    with torch.no_grad():
        assert not torch.equal(recipe.teacher(clips), recipe.teacher(clips))
    deterministic = _recipe(*MICRO, "model.drop_path_rate=0.5", "model.teacher_drop_path=0")
    assert deterministic.network.backbone.blocks[-1].drop_path.drop_prob == 0.5
    with torch.no_grad():
        assert torch.equal(deterministic.teacher(clips), deterministic.teacher(clips))


def test_the_originals_list_files_are_read_as_they_are(tmp_path, monkeypatch):
    for i in range(2):
        write_video(tmp_path / "clips" / f"c{i}.mp4", render_video(i, num_frames=12, size=48).frames)
    (tmp_path / "frames").mkdir()
    (tmp_path / "train.csv").write_text("clips/c0.mp4,-1\nclips/c1.mp4,-1\n")
    (tmp_path / "list.txt").write_text("frames 10 150 -1\n")
    monkeypatch.chdir(tmp_path / "frames")  # relative paths: from the working folder, else the list's folder
    clips = read_pretrain_clips(tmp_path / "train.csv")
    assert [(c.path, c.start, c.length) for c in clips] == [(tmp_path / "clips" / f"c{i}.mp4", 0, None)
                                                             for i in range(2)]
    (frames,) = read_pretrain_clips(tmp_path / "list.txt")
    assert (frames.path, frames.start, frames.length) == (tmp_path / "frames", 10, 150)
    (tmp_path / "bad.csv").write_text("clips/missing.mp4,-1\n")
    with pytest.raises(DatasetError, match="missing.mp4"):
        read_pretrain_clips(tmp_path / "bad.csv")


def test_a_run_reads_the_originals_train_csv(tmp_path):
    for i in range(4):
        write_video(tmp_path / "data" / f"c{i}.mp4", render_video(i, num_frames=12, size=48).frames)
    (tmp_path / "data" / "train.csv").write_text("".join(f"c{i}.mp4,-1\n" for i in range(4)))
    config = load_config(PretrainConfig, overrides=[
        *MICRO, "data.views.decode_short_side=40", "run.max_steps=1", "run.num_workers=0", "run.progress=false",
        "run.precision=fp32", f"data.manifest={tmp_path / 'data'}", f"run.out_dir={tmp_path / 'run'}"])
    summary = pretrain(config)  # a folder holding train.csv is read as the original's --data_path
    assert summary["global_step"] == 1
    assert not (tmp_path / "run" / "manifest.csv").exists()
    # a run's training checkpoint: the next run starts from its teacher, head included
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    teacher = torch.load(last, weights_only=True)["recipe"]["teacher"]
    recipe = _recipe(*MICRO, f"model.init={last}")
    _assert_starts_from(recipe.network, teacher)
    _assert_starts_from(recipe.teacher, teacher)
