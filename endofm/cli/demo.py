"""``endofm demo``: the main job on the embedded synthetic endoscopy corpus."""

from __future__ import annotations

import argparse
import time


def _demo(args: argparse.Namespace) -> int:
    from endofm.demo import DemoConfig, format_table, run_demo

    videos = 24 if args.quick else args.videos
    config = DemoConfig(out_dir=args.out, videos=videos, seed=args.seed, checkpoint=args.checkpoint,
                        device=args.device)
    started = time.perf_counter()
    results = run_demo(config)
    print()
    print(format_table(results))
    print(f"\nrun folder: {args.out} (config.yaml, results.json, features.npz); "
          f"total {time.perf_counter() - started:.0f} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    demo = subparsers.add_parser(
        "demo", help="synthetic endoscopy corpus -> Endo-FM embeddings -> k-NN table (the main job)")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    demo.add_argument("--videos", type=int, default=40, help="synthetic videos to generate (default: 40)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the corpus and the model")
    demo.add_argument("--checkpoint", default=None, help="embed with this checkpoint instead of random weights")
    demo.add_argument("--device", default="cpu", help="torch device")
    demo.add_argument("--quick", action="store_true", help="a first look: 24 videos")
    demo.set_defaults(func=_demo)
