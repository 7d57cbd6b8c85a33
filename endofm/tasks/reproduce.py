"""``endofm reproduce``: the paper's table of downstream results, re-run.

Given a folder holding the three datasets in their original layouts (the sub-folders ``endofm data synth``
writes, ``polypdiag``/``cvc``/``kumc``, or the original names) and a pretrained checkpoint, :func:`reproduce`
fine-tunes each task with its original protocol (the ``<task>_original`` recipe; a task without one uses its
default recipe, and the table says so), or with ``evaluate_only`` evaluates released fine-tuned models, and
writes ``reproduce.md`` and ``reproduce.json``: our figures beside the paper's and the released models', with
the protocol of each (selection on the test split or on a validation split) and the model each task used.

Each protocol runs through the library (the task's :attr:`~endofm.tasks.base.Task.finetune`, or
:func:`~endofm.tasks.loading.evaluate_finetuned`); a protocol that fails with an :class:`~endofm.errors.EndoFMError`
(or a file it cannot read or write) gets its row's note, ``failed: <the error>``, and the others still run.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endofm.config import config_to_dict, find_recipe, load_config
from endofm.errors import ConfigError, DatasetError, EndoFMError, InputError
from endofm.io import atomic_write_text, claim_output
from endofm.tasks.loading import evaluate_finetuned, load_finetuned
from endofm.tasks.registry import TASKS
from endofm.tasks.results import json_safe

QUICK = ["run.epochs=1", "run.epoch_steps=2", "run.num_workers=0", "run.progress=false"]
"""What ``quick`` adds to every protocol: one epoch of two steps (the full evaluation still runs)."""


@dataclass
class TaskResult:
    """One row of the table."""

    task: str
    recipe: str
    model: str
    protocol: str
    split: str
    value: float | None
    note: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    """With several runs: each run's ``run.seed``, and ``values`` its figure (``value`` is their mean)."""
    values: list[float | None] = field(default_factory=list)

    @property
    def std(self) -> float | None:
        """Sample standard deviation of ``values`` (two runs or more, all with a figure)."""
        if len(self.values) < 2 or any(v is None for v in self.values):
            return None
        return round(statistics.stdev(self.values), 2)  # type: ignore[arg-type]


def find_dataset(root: Path, task: str) -> Path | None:
    """The task's dataset folder under ``root`` (its :attr:`~endofm.tasks.base.Task.dataset_folders`), or
    ``None``."""
    for name in TASKS[task].dataset_folders:
        if (root / name).is_dir():
            return root / name
    return None


def recipe_for(task: str) -> tuple[str, str]:
    """(recipe name, note): ``<task>_original`` when it ships, else the task's default with a note."""
    try:
        find_recipe(f"{task}_original", kind="finetune")
    except EndoFMError:
        return task, f"no {task}_original recipe: the default {task} recipe ran"
    return f"{task}_original", ""


def _dataset_overrides(task: str, recipe: str, folder: Path) -> tuple[list[str], str]:
    """Overrides a dataset needs to run a recipe, and the note that says so (the task's rule, if it has one)."""
    rule = TASKS[task].dataset_overrides
    return rule(recipe, folder) if rule is not None else ([], "")


def _percent(value: Any) -> float | None:
    return round(100.0 * float(value), 2) if isinstance(value, (int, float)) else None


def _failed(error: Exception) -> str:
    """A protocol's failure, as the table's note."""
    return f"failed: {error}"


def _finetune(task: str, recipe: str, data: Path, checkpoint: str, out: Path, device: str, quick: bool,
              overrides: Sequence[str]) -> TaskResult:
    """One run of a protocol through the task's ``finetune``; an error becomes the row's note."""
    record = TASKS[task]
    try:
        config = load_config(record.config_class, recipe, [
            *(QUICK if quick else []), *overrides, f"run.device={device}", f"data.root={data}",
            f"model.init={checkpoint}", f"run.out_dir={out}"], kind="finetune")
        if out.exists() and not out.is_dir():
            raise InputError(f"{out} is a file; expected a run folder")
        report = record.finetune(config)["report"]
    except (EndoFMError, OSError) as error:
        return TaskResult(task, recipe, "", "", "", None, _failed(error))
    if report.get("select_on_test"):
        protocol = "selection on test"
    elif report.get("keep") == "last":
        protocol = "last model, nothing selected"
    else:
        protocol = "selection on validation"
    return TaskResult(task, recipe, record.model_name(config_to_dict(config)), protocol, report["splits"]["test"],
                      _percent(report["test"].get(record.paper.metric)), metrics=report["test"])


EVALUATE_BATCH = 2
"""Samples per forward pass when a released model is evaluated (``endofm evaluate``'s default)."""


def _evaluate(task: str, data: Path, checkpoint: str, out: Path, device: str, num_heads: int | None,
              overwrite: bool, progress: bool) -> TaskResult:
    """A released fine-tuned model evaluated on the task's reported split (``out/metrics.json`` as
    ``endofm evaluate --out`` writes it); an error becomes the row's note."""
    record = TASKS[task]
    split = record.paper.split
    options = {option.dest: option.default for option in record.evaluate_options}
    try:
        metrics_path = claim_output(out / "metrics.json", overwrite)
        model = load_finetuned(checkpoint, num_heads=num_heads)
        if model.task != task:
            raise InputError(f"{checkpoint} is a {model.task} model, not a {task} model")
        metrics = evaluate_finetuned(model, data, split, device, EVALUATE_BATCH, progress=progress, **options)
        report = {"task": task, "checkpoint": checkpoint, "data": str(data), "split": split,
                  "options": {"batch_size": EVALUATE_BATCH, "device": device, "num_heads": num_heads, **options},
                  "metrics": metrics}
        atomic_write_text(metrics_path, json.dumps(json_safe(report), indent=2) + "\n")
    except (EndoFMError, OSError) as error:
        return TaskResult(task, "released fine-tuned model", "", "", split, None, _failed(error))
    return TaskResult(task, "released fine-tuned model", f"{checkpoint} (as saved)", "released model, evaluated",
                      split, _percent(metrics.get(record.paper.metric)), metrics=metrics)


def _repeat(task: str, recipe: str, data: Path, checkpoint: str, out: Path, device: str, quick: bool,
            overrides: Sequence[str], runs: int) -> TaskResult:
    """``runs`` runs of a protocol with seeds 0 .. runs - 1: their mean as the figure, each run's recorded."""
    done = [_finetune(task, recipe, data, checkpoint, out / f"run{seed}", device, quick,
                      [*overrides, f"run.seed={seed}"]) for seed in range(runs)]
    values = [r.value for r in done]
    failed = [f"run {seed}: {r.note}" for seed, r in enumerate(done) if r.value is None]
    mean = None if failed else round(statistics.fmean(values), 2)  # type: ignore[arg-type]
    first = done[0]
    return TaskResult(task, recipe, first.model, first.protocol, first.split, mean, "; ".join(failed),
                      {"runs": [r.metrics for r in done]}, list(range(runs)), values)


def reproduce(data: str | Path, out: str | Path, checkpoint: str | None = None, *, quick: bool = False,
              device: str = "cpu", evaluate_only: Mapping[str, str] | None = None,
              overrides: Mapping[str, Sequence[str]] | None = None, num_heads: int | None = None,
              runs: int = 1, progress: bool = True, overwrite: bool = False) -> list[TaskResult]:
    """Run every task's original protocol (or evaluate released models) and write the table into ``out``.

    Args:
        data: folder holding the datasets (each task's ``dataset_folders``); a task without its folder is
            skipped.
        out: folder for the runs (``out/<task>``), ``reproduce.md`` and ``reproduce.json``.
        checkpoint: the pretrained weights every protocol starts from (``endo_fm.pth``, a run's teacher).
        quick: shorten every protocol to a few steps (a check that the pipeline runs, not a result).
        device: torch device of every run.
        evaluate_only: ``{task: fine-tuned checkpoint}``: evaluate these instead of training them.
        overrides: ``{task: ["key=value", ...]}`` added to that task's recipe.
        num_heads: attention heads of ``checkpoint`` and of the ``evaluate_only`` models when not
            ``embed_dim // 64`` (``model.num_heads``, ``--num-heads``).
        progress: progress bars (``run.progress``).
        overwrite: replace an evaluated model's earlier ``metrics.json`` (a task's earlier run folder is
            refused by its fine-tuning whatever this says).
        runs: independent runs per trained task (``out/<task>/run<i>``, ``run.seed=i``), reported as mean ± std
            (the paper's figures are the mean ± std of 3 runs); 1: one run with the recipe's own seed.
    """
    if runs < 1:
        raise InputError(f"--runs must be at least 1, got {runs}")
    root, out = Path(data), Path(out)
    evaluate_only, overrides = dict(evaluate_only or {}), dict(overrides or {})
    unknown = sorted((set(evaluate_only) | set(overrides)) - set(TASKS))
    if unknown:
        raise InputError(f"unknown tasks {unknown}; the tasks are {', '.join(TASKS)}")
    if not root.is_dir():
        raise DatasetError(f"--data {root} is not a folder")
    folders = {task: find_dataset(root, task) for task in TASKS}
    if not any(folders.values()):
        raise DatasetError(f"{root} holds none of the datasets: expected one of the folders "
                           + "; ".join(f"{t.name}: {', '.join(t.dataset_folders)}" for t in TASKS.values()))
    to_train = [task for task in TASKS if folders[task] is not None and task not in evaluate_only]
    if checkpoint is None and to_train:
        raise ConfigError(f"give --checkpoint (pretrained weights to fine-tune {', '.join(to_train)} from) or "
                          "--evaluate-only for those tasks")
    if checkpoint is not None and not Path(checkpoint).exists():
        raise InputError(f"--checkpoint {checkpoint} does not exist")
    results = []
    for task in TASKS:
        folder = folders[task]
        if folder is None:
            names = " / ".join(TASKS[task].dataset_folders)
            results.append(TaskResult(task, "", "", "", "", None, f"skipped: no {names} folder under {root}"))
            continue
        if task in evaluate_only:
            results.append(_evaluate(task, folder, evaluate_only[task], out / task, device, num_heads, overwrite,
                                   progress))
            continue
        recipe, note = recipe_for(task)
        needed, data_note = _dataset_overrides(task, recipe, folder)
        extra = [*([f"model.num_heads={num_heads}"] if num_heads else []),
                 *([] if progress else ["run.progress=false"]), *needed, *overrides.get(task, ())]
        if runs == 1:
            result = _finetune(task, recipe, folder, str(checkpoint), out / task, device, quick, extra)
        else:
            result = _repeat(task, recipe, folder, str(checkpoint), out / task, device, quick, extra, runs)
        notes = (result.note, note, data_note,
                 "quick: a few steps, not a result" if quick and result.value is not None else "")
        result.note = "; ".join(part for part in notes if part)
        results.append(result)
    write_table(results, out, quick)
    return results


def write_table(results: Sequence[TaskResult], out: Path, quick: bool = False) -> tuple[Path, Path]:
    """``reproduce.md`` and ``reproduce.json`` in ``out``: each task's figure beside the paper's and the
    released models', with its protocol."""
    rows = []
    for result in results:
        paper = TASKS[result.task].paper
        rows.append({"task": result.task, "metric": f"{paper.label} ({paper.metric}, %)", "ours": result.value,
                     "paper": paper.paper, "released": paper.released, "protocol": result.protocol,
                     "split": result.split, "recipe": result.recipe, "model": result.model, "note": result.note,
                     "metrics": result.metrics, "runs": len(result.values) or 1, "seeds": result.seeds,
                     "values": result.values, "std": result.std})
    report = {"quick": quick, "paper_protocol": "selection on test (the original code picks the best epoch on the "
                                                "split it reports)",
              "released_protocol": "the released fine-tuned models, as the original README reports them",
              "rows": rows}
    json_path = atomic_write_text(out / "reproduce.json", json.dumps(json_safe(report), indent=2) + "\n")
    lines = ["# Endo-FM downstream results, reproduced", ""]
    if quick:
        lines += ["**Quick run**: every protocol was cut to a few steps; the figures check that the pipeline "
                  "runs and are not results.", ""]
    lines += ["| task | metric | ours | our protocol | paper (selection on test) | released models | recipe | "
              "model | note |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ours = "-" if row["ours"] is None else f"{row['ours']:.1f}"
        if row["std"] is not None:
            ours = f"{row['ours']:.1f} ± {row['std']:.1f} ({row['runs']} runs)"
        protocol = f"{row['protocol']} (tested on {row['split']})" if row["split"] else row["protocol"]
        lines.append(f"| {TASKS[row['task']].title} | {row['metric']} | {ours} | {protocol} | {row['paper']} | "
                     f"{row['released']} | {row['recipe']} | {row['model']} | {row['note']} |")
    lines += ["", "The paper's figures pick the best epoch on the split they report (the original code's "
              "protocol); a figure selected on a validation split is an honest estimate and is expected to be "
              "lower. The paper's figures are the mean ± std of 3 runs; with --runs N ours are too (seeds 0 .. "
              "N-1, in reproduce.json). The released models' figures are the original README's.", ""]
    md_path = atomic_write_text(out / "reproduce.md", "\n".join(lines))
    return md_path, json_path
