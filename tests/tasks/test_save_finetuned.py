"""``endofm.save_finetuned``: any fine-tuned model read by ``load_finetuned`` written as a package folder and
read back to the same outputs (the released layouts of ../shared, and a model folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import endofm
from endofm.models.segmentation import TransUNet, TransUNetConfig, save_transunet
from tests.conftest import SHARED_FIXTURES


def _same(a: endofm.LoadedFinetuned, b: endofm.LoadedFinetuned, clip: torch.Tensor) -> None:
    assert (a.task, a.input_spec) == (b.task, b.input_spec)
    with torch.no_grad():
        out_a, out_b = a.model(clip), b.model(clip)
    assert torch.equal(out_a, out_b)


def test_a_transunet_folder_round_trips(tmp_path: Path) -> None:
    model = TransUNet(TransUNetConfig(hidden=48, depth=1, num_heads=4, resnet_width=32, resnet_units=(1, 1, 1),
                                      decoder_channels=(16, 8, 8, 4))).eval()
    save_transunet(tmp_path / "first", model)
    first = endofm.load_finetuned(tmp_path / "first")
    again = endofm.load_finetuned(endofm.save_finetuned(tmp_path / "second", first))
    assert again.layout == "endofm-transunet"
    _same(first, again, torch.randn(1, 3, 2, 224, 224))


@pytest.mark.parametrize("path, heads, clip", [
    ("official_downstream/transunet/cvc.pth", 4, (1, 3, 2, 224, 224)),
    ("official_parity/official_polypdiag_checkpoint.pth", 4, (1, 3, 2, 32, 32)),
])
def test_released_models_round_trip(tmp_path: Path, path: str, heads: int, clip: tuple[int, ...]) -> None:
    if not (SHARED_FIXTURES / path).is_file():
        pytest.skip(f"{SHARED_FIXTURES / path} not found (../shared is absent)")
    released = endofm.load_finetuned(SHARED_FIXTURES / path, num_heads=heads)
    folder = endofm.save_finetuned(tmp_path / "model", released)
    _same(released, endofm.load_finetuned(folder), torch.randn(*clip))
    copied = endofm.save_finetuned(tmp_path / "copy", endofm.load_finetuned(folder))
    _same(released, endofm.load_finetuned(copied), torch.randn(*clip))


def test_the_released_detector_round_trips(tmp_path: Path) -> None:
    path = SHARED_FIXTURES / "official_downstream" / "stft" / "kumc.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared is absent)")
    released = endofm.load_finetuned(path, num_heads=4)
    again = endofm.load_finetuned(endofm.save_finetuned(tmp_path / "model", released))
    frames = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        a, b = released.model.forward_frames(frames), again.model.forward_frames(frames)
    assert torch.equal(a["detections"]["boxes"], b["detections"]["boxes"])
