"""Options shared by the subcommands, so that one concept has one name and one meaning everywhere."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (a count of frames, heads, samples...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def device(text: str) -> str:
    """An argparse type: a torch device this machine has (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    from endofm.engine.distributed import resolve_device
    from endofm.errors import InputError

    try:
        resolve_device(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_overwrite(parser: argparse.ArgumentParser, what: str = "--out") -> None:
    """``--overwrite``: replace an earlier result at ``what`` (refused otherwise)."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an earlier result at {what} (without it, an existing result is refused)")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bars (``run.progress=false`` for training runs); ``--no-progress`` is a hidden
    alias."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def add_run_tail(parser: argparse.ArgumentParser, resume_help: str) -> None:
    """What every training command ends with: ``--resume``, ``--quiet`` and the ``KEY=VALUE`` overrides."""
    parser.add_argument("--resume", action="store_true", help=resume_help)
    add_quiet(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. run.epochs=5")


def add_num_heads(parser: argparse.ArgumentParser) -> None:
    """``--num-heads``: attention heads of a checkpoint that does not store them (the original's ``.pth``)."""
    parser.add_argument("--num-heads", type=positive_int, default=None,
                        help="attention heads of an original .pth, which does not store them (default: embed dim "
                             "/ 64); a folder stores them, and a different value is refused")


def add_which(parser: argparse.ArgumentParser) -> None:
    """``--which``: the network of a full pretraining checkpoint."""
    parser.add_argument("--which", choices=("teacher", "student"), default="teacher",
                        help="network of a full pretraining checkpoint (default: teacher)")
