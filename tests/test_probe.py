"""Frozen-feature evaluation: k-NN and linear probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from endofm import InputError, build_model
from endofm.cli.main import main
from endofm.data.datasets.polypdiag import PolypDiagDataset
from endofm.data.synthetic import write_polypdiag
from endofm.data.transforms import eval_transform
from endofm.metrics.knn import knn_accuracy, knn_predict
from endofm.tasks.probe import SplitFeatures, extract_features, extract_pooled_features, linear_probe_accuracy


def _clusters(n: int, seed: int, shift: float = 4.0) -> SplitFeatures:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    features = rng.normal(size=(n, 16)) + shift * labels[:, None] * np.eye(16)[0]
    return SplitFeatures(features.astype(np.float32), labels)


def test_knn_votes_by_cosine_similarity():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert knn_predict(train, np.array([0, 0, 1]), np.array([[0.1, 1.0], [1.0, 0.2]]), k=1).tolist() == [1, 0]
    assert knn_predict(train, np.array([0, 0, 1]), np.array([[0.1, 1.0]]), k=3).tolist() == [0]
    with pytest.raises(InputError):
        knn_predict(train, np.array([0]), train)


def test_probes_separate_separable_features_and_not_noise():
    train, test = _clusters(200, 0), _clusters(100, 1)
    assert linear_probe_accuracy(train, test) > 0.95
    assert knn_accuracy(train.features, train.labels, test.features, test.labels, k=5) > 0.8
    noise_train = SplitFeatures(train.features, np.random.default_rng(2).integers(0, 2, 200))
    assert linear_probe_accuracy(noise_train, test) < 0.75


def test_features_of_a_polypdiag_layout_and_the_command(tmp_path, capsys):
    root = write_polypdiag(tmp_path / "pd", num_videos=6, seed=0, num_frames=6, size=48)
    model = build_model("endofm_vit_micro")
    split = extract_features(model, root, "train", num_frames=2, size=32)
    assert split.features.shape == (len(split.labels), 96) and set(split.labels) <= {0, 1}
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "knn", "--data", str(root), "--model", "endofm_vit_micro", "--frames", "2",
                 "--size", "32", "--quiet", "--out", str(out), "--k", "1"]) == 0
    assert "k-NN accuracy" in capsys.readouterr().out and out.exists()
    report = json.loads(out.read_text())
    assert report["pool"] == "cls" and report["options"]["k"] == 1 and report["options"]["frames"] == 2


def test_pooled_features_are_the_patch_tokens_maximum(tmp_path):
    root = write_polypdiag(tmp_path / "pd", num_videos=6, seed=0, num_frames=6, size=48)
    model = build_model("endofm_vit_micro").eval()
    split = extract_features(model, root, "train", num_frames=2, size=32, pool="max")
    dataset = PolypDiagDataset(root, "train", num_frames=2, transform=eval_transform(32))
    with torch.no_grad():
        expected = model.forward_tokens(dataset[0]["video"].unsqueeze(0))[1].amax(dim=(1, 2, 3))
    torch.testing.assert_close(torch.as_tensor(split.features[0]), expected[0])


def test_several_pools_come_from_one_forward_pass_per_batch(tmp_path, monkeypatch):
    """The demo scores the CLS and the max-pooled embeddings: each batch is embedded once, and every embedding
    equals the one pool's own extraction."""
    root = write_polypdiag(tmp_path / "pd", num_videos=6, seed=0, num_frames=6, size=48)
    model = build_model("endofm_vit_micro").eval()
    options = {"num_frames": 2, "size": 32, "batch_size": 2}
    single = {pool: extract_features(model, root, "train", pool=pool, **options) for pool in ("cls", "mean", "max")}
    calls = []
    monkeypatch.setattr(type(model), "forward_tokens", _counted(type(model).forward_tokens, calls))
    several = extract_pooled_features(model, root, "train", ("cls", "mean", "max"), **options)
    assert len(calls) == -(-len(single["cls"].labels) // 2)
    for pool, split in single.items():
        np.testing.assert_allclose(several[pool].features, split.features, rtol=1e-5, atol=1e-5)
        assert several[pool].labels.tolist() == split.labels.tolist()
    with pytest.raises(InputError, match="pool must be one of"):
        model.forward_pools(torch.zeros(1, 3, 2, 32, 32), ("cls", "median"))


def _counted(method, calls: list):
    def wrapper(self, *args, **kwargs):
        calls.append(1)
        return method(self, *args, **kwargs)
    return wrapper
