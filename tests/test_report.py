"""The report builder on a hand-made results dict and tiny PNGs."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from endofm.report.report import (
    build_html,
    build_markdown,
    collapse_note,
    finetune_caveats,
    frozen_verdict,
    write_report,
)


def _png(path: Path, colour: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path, format="PNG")
    return str(path)


@pytest.fixture
def results(tmp_path) -> dict:
    figures = {
        "pretraining": [("pretraining loss", "pretrain/plots/loss.png")],
        "classification": [("confusion matrix", "predict/classification.png")],
        "finetuning": [("classify: loss", "finetune/classify/plots/loss.png")],
        "segmentation": [("overlay", "predict/segmentation_overlay.png")],
        "detection": [("boxes", "predict/detection_frames.png")],
        "attention": [("attention grid", "attention/attention_grid.png")],
    }
    for i, items in enumerate(figures.values()):
        for _, rel in items:
            _png(tmp_path / rel, (40 * i, 10, 200))
    probe = {"train_videos": 60, "test_videos": 20}
    return {
        "settings": {"videos": 100, "pretrain_steps": 600},
        "pretrain": {"steps": 600, "loss_first": 6.9, "loss_last": 4.2, "entropy_last": 3.1},
        "frozen": {"pretrained": {"knn_accuracy": 0.6, "linear_probe_accuracy": 0.55, **probe},
                   "random": {"knn_accuracy": 0.7, "linear_probe_accuracy": 0.65, **probe}},
        "finetune": {
            "classify": {"test": {"binary_f1": 0.8, "auroc": 0.9, "samples": 20}, "best_epoch": 3,
                         "protocol": "best epoch chosen on the validation split (val)"},
            "segment": {"test": {"dice": 0.5, "hd95": None}, "best_epoch": 2, "protocol": "validation | held out"},
            "detect": {"test": {"map": 0.1}, "best_epoch": 1, "protocol": "validation"},
        },
        "predict": {"task": "segment", "frames": 32},
        "attention": {"video": "data/v.mp4", "frames": [0, 4]},
        "figures": figures,
        "timings": {"data": 1.0, "pretrain": 2.0},
        "total_seconds": 3.5,
    }


def test_html_is_self_contained_with_a_table_per_section(results, tmp_path):
    page = build_html(results, tmp_path)
    sections = page.count("<h2>")
    tables = page.count("<table>")
    assert tables == 7 and sections == tables
    sources = re.findall(r"<img src='([^']*)'", page)
    assert len(sources) == 6
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.format == "PNG"
    assert "NOT better" in page and "n/a" in page and "3.5" in page
    assert "`" not in page.split("<body>")[1] and "<code>endofm predict</code>" in page


def test_each_figure_sits_beside_its_table(results, tmp_path):
    page = build_html(results, tmp_path)
    section = {title: body for title, body in re.findall(r"<h2>([^<]*)</h2>(.*?)(?=<h2>|</body>)", page, re.S)}
    placed = {"Pretraining": ["pretraining loss"],
              "Fine-tuned tasks (test split)": ["confusion matrix", "classify: loss"],
              "Prediction": ["overlay", "boxes"], "Attention": ["attention grid"]}
    for title, captions in placed.items():
        assert "<table>" in section[title] and section[title].index("<table>") < section[title].index("<img")
        assert [alt for alt in re.findall(r"alt='([^']*)'", section[title])] == captions
    results["figures"]["extra"] = [("an extra figure", "predict/classification.png")]
    assert "<h2>Other figures</h2>" in build_html(results, tmp_path)


def test_markdown_references_existing_files(results, tmp_path):
    text = build_markdown(results)
    paths = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(paths) == 6
    assert all((tmp_path / p).is_file() for p in paths)
    assert "validation \\| held out" in text
    for title in ("Pretraining", "Frozen features", "Fine-tuned tasks", "Timings", "Attention"):
        assert f"## {title}" in text


def test_write_report_writes_both_files(results, tmp_path):
    written = write_report(results, tmp_path)
    assert written["markdown"].read_text().startswith("# Endo-FM demo report")
    assert written["html"].read_text().startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize(("pre", "rnd", "expected"), [
    ((0.8, 0.8), (0.6, 0.6), "scores higher than the random one on both"),
    ((0.5, 0.5), (0.6, 0.6), "NOT better"),
    ((0.7, 0.5), (0.6, 0.6), "not clearly better"),
    ((0.6, 0.6), (0.6, 0.6), "score the same"),
])
def test_the_verdict_follows_the_numbers(pre, rnd, expected):
    def probe(values: tuple[float, float]) -> dict:
        return {"knn_accuracy": values[0], "linear_probe_accuracy": values[1], "test_videos": 10}

    text = frozen_verdict({"pretrained": probe(pre), "random": probe(rnd)})
    assert expected in text and "within noise" in text


def test_the_verdict_needs_every_random_initialisation_beaten():
    def probe(knn: float, linear: float) -> dict:
        return {"knn_accuracy": knn, "linear_probe_accuracy": linear, "test_videos": 10}

    frozen = {"pretrained": probe(0.8, 0.8), "random (seed 0)": probe(0.6, 0.6), "random (seed 1)": probe(0.85, 0.7)}
    assert "not clearly better than each of 2 random initialisations: it is higher on 1 of the 2" in \
        frozen_verdict(frozen)
    frozen["random (seed 1)"] = probe(0.7, 0.7)
    assert "scores higher than each of 2 random initialisations on both" in frozen_verdict(frozen)
    pooled = {"knn_accuracy_max_pool": 0.9, "linear_probe_accuracy_max_pool": 0.6}
    frozen = {name: {**scores, **pooled} for name, scores in frozen.items()}
    frozen["pretrained"]["linear_probe_accuracy_max_pool"] = 0.95
    assert "not clearly better than each of 2 random initialisations: it is higher on 3 of the 4" in \
        frozen_verdict(frozen)


def test_caveats_name_tasks_that_did_not_learn():
    notes = finetune_caveats({"classify": {"test": {"accuracy": 0.5}}, "segment": {"test": {"dice": 0.0}},
                              "detect": {"test": {"box_f1": 0.4}}})
    assert len(notes) == 2 and "chance" in notes[0] and "Dice is 0" in notes[1]


def test_a_collapsed_teacher_is_named():
    assert "collapsed run" in collapse_note({"entropy_last": 6.9, "head_out_dim": 1024})[0]
    assert "not a collapse" in collapse_note({"entropy_last": 6.9, "head_out_dim": 1024, "centering": "sinkhorn"})[0]
    assert not collapse_note({"entropy_last": 3.0, "head_out_dim": 1024})
    assert not collapse_note({"entropy_last": None})


PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.setAttribute("data-probe", `images=${images.length} loaded=${loaded} ` +
    `tables=${document.querySelectorAll("table").length}`);
});
</script>"""


def _chromium() -> str:
    """The system Chromium (Debian's package ``chromium``, which ``.ci/run`` installs); else skip."""
    import shutil

    return shutil.which("chromium") or pytest.skip(
        "chromium is not installed (Debian's package `chromium`; .ci/run installs it under CI)")


@pytest.mark.slow
def test_report_renders_in_a_real_browser(results, tmp_path):
    import subprocess

    chromium = _chromium()
    paths = write_report(results, tmp_path)
    html = Path(paths["html"]).read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
               probe.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-probe="images=(\d+) loaded=(\d+) tables=(\d+)"', dom)
    assert found, f"the page did not finish loading in Chromium: {dom[:300]!r}"
    images, loaded, tables = map(int, found.groups())
    expected_images = sum(len(items) for items in results["figures"].values())
    assert images == loaded == expected_images
    assert tables >= 5


def test_classification_and_segmentation_figures(tmp_path):
    from endofm.report.figures import (
        classification_figure,
        precision_recall_points,
        roc_points,
        segmentation_figure,
    )

    labels, scores = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.4, 0.1])
    fpr, tpr = roc_points(labels, scores)
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    recall, precision = precision_recall_points(labels, scores)
    assert recall.tolist() == [0.5, 0.5, 1, 1] and precision.tolist() == [1, 0.5, 2 / 3, 0.5]
    probabilities = np.stack([1 - scores, scores], axis=1)
    with Image.open(classification_figure(labels, probabilities, ["normal", "polyp"], tmp_path / "c.png")) as image:
        assert image.width > 2 * image.height  # matrix, ROC and precision-recall side by side
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((2, 16, 16), dtype=np.uint8)
    with Image.open(segmentation_figure(frames, masks, masks, [0, 5], tmp_path / "s.png")) as image:
        assert image.height > image.width  # rows: frame, prediction, ground truth
