"""The demo's run report: Markdown (PNG files by relative path) and self-contained HTML (PNGs as data URIs).

Both are built from the results dict that :func:`endofm.demo.run_demo` collects; every function here is pure
apart from :func:`write_report`, which writes ``report.md`` and ``report.html`` atomically.

The results dict holds ``settings`` (name -> value), ``timings`` (stage -> seconds), ``total_seconds``,
``pretrain`` (``steps``, ``loss_first``, ``loss_last``, ``entropy_last``), ``frozen`` (``pretrained`` and one
entry per random initialisation, e.g. ``random (seed 0)``: ``knn_accuracy``, ``linear_probe_accuracy``,
optionally the same two of the max-pooled patch tokens (``knn_accuracy_max_pool``,
``linear_probe_accuracy_max_pool``), ``train_videos``, ``test_videos``), ``finetune``
(task -> its ``metrics.json``), ``predict`` (``task``, ``video``, ``summary``), ``attention`` (``video``,
``frames``) and ``figures`` (section -> list of ``[caption, path relative to the run folder]``).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from endofm.io import atomic_write_text

FROZEN_PROBES = {"knn_accuracy": "k-NN accuracy", "linear_probe_accuracy": "linear-probe accuracy",
                 "knn_accuracy_max_pool": "k-NN, max-pooled",
                 "linear_probe_accuracy_max_pool": "linear probe, max-pooled"}
"""Frozen-feature scores the report shows (those present), with their column titles."""
FIGURE_SECTIONS = {
    "pretraining": "Pretraining curves",
    "classification": "Classification on the test split",
    "finetuning": "Fine-tuning curves",
    "segmentation": "Segmentation on a CVC sequence",
    "detection": "Detection frames",
    "attention": "Attention of the pretrained backbone",
}
"""Figure groups of the results' ``figures``, with their titles."""
SECTION_FIGURES = {"Pretraining": ("pretraining",), "Fine-tuned tasks (test split)": ("classification", "finetuning"),
                   "Prediction": ("segmentation", "detection"), "Attention": ("attention",)}
"""The figure groups shown beside each table section (groups no section names follow at the end)."""


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def frozen_verdict(frozen: dict[str, dict[str, Any]]) -> str:
    """One honest sentence comparing the pretrained teacher's frozen features with random ones.

    Every entry but ``pretrained`` is a random initialisation; the teacher is better on a probe only when it
    beats all of them, since random initialisations alone spread by several points."""
    pre = frozen["pretrained"]
    randoms = [v for k, v in frozen.items() if k != "pretrained"]
    n = int(pre.get("test_videos") or 0)
    step = f" (one test video is {1 / n:.3f} of accuracy)" if n else ""
    probes = [key for key in FROZEN_PROBES if key in pre]
    wins = [k for k in probes if all(pre[k] > r[k] for r in randoms)]
    losses = [k for k in probes if all(pre[k] < r[k] for r in randoms)]
    ties = [k for k in probes if all(pre[k] == r[k] for r in randoms)]
    others = "the random one" if len(randoms) == 1 else f"each of {len(randoms)} random initialisations"
    every = "both probes" if len(probes) == 2 else f"all {len(probes)} probes"
    if len(wins) == len(probes):
        verdict = f"The pretrained backbone scores higher than {others} on {every}"
    elif len(losses) == len(probes):
        verdict = f"The pretrained backbone is NOT better than {others}: it scores lower on {every}"
    elif len(ties) == len(probes):
        verdict = f"The pretrained backbone is not better than {others}: {every} score the same"
    else:
        verdict = (f"The pretrained backbone is not clearly better than {others}: it is higher on "
                   f"{len(wins)} of the {len(probes)} probes")
    return (f"{verdict}, on {n} synthetic test videos{step}. With this few test videos and a short pretraining "
            "run, differences of a few videos are within noise; this demo shows the pipeline works, it does not "
            "measure what Endo-FM pretraining is worth on real endoscopy.")


def collapse_note(pretrain: dict[str, Any]) -> list[str]:
    """A sentence when the teacher's output entropy is near its maximum ln K (uniform outputs, a collapse).

    With Sinkhorn-Knopp centring the targets are balanced over the batch by construction, so a high entropy
    there says the targets are soft, not that the run collapsed; the sentence says that instead."""
    entropy, dim = pretrain.get("entropy_last"), pretrain.get("head_out_dim")
    if entropy is None or not dim or entropy < 0.9 * math.log(dim):
        return []
    if pretrain.get("centering") == "sinkhorn":
        return [f"The teacher's targets are soft (entropy {entropy:.2f} of at most ln {dim} = {math.log(dim):.2f}): "
                "Sinkhorn-Knopp centring keeps them spread over the batch, so this is not a collapse, but the "
                "teacher separates the clips only weakly after so short a run."]
    return [f"The teacher's output entropy ({entropy:.2f}) is close to its maximum ln {dim} = {math.log(dim):.2f}: "
            "its outputs are nearly uniform (a collapsed run), so the pretrained features are not expected to be "
            "better than random ones."]


def finetune_caveats(finetune: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences for fine-tuned results that show the model did not learn the task (each task's
    :attr:`~endofm.tasks.base.Task.caveat`)."""
    from endofm.tasks.registry import TASKS

    notes = []
    for task, metrics in finetune.items():
        caveat = TASKS[task].caveat if task in TASKS else None
        note = caveat(metrics.get("test", {})) if caveat is not None else None
        if note:
            notes.append(note)
    return notes


def _tables(results: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """Sections as (title, text, header, rows); the text may quote commands in backticks."""
    sections = []
    settings = results.get("settings", {})
    sections.append(("Settings", "What this run used (synthetic data only; nothing real is involved).",
                     ["setting", "value"], [[k, _fmt(v)] for k, v in settings.items()]))
    pre = results["pretrain"]
    sections.append(("Pretraining", " ".join([
        f"DINO-style self-distillation ({settings.get('pretrain recipe', 'the pretraining recipe')}) for a fixed "
        "step budget. A falling loss only says the student follows the teacher; it is not a quality measure by itself.",
        *collapse_note(pre)]),
                     ["quantity", "value"],
                     [["steps", _fmt(pre.get("steps"))], ["loss (first step)", _fmt(pre.get("loss_first"))],
                      ["loss (last step)", _fmt(pre.get("loss_last"))],
                      ["teacher entropy (last step)", _fmt(pre.get("entropy_last"))]]))
    frozen = results["frozen"]
    shown = [key for key in FROZEN_PROBES if key in frozen["pretrained"]]
    sections.append(("Frozen features: pretrained vs random", frozen_verdict(frozen),
                     ["backbone", *(FROZEN_PROBES[key] for key in shown), "train videos", "test videos"],
                     [["pretrained teacher" if key == "pretrained" else key, *(_fmt(scores[k]) for k in shown),
                       _fmt(scores["train_videos"]), _fmt(scores["test_videos"])] for key, scores in frozen.items()]))
    rows = []
    for task, metrics in results["finetune"].items():
        test = metrics.get("test", {})
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in test.items() if isinstance(v, float) or v is None)
        rows.append([task, shown, _fmt(metrics.get("best_epoch")), metrics.get("protocol", "")])
    sections.append(("Fine-tuned tasks (test split)", " ".join([
        "Fine-tuned from the pretrained teacher with the small shipped *_cpu recipes for a few epochs "
        "on tiny synthetic sets; the numbers show the pipeline runs end to end, not the model's real-world accuracy.",
        *finetune_caveats(results["finetune"])]), ["task", "test metrics", "best epoch", "protocol"], rows))
    pred = results.get("predict", {})
    sections.append(("Prediction", "`endofm predict` with the fine-tuned segmenter on a synthetic CVC test sequence "
                     "(its masks beside the ground truth), and the detector on KUMC test frames.",
                     ["quantity", "value"], [[k, _fmt(v)] for k, v in pred.items()]))
    att = results.get("attention", {})
    sections.append(("Attention", "CLS-to-patch attention of the pretrained backbone's last block (mean over heads), "
                     "one clip.", ["quantity", "value"], [[k, _fmt(v)] for k, v in att.items()]))
    timings = results.get("timings", {})
    rows = [[stage, f"{seconds:.1f}"] for stage, seconds in timings.items()]
    rows.append(["total", f"{results.get('total_seconds', sum(timings.values())):.1f}"])
    sections.append(("Timings", "Wall-clock seconds per stage.", ["stage", "seconds"], rows))
    return sections


def _figures(results: dict[str, Any], keys: tuple[str, ...]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The figure groups ``keys`` that the results hold, as (title, [(caption, path)])."""
    figures = results.get("figures", {})
    return [(FIGURE_SECTIONS.get(key, key), [(c, p) for c, p in figures[key]]) for key in keys if figures.get(key)]


def _sections(results: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[str]], list]]:
    """Table sections, each with the figure groups shown beside it; a last section holds any group left over."""
    tables = _tables(results)
    placed = {key for title, *_ in tables for key in SECTION_FIGURES.get(title, ())}
    sections = [(*table, _figures(results, SECTION_FIGURES.get(table[0], ()))) for table in tables]
    rest = tuple(key for key in (*FIGURE_SECTIONS, *results.get("figures", {})) if key not in placed)
    leftover = _figures(results, tuple(dict.fromkeys(rest)))
    if leftover:
        sections.append(("Other figures", "", [], [], leftover))
    return sections


def build_markdown(results: dict[str, Any]) -> str:
    """The report as Markdown; images are referenced by their paths relative to the run folder."""
    lines = ["# Endo-FM demo report", ""]
    for title, text, header, rows, figures in _sections(results):
        lines += [f"## {title}", "", text, ""]
        if header:
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
            lines.append("")
        for _, items in figures:
            lines += [f"![{caption}]({path})\n\n*{caption}*\n" for caption, path in items]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0 0 1em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f0f0f0}h2{border-bottom:1px solid #ddd;padding-bottom:4px}img{max-width:100%}
code{background:#f3f3f3;padding:0 3px;border-radius:3px}
.pair{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.pair>.tables{flex:1 1 380px;min-width:0}
.pair>.figures{flex:2 1 560px;min-width:0;display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;flex:1 1 100%}figure.small{flex:0 1 calc(50% - 0.5em)}figcaption{color:#555;font-size:90%}
h3{margin:0;font-size:100%;flex:1 1 100%}"""


def data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def html_text(text: str) -> str:
    """Plain text as HTML, with `quoted` commands set as code (never shown as literal backticks)."""
    return "".join(f"<code>{html.escape(part)}</code>" if k % 2 else html.escape(part)
                   for k, part in enumerate(text.split("`")))


def build_html(results: dict[str, Any], run_dir: str | Path) -> str:
    """The report as one self-contained HTML page (images embedded from ``run_dir``), each section's figures
    beside its table."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>Endo-FM demo report</title>",
             f"<style>{CSS}</style></head><body>", "<h1>Endo-FM demo report</h1>"]
    for title, text, header, rows, figures in _sections(results):
        parts += [f"<h2>{esc(title)}</h2>", "<div class='pair'><div class='tables'>"]
        if text:
            parts.append(f"<p>{html_text(text)}</p>")
        if header:
            parts += ["<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
            parts += ["<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows]
            parts.append("</table>")
        parts.append("</div>")
        if figures:
            parts.append("<div class='figures'>")
            for group, items in figures:
                small = " class='small'" if len(items) > 1 else ""
                parts.append(f"<h3>{esc(group)}</h3>")
                parts += [f"<figure{small}><img src='{data_uri(Path(run_dir) / path)}' alt='{esc(caption)}'>"
                          f"<figcaption>{html_text(caption)}</figcaption></figure>" for caption, path in items]
            parts.append("</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(results: dict[str, Any], run_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir`` (atomically); returns their paths."""
    run_dir = Path(run_dir)
    return {"markdown": atomic_write_text(run_dir / "report.md", build_markdown(results)),
            "html": atomic_write_text(run_dir / "report.html", build_html(results, run_dir))}
