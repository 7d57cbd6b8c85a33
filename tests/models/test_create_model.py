"""``create_model``: named models with their input record; pretrained weights from a file, a folder or the Hub
(offline, from a local cache laid out as the Hub's)."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from endofm import CheckpointError, InputError, create_model, list_models, model_spec
from endofm.models.checkpoint import export_original, save_pretrained
from endofm.models.registry import build_model


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    clips = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        return torch.equal(a.eval()(clips), b.eval()(clips))


def test_every_named_model_carries_the_input_it_expects():
    for name in list_models():
        spec = model_spec(name)
        assert spec.input_spec.size == spec.config.img_size and spec.input_spec.frames == spec.config.num_frames
        assert spec.input_spec.channel_order == "RGB" and spec.description
    assert model_spec("endofm_vit_base").input_spec.size == (224, 224)
    with pytest.raises(InputError, match="endofm_vit_bse"):
        create_model("endofm_vit_bse")


def test_pretrained_weights_from_an_original_file_and_a_folder(tmp_path):
    source = build_model("endofm_vit_micro")
    export_original(tmp_path / "endo_fm.pth", source)
    save_pretrained(tmp_path / "folder", source)
    for pretrained in (tmp_path / "endo_fm.pth", tmp_path / "folder"):
        model = create_model("endofm_vit_micro", pretrained=pretrained, drop_path_rate=0.1)
        assert _same(model, source) and not model.training and model.config.drop_path_rate == 0.1
        assert model.input_spec == model_spec("endofm_vit_micro").input_spec


def test_size_overrides_of_a_pretrained_model_are_applied(tmp_path):
    """``num_frames``/``img_size`` resize the stored embeddings (same outputs as the file's model at that size);
    an architecture override that the file does not have is refused."""
    source = build_model("endofm_vit_micro")
    save_pretrained(tmp_path / "folder", source)
    model = create_model("endofm_vit_micro", pretrained=tmp_path / "folder", num_frames=8, img_size=32)
    assert model.config.num_frames == 8 and model.input_spec.frames == 8 and model.input_spec.size == (32, 32)
    assert model.time_embed.shape[1] == 8
    clips = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(clips), source.eval()(clips))
    with pytest.raises(CheckpointError, match="depth 2 .not 3."):
        create_model("endofm_vit_micro", pretrained=tmp_path / "folder", depth=3)


def test_a_file_of_another_architecture_is_refused_naming_what_differs(tmp_path):
    export_original(tmp_path / "mini.pth", build_model("endofm_vit_mini"))
    with pytest.raises(CheckpointError, match=r"mini\.pth: not a endofm_vit_micro checkpoint: embed_dim 192"):
        create_model("endofm_vit_micro", pretrained=tmp_path / "mini.pth")
    mini = create_model(None, pretrained=tmp_path / "mini.pth", drop_path_rate=0.2)  # the file's own architecture
    assert mini.config.embed_dim == 192 and mini.config.drop_path_rate == 0.2
    assert mini.input_spec.size == (64, 64) and mini.input_spec.frames == 8
    with pytest.raises(InputError, match="give pretrained"):
        create_model(None)


def _hub_cache(cache, repo: str, folder, revision: str = "main") -> None:
    """Lay ``folder`` out in ``cache`` as huggingface_hub stores a downloaded snapshot of ``repo``."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / revision).write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        blob = root / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(blob)


def test_pretrained_from_the_hub_offline(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub", reason="the optional hub extra is not installed")
    source = build_model("endofm_vit_micro")
    save_pretrained(tmp_path / "folder", source)
    cache = tmp_path / "hub"
    _hub_cache(cache, "endofm-org/micro", tmp_path / "folder")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _same(create_model("endofm_vit_micro", pretrained="hf-hub:endofm-org/micro"), source)
    with pytest.raises(CheckpointError, match="hf-hub:endofm-org/other"):
        create_model("endofm_vit_micro", pretrained="hf-hub:endofm-org/other")
    with pytest.raises(InputError, match="hf-hub:org/name"):
        create_model("endofm_vit_micro", pretrained="hf-hub:no-slash")
