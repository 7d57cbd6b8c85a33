"""The ``endofm`` command: a thin layer that parses arguments, calls the library and prints.

Each command group lives in its own module of :mod:`endofm.cli` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed namespace, returns an exit code).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from endofm.errors import EndoFMError

COMMAND_MODULES = ("demo", "models", "data", "pretrain", "evaluate", "visualize", "finetune", "predict",
                   "reproduce", "stream", "export")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every command group registered."""
    import importlib

    parser = _Parser(
        prog="endofm",
        description="Foundation models for endoscopy video: Endo-FM backbone, checkpoints, data, training.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"endofm.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    from endofm.engine.cpu import apply_cpu_settings

    apply_cpu_settings()
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # KEY=VALUE overrides written after an option (``--resume run.epochs=5``) join the others
            if not hasattr(args, "overrides") or any("=" not in item or item.startswith("-") for item in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.overrides = [*args.overrides, *extra]
    except SystemExit as exit:  # --help, or a bad argument (already printed): a status, also when called in-process
        return exit.code if isinstance(exit.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EndoFMError as error:
        print(f"endofm: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a file the command could not read or write: its name and the reason
        print(f"endofm: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = "; run the same command with --resume to continue" if hasattr(args, "resume") else ""
        print(f"endofm: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
