"""A fine-tuning run's config.yaml records the backbone that ran, taken from model.init."""

from __future__ import annotations

from pathlib import Path

import yaml
from torch import nn

from endofm.config import load_config
from endofm.models.registry import build_model
from endofm.models.segmentation import TransUNet, TransUNetConfig
from endofm.tasks.classify import ClassifyConfig
from endofm.tasks.finetune import save_run_config


def test_config_yaml_names_the_architecture_model_init_gave(tmp_path: Path) -> None:
    config = load_config(ClassifyConfig, "classify_cpu", ["model.arch=endofm_vit_base", "model.init=teacher/"],
                         kind="finetune")
    named = save_run_config(config, nn.Sequential(build_model("endofm_vit_micro")), tmp_path / "named.yaml")
    text = named.read_text()
    assert yaml.safe_load(text)["model"]["arch"] == "endofm_vit_micro"
    assert text.startswith("# the backbone that ran has model.init's architecture (endofm_vit_micro): embed_dim 96, "
                           "depth 2, num_heads 2, patch_size 16, img_size 64x64, num_frames 4\n")
    assert load_config(ClassifyConfig, named).model.arch == "endofm_vit_micro"  # reads back with --config

    narrow = build_model("endofm_vit_micro", embed_dim=48)
    other = save_run_config(config, nn.Sequential(narrow), tmp_path / "other.yaml").read_text()
    assert "(no named one; model.arch is unused): embed_dim 48, depth 2" in other.splitlines()[0]
    transunet = TransUNet(TransUNetConfig(hidden=96, depth=2, num_heads=2, resnet_width=32, resnet_units=(1, 1, 1),
                                          decoder_channels=(8, 8, 8, 8)))
    encoder = save_run_config(config, transunet, tmp_path / "transunet.yaml").read_text()
    assert yaml.safe_load(encoder)["model"]["arch"] == "endofm_vit_micro" and "embed_dim 96" in encoder
