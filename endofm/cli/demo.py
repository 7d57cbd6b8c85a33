"""``endofm demo``: the main job on the embedded synthetic endoscopy corpus, ending in a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from endofm.cli.options import add_overwrite, add_quiet, device


def _demo(args: argparse.Namespace) -> int:
    from endofm.demo import DemoConfig, format_table, quick_config, run_demo
    from endofm.io import claim_output

    if args.out is None:
        args.out = _free_folder(DEFAULT_OUT)
        if args.out != DEFAULT_OUT:
            print(f"{DEFAULT_OUT} holds an earlier demo: writing to {args.out}")
    claim_output(args.out, args.overwrite, folder=True)
    common = {"out_dir": args.out, "overwrite": args.overwrite, "seed": args.seed, "device": args.device,
              "original_models": args.original_models,
              "progress": not args.quiet}
    config = quick_config(**common) if args.quick else DemoConfig(**common)
    results = run_demo(config)
    print()
    print(format_table(results))
    print(f"\nreport: {args.out}/report.html and {args.out}/report.md; total {results['total_seconds']:.0f} s")
    return 0


DEFAULT_OUT = "runs/demo"


def _free_folder(base: str) -> str:
    """``base``, or ``base-2``, ``base-3``, ... : the first that does not exist or is empty (an earlier demo is
    kept, never replaced)."""
    candidate, number = base, 1
    while Path(candidate).exists() and (not Path(candidate).is_dir() or any(Path(candidate).iterdir())):
        number += 1
        candidate = f"{base}-{number}"
    return candidate


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    demo = subparsers.add_parser(
        "demo", help="synthetic corpus -> pretraining -> frozen probes, fine-tuning, predict, attention -> report")
    demo.add_argument("--out", default=None, help=f"run folder (default: {DEFAULT_OUT}, or {DEFAULT_OUT}-2, -3, ... "
                      "when it holds an earlier demo; a given folder is refused if it holds anything, unless "
                      "--overwrite)")
    demo.add_argument("--quick", action="store_true", help="a first look in under a minute (fewer videos and steps)")
    demo.add_argument("--original-models", action="store_true",
                      help="fine-tune the original's TransUNet and STFT (small CPU recipes) instead of the lighter "
                           "decoder and FCOS detector (slower)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the corpus and the models")
    demo.add_argument("--device", type=device, default="cpu", help="torch device")
    add_overwrite(demo)
    add_quiet(demo)
    demo.set_defaults(func=_demo)
