"""The TransUNet without ../shared: shapes, the frame mixing of its encoder, building it from a pretrained
backbone, strict loading of other sizes, the folder format and bad clip sizes."""

from __future__ import annotations

import pytest
import torch

import endofm
from endofm.errors import CheckpointError, InputError
from endofm.models.registry import build_model
from endofm.models.segmentation import TransUNet, TransUNetConfig, infer_transunet_config
from endofm.tasks.segment import TRANSUNET_INPUT, save_transunet_folder

TINY = TransUNetConfig(hidden=32, depth=1, num_heads=2, resnet_width=32, resnet_units=(1, 1, 1),
                       decoder_channels=(16, 8, 8, 4))


@pytest.fixture(scope="module")
def tiny() -> TransUNet:
    torch.manual_seed(0)
    model = TransUNet(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():  # every parameter matters for the output, zero-initialised ones too
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_shapes_and_the_encoder_mixes_frames(tiny):
    clip = torch.randn(2, 3, 3, 224, 224)
    with torch.inference_mode():
        out = tiny(clip)
        changed = tiny(torch.cat([clip[:, :, :2], clip[:, :, 2:].flip(-1)], dim=2))
        alone = tiny(clip[1:])
    assert out.shape == (2, 2, 3, 224, 224)
    assert (changed[:, :, 0] - out[:, :, 0]).abs().max() > 1e-4  # frame 0 sees the last frame
    assert torch.allclose(alone, out[1:], atol=1e-5)  # clips of a batch do not mix


def test_sizes_are_read_off_the_state_dict():
    config = TransUNetConfig(hidden=64, depth=2, num_heads=1, resnet_width=32, resnet_units=(2, 1, 3),
                             decoder_channels=(16, 16, 8, 8), n_skip=2, num_classes=3)
    state = TransUNet(config).state_dict()
    inferred = infer_transunet_config(state, num_heads=1)
    assert inferred == config
    assert infer_transunet_config(state).num_heads == 1  # hidden // 64


def test_another_size_is_one_error_naming_the_key(tmp_path, tiny):
    state = tiny.state_dict()
    state["decoder.blocks.3.conv2.0.weight"] = torch.zeros(4, 5, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth.*shape mismatch decoder\.blocks\.3\.conv2\.0\.weight"):
        endofm.load_finetuned(tmp_path / "bad.pth", num_heads=2)
    state = tiny.state_dict()
    del state["decoder.blocks.1.conv2.1.running_var"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \['decoder\.blocks\.1\.conv2\.1\.running_var'\]"):
        endofm.load_finetuned(tmp_path / "missing.pth", num_heads=2)
    state = tiny.state_dict()
    state["transformer.embeddings.position_embeddings"] = torch.zeros(1, 100, 32)
    torch.save(state, tmp_path / "grid.pth")
    with pytest.raises(CheckpointError, match="position_embeddings holds 100 positions"):
        endofm.load_finetuned(tmp_path / "grid.pth", num_heads=2)
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a fine-tuned model in a known layout"):
        endofm.load_finetuned(tmp_path / "other.pth")


def test_a_clip_the_grid_cannot_take_is_refused(tiny):
    with pytest.raises(InputError, match="224x224 frames .* got 160x224"):
        tiny(torch.zeros(1, 3, 2, 160, 224))
    with pytest.raises(InputError, match=r"\[B, 3, T, H, W\]"):
        tiny(torch.zeros(3, 224, 224))
    with pytest.raises(InputError, match="resnet_width"):
        TransUNetConfig(resnet_width=48)


def test_released_layout_and_folder_round_trip(tmp_path, tiny):
    torch.save({f"module.{k}": v for k, v in tiny.state_dict().items()}, tmp_path / "cvc.pth")  # DataParallel
    loaded = endofm.load_finetuned(tmp_path / "cvc.pth", num_heads=2)
    assert loaded.task == "segment" and loaded.input_spec == TRANSUNET_INPUT
    folder = save_transunet_folder(tmp_path / "model", loaded.model)
    again = endofm.load_finetuned(folder)
    clip = torch.randn(1, 3, 2, 224, 224)
    with torch.inference_mode():
        assert torch.equal(again.model(clip), tiny(clip))
    assert again.model.config == TINY and again.input_spec == TRANSUNET_INPUT


def test_built_from_a_pretrained_backbone_keeps_its_blocks_norm_and_cls():
    backbone = build_model("endofm_vit_micro")
    model = TransUNet.from_backbone(backbone, resnet_width=32, resnet_units=(1, 1, 1), decoder_channels=(8, 8, 8, 8))
    encoder = model.transformer.encoder
    for key, value in backbone.blocks.state_dict().items():
        assert torch.equal(encoder.layer.state_dict()[key], value)
    assert torch.equal(encoder.encoder_norm.weight, backbone.norm.weight)
    assert torch.equal(encoder.cls_token, backbone.cls_token)
    assert model.config.hidden == 96 and model.config.num_heads == 2
    assert torch.count_nonzero(model.transformer.embeddings.position_embeddings) == 0  # new, as the original's
    with pytest.raises(InputError, match="come from the backbone"):
        TransUNet.from_backbone(backbone, hidden=32)


def test_input_spec_normalises_as_the_original():
    video = torch.randint(10, 200, (2, 3, 8, 8), dtype=torch.uint8)
    x = TRANSUNET_INPUT.normalize(video)
    assert x.shape == (3, 2, 8, 8)
    for t in range(2):
        assert x[:, t].min() == -1 and x[:, t].max() == 1
    rgb = video.float()
    expected = (rgb - rgb[0].min()) / (rgb[0].max() - rgb[0].min()) * 2 - 1
    assert torch.allclose(x[:, 0], expected[0].flip(0), atol=1e-6)  # BGR


def test_convert_and_info_commands(tmp_path, tiny, capsys):
    from endofm.cli.main import main

    torch.save(tiny.state_dict(), tmp_path / "cvc.pth")
    assert main(["convert", str(tmp_path / "cvc.pth"), str(tmp_path / "out"), "--num-heads", "2"]) == 0
    assert main(["info", str(tmp_path / "out")]) == 0
    assert '"model": "transunet"' in capsys.readouterr().out
    clip = torch.randn(1, 3, 1, 224, 224)
    with torch.inference_mode():
        assert torch.equal(endofm.load_finetuned(tmp_path / "out").model(clip), tiny(clip))
