"""The synthetic endoscopy generator and its three dataset layouts."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from endofm.data.datasets.kumc import POLYP_CLASSES
from endofm.data.encoding import write_video
from endofm.data.synthetic import mask_to_box, render_video, write_cvc, write_kumc, write_polypdiag
from endofm.data.video import VideoReader
from endofm.errors import InputError
from endofm.tasks.corpus import write_synthetic_corpus


def _same_layout(x: Path, y: Path) -> bool:
    """The same files, byte for byte."""
    files = sorted(p.relative_to(x) for p in x.rglob("*") if p.is_file())
    if files != sorted(p.relative_to(y) for p in y.rglob("*") if p.is_file()):
        return False
    return all((x / f).read_bytes() == (y / f).read_bytes() for f in files)


def test_the_same_seed_writes_the_same_bytes_in_separate_processes(tmp_path):
    """x264's default rate control encodes the same frames differently from one process to the next; the
    corpus must not."""
    script = ("import sys; from endofm.data.synthetic import write_polypdiag; "
              "write_polypdiag(sys.argv[1], 8, seed=5, num_frames=8, size=64, always_visible=True)")
    roots = [tmp_path / f"run{i}" for i in range(2)]
    for root in roots:
        subprocess.run([sys.executable, "-c", script, str(root)], check=True)
    assert all(_same_layout(roots[0], root) for root in roots[1:])


def test_render_shapes_types_and_box_equals_mask_extent():
    video = render_video(3, num_frames=6, size=(32, 48), polyp=True)
    assert video.frames.shape == (6, 32, 48, 3) and video.frames.dtype == np.uint8
    assert video.masks.shape == (6, 32, 48) and video.masks.dtype == bool
    assert video.label == 1 and video.polyp_class in POLYP_CLASSES
    for mask, box in zip(video.masks, video.boxes, strict=True):
        if box is None:
            assert not mask.any()
            continue
        x1, y1, x2, y2 = box
        assert mask[y1:y2, x1:x2].sum() == mask.sum()
        assert mask[y1, x1:x2].any() and mask[y2 - 1, x1:x2].any()
        assert mask[y1:y2, x1].any() and mask[y1:y2, x2 - 1].any()
    assert sum(box is not None for box in video.boxes) >= 4


def test_render_is_deterministic_by_seed():
    a, b = render_video(7, 4, 32), render_video(7, 4, 32)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.boxes == b.boxes
    assert not np.array_equal(a.frames, render_video(8, 4, 32).frames)


def test_negative_videos_have_no_polyp_and_polyp_differs_locally():
    neg = render_video(5, 4, 48, polyp=False)
    assert neg.label == 0 and neg.polyp_class is None
    assert not neg.masks.any() and all(box is None for box in neg.boxes)
    pos = render_video(5, 4, 48, polyp=True, polyp_class="adenomatous", always_visible=True)
    assert pos.masks.all(axis=(1, 2)).sum() == 0 and pos.masks.any(axis=(1, 2)).all()
    frame, mask = pos.frames[-1].astype(float), pos.masks[-1]
    assert np.abs(frame[mask].mean(0) - frame[~mask].mean(0)).max() > 15


def test_mask_to_box_and_bad_sizes():
    mask = np.zeros((10, 12), bool)
    assert mask_to_box(mask) is None
    mask[2:5, 3:9] = True
    assert mask_to_box(mask) == (3, 2, 9, 5)
    with pytest.raises(InputError, match="even"):
        render_video(0, 2, 33)
    with pytest.raises(InputError, match="polyp_class"):
        render_video(0, 2, 32, polyp_class="sessile")


def test_write_video_decodes_to_written_frames(tmp_path):
    video = render_video(1, 9, (32, 48))
    path = write_video(tmp_path / "v.mp4", video.frames, fps=30)
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (32, 48, 3)
    # Lossy but close: the codec keeps the picture.
    assert np.abs(np.stack(frames).astype(int) - video.frames).mean() < 12
    assert not list(tmp_path.glob(".*tmp"))


def test_polypdiag_layout_is_balanced_and_deterministic(tmp_path):
    a = write_polypdiag(tmp_path / "a", num_videos=10, seed=4, num_frames=4, size=32)
    b = write_polypdiag(tmp_path / "b", num_videos=10, seed=4, num_frames=4, size=32)
    c = write_polypdiag(tmp_path / "c", num_videos=10, seed=5, num_frames=4, size=32)
    assert _same_layout(a, b)
    assert not _same_layout(a, c)
    lines = {s: (a / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    all_lines = [line for split in lines.values() for line in split]
    assert len(all_lines) == len(set(all_lines)) == 10
    assert sorted(int(line.split(",")[1]) for line in all_lines) == [0] * 5 + [1] * 5
    for split in lines.values():
        assert {line.split(",")[1] for line in split} == {"0", "1"}
    for line in all_lines:
        assert (a / "videos" / line.split(",")[0]).is_file()


def test_cvc_layout(tmp_path):
    root = write_cvc(tmp_path, num_sequences=4, seed=0, length_range=(2, 4), size=32)
    seqs = [line.split() for line in (root / "videolist.txt").read_text().splitlines()]
    assert [int(s[1]) for s in seqs][0] == 1 and all(s[3] == "-1" for s in seqs)
    total = sum(int(s[2]) for s in seqs)
    assert sorted(int(p.stem) for p in (root / "Original").glob("*.tif")) == list(range(1, total + 1))
    mask = np.asarray(Image.open(root / "Ground Truth" / f"{total}.tif"))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    train = (root / "splits" / "train.txt").read_text().splitlines()
    test = (root / "splits" / "test.txt").read_text().splitlines()
    assert train and test and not set(train) & set(test) and len(train) + len(test) == 4


def test_kumc_layout_voc_xml(tmp_path):
    root = write_kumc(tmp_path, num_videos=3, seed=0, num_frames=3, size=32)
    for split in ("train", "val", "test"):
        videos = list((root / f"{split}2019" / "Image").iterdir())
        assert len(videos) == 1
        assert sorted(p.name for p in videos[0].iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
        xml = root / f"{split}2019" / "Annotation" / videos[0].name / "1.xml"
        tree = ET.parse(xml).getroot()
        assert tree.findtext("size/width") == "32"
        for obj in tree.findall("object"):
            assert obj.findtext("name") in POLYP_CLASSES
            x1, y1, x2, y2 = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 32


def test_synthetic_corpus_writes_all_layouts(tmp_path):
    out = write_synthetic_corpus(tmp_path / "corpus", num_videos=2, seed=0, pretrain_videos=3, pretrain_frames=4,
                                 pretrain_size=32)
    clips = sorted((out / "pretrain").glob("*.mp4"))
    assert len(clips) == 3 and len(list((out / "polypdiag" / "videos").glob("*.mp4"))) == 2
    with VideoReader(clips[0]) as reader:
        assert (len(reader), reader.info.height, reader.info.width) == (4, 32, 32)
    assert json.loads((out / "corpus.json").read_text())["pretrain"] == {"videos": 3, "frames": 4, "size": [32, 32]}
    assert (out / "polypdiag" / "splits" / "val.txt").is_file()
    assert (out / "cvc" / "videolist.txt").is_file()
    assert (out / "kumc" / "test2019" / "Annotation").is_dir()
    assert (out / "corpus.json").is_file()

