"""PolypDiag, CVC and KUMC datasets read their original layouts (written by the synthetic generator)."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from endofm.data.datasets.cvc import CVCDataset, read_sequence_list
from endofm.data.datasets.kumc import KUMCDataset
from endofm.data.datasets.polypdiag import PolypDiagDataset, evenly_spaced
from endofm.data.synthetic import write_cvc, write_kumc, write_polypdiag
from endofm.data.transforms import eval_transform
from endofm.errors import DatasetError

SMALL = eval_transform(32, short_side=32)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("finetune")
    return {
        "polypdiag": write_polypdiag(base / "polypdiag", num_videos=6, seed=1, num_frames=10, size=32),
        "cvc": write_cvc(base / "cvc", num_sequences=3, seed=1, length_range=(3, 5), size=32),
        "kumc": write_kumc(base / "kumc", num_videos=3, seed=1, num_frames=4, size=(32, 48)),
    }


def test_polypdiag_samples(roots):
    ds = PolypDiagDataset(roots["polypdiag"], "train", transform=SMALL)
    sample = ds[0]
    assert sample["video"].shape == (3, 8, 32, 32) and sample["video"].dtype == torch.float32
    assert sample["label"] in (0, 1)
    assert sample["meta"]["frame_indices"].tolist() == evenly_spaced(10, 8) == [0, 1, 3, 4, 5, 6, 8, 9]
    labels = {ds[i]["label"] for i in range(len(ds))}
    assert labels == {0, 1}
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["video"].shape == (2, 3, 8, 32, 32)


def test_polypdiag_errors_name_the_fault(roots, tmp_path):
    with pytest.raises(DatasetError, match="splits/nope.txt"):
        PolypDiagDataset(roots["polypdiag"], "nope")
    (tmp_path / "videos").mkdir()
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("a.mp4,3\n")
    with pytest.raises(DatasetError, match=r"train.txt:1: label 3"):
        PolypDiagDataset(tmp_path)
    (tmp_path / "splits" / "train.txt").write_text("a.mp4,1\n")
    with pytest.raises(DatasetError, match="a.mp4 is missing"):
        PolypDiagDataset(tmp_path)
    with pytest.raises(DatasetError, match="videos"):
        PolypDiagDataset(tmp_path / "splits")


def test_cvc_sequences_and_clips(roots):
    root = roots["cvc"]
    all_seqs = read_sequence_list(root / "videolist.txt")
    ds = CVCDataset(root, "all", transform=SMALL)
    assert len(ds) == 3
    sample = ds[0]
    length = all_seqs[0].length
    assert sample["video"].shape == (3, length, 32, 32)
    assert sample["mask"].shape == (length, 32, 32) and sample["mask"].dtype == torch.long
    assert set(sample["mask"].unique().tolist()) == {0, 1}
    assert sample["meta"]["frame_indices"].tolist() == list(all_seqs[0].frames)
    clips = CVCDataset(root, "all", clip_length=2, transform=SMALL)
    covered = {i for k in range(len(clips)) for i in clips[k]["meta"]["frame_indices"].tolist()}
    assert covered == {i for s in all_seqs for i in s.frames}
    assert all(clips[k]["video"].shape[1] == 2 for k in range(len(clips)))
    train, test = CVCDataset(root, "train", transform=SMALL), CVCDataset(root, "test", transform=SMALL)
    assert len(train) + len(test) == 3


def test_cvc_errors(roots, tmp_path):
    with pytest.raises(DatasetError, match="Ground Truth"):
        (tmp_path / "Original").mkdir()
        CVCDataset(tmp_path)
    (tmp_path / "Ground Truth").mkdir()
    (tmp_path / "videolist.txt").write_text("seq 1 2 -1\n")
    with pytest.raises(DatasetError, match="1.tif"):
        CVCDataset(tmp_path, "all")
    (tmp_path / "videolist.txt").write_text("seq one 2 -1\n")
    with pytest.raises(DatasetError, match="videolist.txt:1"):
        CVCDataset(tmp_path, "all")


def test_cvc_mask_size_mismatch_names_file(roots, tmp_path):
    root = shutil.copytree(roots["cvc"], tmp_path / "cvc")
    Image.new("L", (10, 10)).save(root / "Ground Truth" / "1.tif")
    with pytest.raises(DatasetError, match=r"Ground Truth/1.tif: mask size"):
        CVCDataset(root, "all", transform=SMALL)[0]


def test_kumc_samples(roots):
    ds = KUMCDataset(roots["kumc"], "train", transform=eval_transform(None, short_side=32))
    assert len(ds) == 4
    sample = ds[3]
    assert sample["video"].shape == (3, 3, 32, 48)
    assert sample["meta"]["frame_indices"].tolist() == [1, 2, 3]
    assert sample["boxes"].dtype == torch.float32 and sample["boxes"].shape[1] == 4
    assert sample["labels"].dtype == torch.long and len(sample["labels"]) == len(sample["boxes"])
    assert ds[0]["meta"]["frame_indices"].tolist() == [0, 0, 0]
    with_boxes = [ds[i] for i in range(len(ds)) if len(ds[i]["boxes"])]
    assert with_boxes and all(s["labels"].tolist() == with_boxes[0]["labels"].tolist() for s in with_boxes)


def test_kumc_errors(roots, tmp_path):
    root = shutil.copytree(roots["kumc"], tmp_path / "kumc")
    with pytest.raises(DatasetError, match="train2019/Annotation"):
        shutil.rmtree(tmp_path / "empty" / "train2019" / "Annotation", ignore_errors=True)
        (tmp_path / "empty" / "train2019" / "Image").mkdir(parents=True)
        KUMCDataset(tmp_path / "empty")
    video = next((root / "val2019" / "Annotation").iterdir())
    xml = video / "2.xml"
    text = xml.read_text()
    xml.write_text(text.replace("<annotation>", "<annotation><object><name>cancer</name></object>", 1))
    with pytest.raises(DatasetError, match=r"2.xml: object class 'cancer'"):
        KUMCDataset(root, "val", transform=SMALL)[1]
    xml.write_text("<annotation><size><width>48</width><height>32</height></size></annotation>")
    with pytest.raises(DatasetError, match=r"2.xml: no object boxes"):
        KUMCDataset(root, "val", transform=SMALL, require_boxes=True)[1]
    xml.unlink()
    with pytest.raises(DatasetError, match=r"2.xml .* is missing"):
        KUMCDataset(root, "val")
    assert len(KUMCDataset(root, "val", skip_unannotated=True)) == 3
