"""Loading every original checkpoint layout (made here from random models), our format, and refusals."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import pytest
import torch

from endofm import CheckpointError, InputError, build_model, export_original, load_checkpoint, save_pretrained
from endofm.models import DINOHead, EndoFMBackbone, LinearClassifier


def _prefixed(module: torch.nn.Module, prefix: str) -> dict:
    return {prefix + k: v.clone() for k, v in module.state_dict().items()}


@pytest.fixture
def nets():
    teacher, student = build_model("endofm_vit_micro"), build_model("endofm_vit_micro")
    head = DINOHead(96, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    with torch.no_grad():
        head.last_layer.weight_g.mul_(1.5)  # a g != 1 must still be applied exactly
    return teacher.eval(), student.eval(), head.eval()


def _same_outputs(a: EndoFMBackbone, b: EndoFMBackbone) -> bool:
    video = torch.randn(2, 3, 3, 48, 64)
    with torch.no_grad():
        return torch.allclose(a(video), b(video), atol=1e-6)


def test_full_pretraining_checkpoint_teacher_and_student(tmp_path, nets):
    teacher, student, head = nets
    path = tmp_path / "checkpoint0007.pth"
    torch.save(
        {
            "teacher": {**_prefixed(teacher, "backbone."), **_prefixed(head, "head.")},
            "student": {**_prefixed(student, "module.backbone."), **_prefixed(head, "module.head.")},
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 7,
            "args": argparse.Namespace(arch="timesformer", out_dim=64),
            "dino_loss": {"center": torch.zeros(1, 64)},
            "fp16_scaler": None,
        },
        path,
    )
    loaded = load_checkpoint(path, num_heads=2)
    assert loaded.info.layout == "pretrain" and loaded.info.epoch == 7
    assert loaded.info.args == {"arch": "timesformer", "out_dim": 64}
    assert "student" in loaded.info.ignored and not loaded.backbone.training
    assert _same_outputs(loaded.backbone, teacher) and not _same_outputs(loaded.backbone, student)
    x = torch.randn(3, 96)
    torch.testing.assert_close(loaded.dino_head(x), head(x))
    assert _same_outputs(load_checkpoint(path, num_heads=2, which="student").backbone, student)


def test_flat_teacher_polypdiag_and_bare_backbone(tmp_path, nets):
    teacher, _, head = nets
    classifier = LinearClassifier(96, 3)
    flat = tmp_path / "endo_fm.pth"
    torch.save({**_prefixed(teacher, "backbone."), **_prefixed(head, "head.")}, flat)
    finetuned = tmp_path / "polypdiag.pth"
    torch.save({"backbone_state_dict": _prefixed(teacher, "module."),
                "state_dict": _prefixed(classifier, "module."), "epoch": 20, "best_f1": 0.9}, finetuned)
    bare = tmp_path / "bare.pth"
    torch.save({**teacher.state_dict(), "head.weight": torch.zeros(5, 96), "head.bias": torch.zeros(5)}, bare)

    assert load_checkpoint(flat, num_heads=2).info.layout == "teacher_flat"
    loaded = load_checkpoint(finetuned, num_heads=2)
    assert loaded.info.layout == "polypdiag" and loaded.dino_head is None
    x = torch.randn(2, 96)
    torch.testing.assert_close(loaded.classifier(x), classifier(x))
    bare_loaded = load_checkpoint(bare, num_heads=2)
    assert bare_loaded.info.ignored == ["head.weight", "head.bias"]
    for ckpt in (load_checkpoint(flat, num_heads=2), loaded, bare_loaded):
        assert _same_outputs(ckpt.backbone, teacher)
    with pytest.raises(CheckpointError, match="student"):
        load_checkpoint(flat, num_heads=2, which="student")
    from endofm.tasks.loading import load_finetuned

    spec = load_finetuned(finetuned, num_heads=2).input_spec  # the clip size the file's embeddings store
    assert (spec.frames, spec.size) == (teacher.config.num_frames, teacher.config.img_size) == (4, (64, 64))


def test_architecture_is_read_off_the_shapes(tmp_path):
    model = build_model("endofm_vit_micro", embed_dim=128, depth=3, num_heads=2, img_size=(48, 48), num_frames=6)
    path = tmp_path / "other.pth"
    torch.save(_prefixed(model, "backbone."), path)
    config = load_checkpoint(path).backbone.config
    assert (config.embed_dim, config.depth, config.num_heads, config.num_frames, config.grid) == (128, 3, 2, 6, (3, 3))
    assert load_checkpoint(path, num_heads=4).backbone.config.num_heads == 4
    assert _same_outputs(load_checkpoint(path, num_heads=2).backbone, model.eval())


def test_missing_and_unexpected_keys_are_named(tmp_path, nets):
    teacher, _, _ = nets
    state = _prefixed(teacher, "backbone.")
    del state["backbone.blocks.1.mlp.fc2.bias"]
    state["backbone.blocks.0.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, num_heads=2)
    assert "blocks.1.mlp.fc2.bias" in str(error.value) and "blocks.0.extra.weight" in str(error.value)


def test_heads_cannot_be_guessed_for_odd_dims(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(build_model("endofm_vit_micro", embed_dim=48, num_heads=4).state_dict(), path)
    with pytest.raises(CheckpointError, match="num_heads"):
        load_checkpoint(path)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(MARKER_HOLDER["path"]),))


MARKER_HOLDER: dict[str, str] = {}


def test_a_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    MARKER_HOLDER["path"] = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1, 1, 8)}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    with path.open("wb") as handle:  # a raw pickle, not a zip archive
        pickle.dump(_Payload(), handle)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_missing_and_foreign_files(tmp_path, nets):
    teacher, _, _ = nets
    good = tmp_path / "good.pth"
    torch.save(_prefixed(teacher, "backbone."), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_checkpoint(truncated)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "absent.pth")
    for name, content in {"notes.pth": b'{"lr": 0.1}', "clip.pth": b"\x00\x00\x00\x18ftypmp42"}.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{name}: not a PyTorch checkpoint"):
            load_checkpoint(tmp_path / name)
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not an Endo-FM checkpoint"):
        load_checkpoint(foreign)


def test_own_format_round_trip_and_original_export(tmp_path, nets):
    teacher, _, head = nets
    classifier = LinearClassifier(96, 2)
    out = save_pretrained(tmp_path / "model", teacher, head, classifier)
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "endofm" and config["backbone"]["num_heads"] == 2
    loaded = load_checkpoint(out)
    assert loaded.info.layout == "endofm" and _same_outputs(loaded.backbone, teacher)
    x = torch.randn(2, 96)
    torch.testing.assert_close(loaded.dino_head(x), head(x))
    torch.testing.assert_close(loaded.classifier(x), classifier(x))
    assert _same_outputs(load_checkpoint(out).backbone, teacher)
    assert not list(out.glob(".*")), "no temporary files are left behind"

    exported = export_original(tmp_path / "endo_fm.pth", teacher, head)
    state = torch.load(exported, weights_only=True)
    assert set(state) == {f"backbone.{k}" for k in teacher.state_dict()} | {f"head.{k}" for k in head.state_dict()}
    assert _same_outputs(load_checkpoint(exported, num_heads=2).backbone, teacher)


def test_weight_normalised_layer_matches_torch_weight_norm():
    head = DINOHead(96, out_dim=40, hidden_dim=32, bottleneck_dim=16).eval()
    with torch.no_grad():
        head.last_layer.weight_g.uniform_(0.5, 2.0)
    reference = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(16, 40, bias=False))
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(head.last_layer.weight_g)
        reference.parametrizations.weight.original1.copy_(head.last_layer.weight_v)
    x = torch.randn(5, 96)
    bottleneck = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(head(x), reference(bottleneck))


def test_a_fine_tuned_folders_config_is_read_once(tmp_path, monkeypatch):
    """``load_finetuned`` (the predict path) parses a folder's ``config.json`` once, for every reader it passes."""
    from endofm.tasks.folder import save_task_folder
    from endofm.tasks.loading import load_finetuned

    backbone = build_model("endofm_vit_micro")
    head = LinearClassifier(backbone.embed_dim, 2)
    folder = save_task_folder(tmp_path / "model", "classify", backbone, head, head.config,
                              {"num_frames": 4, "size": 64, "normalization": "polypdiag", "sampling": "uniform"})
    reads = []
    read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self.name) or read_text(self, *a, **k))
    loaded = load_finetuned(folder)
    assert loaded.task == "classify" and reads.count("config.json") == 1
