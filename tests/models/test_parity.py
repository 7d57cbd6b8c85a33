"""Parity with outputs of the original Endo-FM code, on checkpoints in its own layouts (../shared)."""

from __future__ import annotations

import json

import pytest
import torch

from endofm import load_checkpoint
from tests.conftest import PARITY_DIR

pytestmark = pytest.mark.skipif(
    not (PARITY_DIR / "meta.json").exists(), reason=f"parity fixtures not found at {PARITY_DIR}"
)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fixtures():
    meta = json.loads((PARITY_DIR / "meta.json").read_text())
    heads = meta["num_heads"]
    return {
        "meta": meta,
        "cases": torch.load(PARITY_DIR / "cases.pt", weights_only=True),
        "pretrain": load_checkpoint(PARITY_DIR / "official_pretrain_checkpoint.pth", num_heads=heads),
        "student": load_checkpoint(PARITY_DIR / "official_pretrain_checkpoint.pth", num_heads=heads,
                                   which="student"),
        "flat": load_checkpoint(PARITY_DIR / "official_teacher_flat.pth", num_heads=heads),
        "polypdiag": load_checkpoint(PARITY_DIR / "official_polypdiag_checkpoint.pth", num_heads=heads),
    }


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def test_architecture_inferred_from_the_files(fixtures):
    meta = fixtures["meta"]
    config = fixtures["pretrain"].backbone.config
    assert (config.embed_dim, config.depth, config.patch_size, config.num_frames) == (
        meta["embed_dim"], meta["depth"], meta["patch_size"], meta["num_frames"])
    assert config.img_size == (meta["img_size"], meta["img_size"])
    head = fixtures["pretrain"].dino_head.config
    assert (head["hidden_dim"], head["bottleneck_dim"], head["out_dim"]) == (
        meta["head_hidden"], meta["head_bottleneck"], meta["head_out"])
    assert fixtures["polypdiag"].classifier.config["num_labels"] == meta["n_labels"]


@torch.no_grad()
@pytest.mark.parametrize("index", range(5))
def test_every_output_matches_the_original(fixtures, index):
    case = fixtures["cases"][index]
    video = case["input"]
    for layout in ("pretrain", "flat"):
        ckpt = fixtures[layout]
        cls = ckpt.backbone(video)
        assert _max_diff(cls, case["cls"]) < TOLERANCE
        assert _max_diff(ckpt.backbone.forward_features(video), case["tokens"]) < TOLERANCE
        assert _max_diff(ckpt.dino_head(cls), case["dino_head"]) < TOLERANCE
    assert _max_diff(fixtures["student"].backbone(video), case["student_cls"]) < TOLERANCE
    finetuned = fixtures["polypdiag"]
    assert _max_diff(finetuned.classifier(finetuned.backbone(video)), case["logits"]) < TOLERANCE


def test_conversion_to_our_format_keeps_the_outputs(fixtures, tmp_path):
    from endofm import save_pretrained

    source = fixtures["pretrain"]
    loaded = load_checkpoint(save_pretrained(tmp_path / "converted", source.backbone, source.dino_head))
    video = fixtures["cases"][0]["input"]
    with torch.no_grad():
        assert _max_diff(loaded.dino_head(loaded.backbone(video)), fixtures["cases"][0]["dino_head"]) < TOLERANCE
