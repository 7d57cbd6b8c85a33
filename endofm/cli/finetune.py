"""``endofm finetune TASK``: fine-tune a backbone on a downstream task (one sub-command per task of
:data:`~endofm.tasks.registry.TASKS`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from endofm.cli.options import add_run_tail, positive_int


def _finetune(args: argparse.Namespace) -> int:
    from endofm.config import load_config
    from endofm.engine.distributed import shutdown
    from endofm.errors import ConfigError, InputError, TrainingError
    from endofm.tasks.registry import TASKS
    from endofm.tasks.results import print_table

    task = TASKS[args.task]
    recipe_task = Path(str(args.config)).stem.split("_")[0]
    if args.config and not Path(args.config).is_file() and recipe_task in TASKS and recipe_task != task.name:
        raise ConfigError(f"--config {args.config}: that is a {recipe_task} recipe; use endofm finetune {recipe_task} "
                          f"--config {args.config}, or a {task.name} recipe")
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.root={args.data}")
    if args.init:
        overrides.append(f"model.init={args.init}")
    if args.out:
        overrides.append(f"run.out_dir={args.out}")
    if args.num_heads:
        overrides.append(f"model.num_heads={args.num_heads}")
    if args.select_on_test:
        overrides.append("selection.select_on_test=true")
    if args.quiet:
        overrides.append("run.progress=false")
    config = load_config(task.config_class, args.config, overrides, kind="finetune")
    out_dir, init = Path(config.run.out_dir), getattr(getattr(config, "model", None), "init", None)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; expected a run folder")
    if not args.resume and (out_dir / "checkpoints" / "last.pt").exists():  # before any data is read
        raise TrainingError(f"{out_dir} already holds a run: pass --resume to continue it, or another --out")
    if init and not str(init).startswith("hf-hub:") and not Path(init).exists():
        raise InputError(f"--init {init} does not exist")
    try:
        summary = task.finetune(config, resume=args.resume)
    finally:
        shutdown()
    exports = summary.get("exports") or {}
    if exports.get("metrics"):
        report = json.loads(Path(exports["metrics"]).read_text())
        print(f"protocol: {report['protocol']}")
        chosen = (f"iteration {report['iteration']}" if "iteration" in report
                  else f"the best epoch ({report['best_epoch']})")
        print_table(f"test metrics ({report['splits']['test']}) of {chosen}:", report["test"])
        print(f"run folder: {config.run.out_dir}")
        for name, path in exports.items():
            print(f"  {name}: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``finetune`` and its task sub-commands."""
    from endofm.tasks.registry import TASKS

    parser = subparsers.add_parser("finetune", help=f"fine-tune on a downstream task ({', '.join(TASKS)})")
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in TASKS.values():
        sub = tasks.add_parser(
            task.name, help=task.help, formatter_class=argparse.RawDescriptionHelpFormatter,
            description=f"{task.help}.\nDefaults are the original hyper-parameters (the shipped recipe "
                        f"{task.name}); --config {task.name}_cpu is a tiny CPU recipe. The best epoch is chosen on a "
                        "validation split kept apart from the test split; the run folder gets config.yaml, "
                        "log.jsonl, checkpoints/, plots/, metrics.json and model/ (for endofm predict).")
        sub.add_argument("--data", default=None, help="dataset root in the original layout (data.root)")
        sub.add_argument("--init", default=None, help="initial weights: any Endo-FM checkpoint (model.init)")
        sub.add_argument("--config", default=None, help="a YAML file or the name of a shipped recipe "
                                                         f"(e.g. {task.name}_cpu; default: built-in defaults)")
        sub.add_argument("--out", default=None, help="run folder (run.out_dir)")
        sub.add_argument("--num-heads", type=positive_int, default=None,
                         help="attention heads of an --init .pth, which does not store them (model.num_heads; "
                              "default: embed dim / 64)")
        sub.add_argument("--select-on-test", action="store_true",
                         help="the original protocol: choose the best epoch on the TEST split (optimistic numbers; "
                              "recorded as such in metrics.json)")
        add_run_tail(sub, "continue the run in run.out_dir from its last.pt (from the beginning if it stopped "
                          "before its first checkpoint)")
        sub.set_defaults(func=_finetune)
