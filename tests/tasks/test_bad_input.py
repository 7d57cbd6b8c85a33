"""Bad input gets one clear message naming what is wrong, and no output that looks complete."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from endofm.errors import CheckpointError, DatasetError, InputError, VideoError
from endofm.models import build_model, save_pretrained
from endofm.tasks.classify import ClassifyDataConfig, classify_datasets
from endofm.tasks.detect.config import DetectDataConfig
from endofm.tasks.detect.data import detect_datasets
from endofm.tasks.predict import predict_video
from endofm.tasks.segment import SegmentDataConfig, segment_datasets


def copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


def test_polypdiag_missing_split_file(polypdiag_root: Path, tmp_path: Path) -> None:
    root = copy(polypdiag_root, tmp_path)
    (root / "splits" / "train.txt").unlink()
    with pytest.raises(DatasetError, match="train.txt is missing"):
        classify_datasets(ClassifyDataConfig(root=str(root)))


def test_polypdiag_label_outside_classes(polypdiag_root: Path, tmp_path: Path) -> None:
    root = copy(polypdiag_root, tmp_path)
    split = root / "splits" / "train.txt"
    split.write_text(split.read_text().replace(",1\n", ",3\n", 1))
    with pytest.raises(DatasetError, match=r"train.txt:\d+: label 3"):
        classify_datasets(ClassifyDataConfig(root=str(root)))


def test_cvc_missing_folder_and_mask_size(cvc_root: Path, tmp_path: Path) -> None:
    root = copy(cvc_root, tmp_path)
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(root / "Ground Truth" / "1.tif")
    train, *_ = segment_datasets(SegmentDataConfig(root=str(root), clip_length=4, size=32), select_on_test=True)
    index = next(i for i, (_, frames) in enumerate(train.samples) if 1 in frames)
    with pytest.raises(DatasetError, match=r"1.tif: mask size"):
        train[index]
    shutil.rmtree(root / "Ground Truth")
    with pytest.raises(DatasetError, match="Ground Truth is missing"):
        segment_datasets(SegmentDataConfig(root=str(root)))


def test_kumc_xml_without_boxes_and_missing_layout(kumc_root: Path, tmp_path: Path) -> None:
    root = copy(kumc_root, tmp_path)
    xml = sorted((root / "train2019" / "Annotation").rglob("*.xml"))[0]
    text = xml.read_text()
    if "<bndbox>" not in text:
        text = text.replace("</size>", "</size><object><name>adenomatous</name></object>")
    else:
        start, end = text.index("<bndbox>"), text.index("</bndbox>") + len("</bndbox>")
        text = text[:start] + text[end:]
    xml.write_text(text)
    train, *_ = detect_datasets(DetectDataConfig(root=str(root), short_side=32, max_size=48))
    index = next(i for i, sample in enumerate(train.samples) if sample[2] == xml)
    with pytest.raises(DatasetError, match=xml.name):
        train[index]
    shutil.rmtree(root / "val2019")
    with pytest.raises(DatasetError, match="val2019/Image is missing"):
        detect_datasets(DetectDataConfig(root=str(root)))


def test_predict_unreadable_video_leaves_nothing(tmp_path: Path) -> None:
    model = tmp_path / "model"
    save_pretrained(model, build_model("endofm_vit_micro"), metadata={"task": "classify"})
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="task_head.safetensors is missing"):
        predict_video(bad, model, out)
    plain = tmp_path / "plain"
    save_pretrained(plain, build_model("endofm_vit_micro"))
    with pytest.raises(CheckpointError, match="not a fine-tuned model"):
        predict_video(bad, plain, out)
    assert not out.exists() or not list(out.iterdir())


def test_predict_unreadable_video(polypdiag_root: Path, tmp_path: Path) -> None:
    from endofm.models.heads import LinearClassifier
    from endofm.tasks.folder import save_task_folder

    backbone = build_model("endofm_vit_micro")
    model = save_task_folder(tmp_path / "model", "classify", backbone, LinearClassifier(backbone.embed_dim, 2),
                           {"in_dim": backbone.embed_dim, "num_labels": 2},
                           {"num_frames": 4, "size": 32, "normalization": "polypdiag", "classes": ["normal", "polyp"]})
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    out = tmp_path / "out"
    with pytest.raises(VideoError, match="broken.mp4"):
        predict_video(bad, model, out)
    assert not (out / "predictions.json").exists() and not (out / "annotated.mp4").exists()


def test_library_calls_refuse_an_earlier_result(tmp_path: Path) -> None:
    from endofm.demo import DemoConfig, run_demo

    out = tmp_path / "pred"
    out.mkdir()
    (out / "predictions.json").write_text("{}")
    with pytest.raises(InputError, match="already holds a result .*predictions.json.*--overwrite"):
        predict_video(tmp_path / "case.mp4", tmp_path / "model", out)
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "report.md").write_text("an earlier demo")
    with pytest.raises(InputError, match="already holds a result"):
        run_demo(DemoConfig(out_dir=str(demo)))
    assert (out / "predictions.json").read_text() == "{}" and (demo / "report.md").read_text() == "an earlier demo"
