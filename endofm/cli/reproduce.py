"""``endofm reproduce``: every task's original downstream protocol in one command, and the paper's table."""

from __future__ import annotations

import argparse

from endofm.cli.options import add_num_heads, add_overwrite, add_quiet, device


def _pairs(values: list[str], flag: str) -> dict[str, list[str]]:
    from endofm.errors import InputError

    found: dict[str, list[str]] = {}
    for value in values:
        task, sep, rest = value.partition(":" if flag == "--set" else "=")
        if not sep or not rest:
            form = "TASK:KEY=VALUE" if flag == "--set" else "TASK=CHECKPOINT"
            raise InputError(f"{flag} takes {form}, got {value!r}")
        found.setdefault(task, []).append(rest)
    return found


def _reproduce(args: argparse.Namespace) -> int:
    from endofm.engine.distributed import shutdown
    from endofm.errors import InputError
    from endofm.io import claim_output
    from endofm.tasks.reproduce import reproduce

    released = _pairs(args.evaluate_only or [], "--evaluate-only")
    several = [task for task, paths in released.items() if len(paths) > 1]
    if several:
        raise InputError(f"--evaluate-only names {several} more than once")
    claim_output(args.out, args.overwrite, folder=True)
    try:
        results = reproduce(args.data, args.out, args.checkpoint, quick=args.quick, device=args.device,
                            evaluate_only={task: paths[0] for task, paths in released.items()},
                            overrides=_pairs(args.set or [], "--set"), num_heads=args.num_heads,
                            runs=args.runs, progress=not args.quiet, overwrite=args.overwrite)
    finally:
        shutdown()
    print(f"\n{args.out}/reproduce.md, {args.out}/reproduce.json:")
    for result in results:
        value = "-" if result.value is None else f"{result.value:.1f}"
        if result.std is not None:
            value += f" ± {result.std:.1f} ({len(result.values)} runs)"
        print(f"  {result.task}: {value} ({result.protocol or result.note}; {result.model or 'not run'})")
    return 1 if any(result.note.startswith("failed") for result in results) else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``reproduce``."""
    from endofm.tasks.registry import TASKS

    paper = " / ".join(f"{task.paper.paper}" for task in TASKS.values())
    released = " / ".join(f"{task.paper.released}" for task in TASKS.values())
    example = " ".join(f"{task.name}={task.released_file}" for task in TASKS.values() if task.released_file)
    parser = subparsers.add_parser(
        "reproduce", help="run the original protocol of every task (" + ", ".join(
            task.title for task in TASKS.values()) + ") and write the paper's table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a pretrained checkpoint on the downstream tasks with the original protocols "
                    "(the *_original recipes; a task without one uses its default recipe, and the table says "
                    f"so) and write DIR/reproduce.md and DIR/reproduce.json: our figures beside the paper's "
                    f"({paper}) and the released models' ({released}), each with its protocol.\n"
                    "  endofm reproduce --data datasets/ --checkpoint checkpoints/endo_fm.pth --out runs/paper "
                    "--device cuda\n"
                    f"  endofm reproduce --data datasets/ --out runs/released --evaluate-only {example}")
    folders = ", ".join(f"{task.dataset_folders[0]}/" for task in TASKS.values())
    originals = ", ".join(f"{task.dataset_folders[1]}/" for task in TASKS.values() if len(task.dataset_folders) > 1)
    parser.add_argument("--data", required=True, help=f"folder holding {folders} (the names of `endofm data "
                        f"synth`) or {originals} in their original layouts")
    parser.add_argument("--checkpoint", default=None, help="pretrained weights to fine-tune from (endo_fm.pth, "
                        "a run's teacher/ or teacher_endo_fm.pth)")
    add_num_heads(parser)
    parser.add_argument("--out", required=True, help="output folder (a run folder per task and the table)")
    add_overwrite(parser)
    add_quiet(parser)
    parser.add_argument("--quick", action="store_true", help="a few steps per protocol: checks that everything "
                        "runs; the figures are not results")
    parser.add_argument("--runs", type=int, default=1, help="independent runs per task (seeds 0 .. N-1), "
                        "reported as mean ± std as the paper's (3 runs); default 1, the recipe's seed")
    parser.add_argument("--device", type=device, default="cpu",
                        help="torch device of every run (default cpu; e.g. cuda)")
    parser.add_argument("--evaluate-only", nargs="+", metavar="TASK=CHECKPOINT", default=None,
                        help="evaluate released fine-tuned models instead of training those tasks")
    parser.add_argument("--set", action="append", metavar="TASK:KEY=VALUE", default=None,
                        help="override a task's recipe, e.g. --set classify:run.batch_size=8 (repeatable)")
    parser.set_defaults(func=_reproduce)
