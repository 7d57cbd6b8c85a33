"""``endofm pretrain``: self-supervised pretraining with a YAML recipe and ``key=value`` overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

from endofm.cli.options import add_run_tail


def _pretrain(args: argparse.Namespace) -> int:
    from endofm.config import load_config
    from endofm.engine.distributed import shutdown
    from endofm.errors import InputError, TrainingError
    from endofm.pretrain import PretrainConfig, pretrain

    overrides = [*args.overrides, *(["run.progress=false"] if args.quiet else [])]
    config = load_config(PretrainConfig, args.config, overrides, kind="pretrain")
    out_dir = Path(config.run.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"run.out_dir={out_dir} is a file; expected a run folder")
    if not args.resume and (out_dir / "checkpoints" / "last.pt").exists():  # before any data is read
        raise TrainingError(f"{out_dir} already holds a run: pass --resume to continue it, or another run.out_dir")
    saved = out_dir / "config.yaml"
    if args.resume and saved.is_file():
        config = load_config(PretrainConfig, saved, overrides)
    try:
        summary = pretrain(config, resume=args.resume)
    finally:
        shutdown()
    if summary.get("exports"):
        print(f"run folder: {config.run.out_dir}")
        for name, path in summary["exports"].items():
            print(f"  {name}: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pretrain``."""
    parser = subparsers.add_parser(
        "pretrain", help="self-supervised pretraining (Endo-FM recipe); torchrun for several GPUs/nodes",
        description="Pretrain a backbone on your videos. Examples:\n"
                    "  endofm pretrain --config cpu_tiny data.manifest=videos/\n"
                    "  torchrun --nproc_per_node 4 -m endofm pretrain --config endofm_vit_base "
                    "data.manifest=manifest.csv\n"
                    "The run folder (run.out_dir) gets config.yaml, log.jsonl, checkpoints/, plots/ and the teacher "
                    "in the endofm format (teacher/) and the original layout (teacher_endo_fm.pth).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="a YAML file or the name of a shipped recipe: "
                        "cpu_micro, cpu_tiny, endofm_vit_base (default: the built-in defaults, ViT-B)")
    add_run_tail(parser, "continue the run in run.out_dir from its last.pt, with the run's saved config.yaml "
                         "(from the beginning if it stopped before its first checkpoint)")
    parser.set_defaults(func=_pretrain)
