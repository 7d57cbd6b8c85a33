"""``endofm data``: scan a video corpus into a manifest, pre-resize videos, write a synthetic corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from endofm.cli.options import add_overwrite, add_quiet, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group and its subcommands."""
    parser = subparsers.add_parser("data", help="video corpora: scan, transcode, synthetic data")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    scan = commands.add_parser("scan", help="list videos and clips of a folder tree in a manifest CSV")
    scan.add_argument("root", type=Path, help="folder to walk for videos and frame folders")
    scan.add_argument("--out", type=Path, required=True,
                      help="manifest CSV to write (a manifest is updated on rerun; another file is refused unless "
                           "--overwrite)")
    scan.add_argument(
        "--clip-seconds",
        type=float,
        default=5.0,
        help="clip length in seconds (default 5); 0 gives one row per video",
    )
    add_overwrite(scan)
    add_quiet(scan)
    scan.set_defaults(func=_scan)

    transcode = commands.add_parser(
        "transcode", help="re-encode videos for training: smaller short side, encoded for random reads")
    transcode.add_argument("src", type=Path, help="folder of source videos")
    transcode.add_argument("out", type=Path, help="folder for the re-encoded videos (same tree; a video newer than "
                                                  "its source is kept, so a rerun continues)")
    transcode.add_argument("--short-side", type=positive_int, default=256,
                           help="short side in pixels (default 256)")
    add_quiet(transcode)
    transcode.set_defaults(func=_transcode)

    synth = commands.add_parser(
        "synth", help="write a synthetic endoscopy corpus (pretraining clips and every task's dataset layout)")
    synth.add_argument("out", type=Path, help="output folder (refused if it holds anything, unless --overwrite)")
    synth.add_argument("--videos", type=positive_int, default=100, help="number of videos (default 100)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--pretrain-clips", type=positive_int, default=None,
                       help="unlabelled pretraining clips in pretrain/ (default: --videos)")
    synth.add_argument("--pretrain-frames", type=positive_int, default=32,
                       help="frames per pretraining clip (default 32)")
    synth.add_argument("--pretrain-size", type=positive_int, default=128,
                       help="side of the square pretraining frames in pixels, even (default 128)")
    add_overwrite(synth, "OUT")
    synth.set_defaults(func=_synth)


def _updatable_manifest(path: Path) -> bool:
    """A manifest of an earlier scan, which a scan updates (reading only the videos that changed)."""
    from endofm.data.manifest import is_manifest
    from endofm.errors import DatasetError

    try:
        return path.is_file() and is_manifest(path)
    except DatasetError:
        return False


def _scan(args: argparse.Namespace) -> int:
    from endofm.data.manifest import scan_videos
    from endofm.errors import InputError
    from endofm.io import claim_output

    if args.clip_seconds < 0:
        raise InputError(f"--clip-seconds must be positive (or 0 for one row per video), got {args.clip_seconds}")
    if not _updatable_manifest(args.out):
        claim_output(args.out, args.overwrite)
    clip_seconds = args.clip_seconds if args.clip_seconds > 0 else None
    summary = scan_videos(args.root, args.out, clip_seconds=clip_seconds, progress=not args.quiet)
    print(f"manifest: {summary.out_csv}")
    print(f"videos ok: {summary.videos_ok} ({summary.frames} frames), clips: {summary.clips}")
    print(f"read: {summary.scanned}, unchanged since last scan: {summary.reused}")
    print(f"failed: {len(summary.failed)}")
    _print_failures(summary.failed)
    return 1 if summary.failed else 0


def _print_failures(failed: list) -> None:
    """One line per failed file, naming it once (a reason may name it already)."""
    for path, reason in failed:
        print(f"  {reason}" if str(reason).startswith(str(path)) else f"  {path}: {reason}")


def _transcode(args: argparse.Namespace) -> int:
    from endofm.data.transcode import transcode_videos

    summary = transcode_videos(args.src, args.out, short_side=args.short_side, progress=not args.quiet)
    counts = (len(summary.written), len(summary.up_to_date), len(summary.failed))
    print("written: {}, up to date: {}, failed: {}".format(*counts))
    _print_failures(summary.failed)
    return 1 if summary.failed else 0


def _synth(args: argparse.Namespace) -> int:
    from endofm.io import claim_output
    from endofm.tasks.corpus import write_synthetic_corpus

    claim_output(args.out, args.overwrite, folder=True, option="OUT")
    out = write_synthetic_corpus(args.out, num_videos=args.videos, seed=args.seed,
                                 pretrain_videos=args.pretrain_clips, pretrain_frames=args.pretrain_frames,
                                 pretrain_size=args.pretrain_size)
    print(f"synthetic corpus: {out}")
    return 0
