"""Parity of the TransUNet with the original TransUNet code (../shared/fixtures/official_downstream/transunet:
logits and encoder tokens the original computed, and its ``cvc.pth``), through ``endofm.load_finetuned``."""

from __future__ import annotations

import json

import pytest
import torch

import endofm
from tests.conftest import SHARED

FIXTURE = SHARED / "fixtures" / "official_downstream" / "transunet"
pytestmark = pytest.mark.skipif(not (FIXTURE / "cases.pt").exists(),
                                reason=f"original-code TransUNet fixture not found at {FIXTURE}")


@pytest.fixture(scope="module")
def released():
    meta = json.loads((FIXTURE / "meta.json").read_text())
    loaded = endofm.load_finetuned(FIXTURE / "cvc.pth", num_heads=meta["config"]["num_heads"])
    return loaded, torch.load(FIXTURE / "cases.pt", weights_only=True)


def test_released_layout_is_a_bgr_segmenter(released):
    loaded, _ = released
    assert loaded.task == "segment" and loaded.layout == "transunet"
    assert not loaded.model.training
    spec = loaded.input_spec
    assert spec.size == (224, 224) and spec.frames is None and spec.channel_order == "BGR" and spec.minmax
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("case", [0, 1])
def test_logits_and_encoder_match_the_original(released, case):
    loaded, cases = released
    clip = cases[case]["input"].transpose(0, 1).unsqueeze(0)  # the original's [T, 3, H, W] as one clip
    with torch.inference_mode():
        logits = loaded.model(clip)[0].transpose(0, 1)
        encoded = loaded.model.encode(clip)[0]
    assert logits.shape == cases[case]["logits"].shape
    assert (logits - cases[case]["logits"]).abs().max() < 1e-4
    assert (encoded - cases[case]["encoded"]).abs().max() < 1e-4


def test_clips_of_a_batch_are_independent_sequences(released):
    loaded, cases = released
    clip = cases[0]["input"].transpose(0, 1).unsqueeze(0)
    with torch.inference_mode():
        both = loaded.model(torch.cat([clip, clip.flip(2)]))
    assert (both[0].transpose(0, 1) - cases[0]["logits"]).abs().max() < 1e-4


def test_the_head_count_is_checked_against_the_width(released):
    with pytest.raises(endofm.CheckpointError, match="num_heads=5 does not divide the hidden size 48"):
        endofm.load_finetuned(FIXTURE / "cvc.pth", num_heads=5)
    with pytest.raises(endofm.CheckpointError, match="pass num_heads"):
        endofm.load_finetuned(FIXTURE / "cvc.pth")
