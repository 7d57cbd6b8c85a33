"""``endofm stream``: a model on live video (a file played at its rate, a V4L2 camera, a network URL)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _stream(args: argparse.Namespace) -> int:
    from endofm.errors import InputError
    from endofm.stream import load_predictor, run_stream

    if args.model and not args.embed:
        raise InputError("--model names a backbone for embeddings: add --embed")
    options = {"window": args.window, "num_heads": args.num_heads, "seed": args.reference_seed,
               "score_threshold": args.score_threshold, "model_name": args.model}
    predictor = load_predictor(args.checkpoint, device=args.device, embed=args.embed,
                               **{k: v for k, v in options.items() if v is not None})

    def echo(result: object) -> None:
        print(json.dumps(result.record()), flush=True)  # type: ignore[attr-defined]

    summary = run_stream(args.source, predictor, args.out, live=not args.as_fast_as_possible,
                         stall_timeout=args.stall_timeout, video=args.video, overwrite=args.overwrite,
                         max_frames=args.max_frames, echo=echo if args.print else None)
    latency = summary["latency_ms"]
    print(f"frames in {summary['frames_in']}, out {summary['frames_out']}, dropped {summary['frames_dropped']}; "
          f"latency p50 {latency['p50']} ms, p95 {latency['p95']} ms, max {latency['max']} ms; "
          f"{summary['sustained_fps']} frames/s", file=sys.stderr)
    print(f"summary: {Path(args.out) / 'summary.json'}", file=sys.stderr)
    if summary["ended"] in ("broken", "stalled"):
        print(f"endofm: error: {summary['message']} (what was predicted is kept in {args.out})", file=sys.stderr)
        return 1
    return 130 if summary["ended"] == "interrupted" else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``stream``."""
    parser = subparsers.add_parser(
        "stream", help="run a model on live video, causally (file as if live, V4L2 camera, RTSP/HTTP/UDP URL)",
        description="Each frame's prediction uses that frame and earlier ones only. When the model is slower "
                    "than the source, frames are dropped (and counted) so latency stays bounded. Writes "
                    "frames.jsonl as it goes, annotated.mp4 with --video, and summary.json at the end (Ctrl-C "
                    "included).")
    parser.add_argument("source", help="video file, V4L2 device (/dev/video0) or a URL PyAV opens")
    parser.add_argument("--checkpoint", required=True,
                        help="fine-tuned model (any endofm predict takes), a backbone with --embed, or an .onnx "
                             "file of endofm export (run by ONNX Runtime)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--embed", action="store_true", help="the checkpoint is a backbone: stream embeddings")
    parser.add_argument("--model", default=None, help="with --embed: the named backbone (endofm models list)")
    parser.add_argument("--device", default="auto", help="torch device (default: GPU if available)")
    parser.add_argument("--num-heads", type=int, default=None, help="attention heads of a released checkpoint")
    parser.add_argument("--window", type=int, default=None,
                        help="past frames per clip (classify: the span the frames are spread over, default 4 x "
                             "the model's frames; segment, embed: default the model's frames, else 8)")
    parser.add_argument("--reference-seed", type=int, default=None,
                        help="seed of the STFT detector's reference draws (default 0)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="lowest box score the detector reports (default 0.5)")
    parser.add_argument("--as-fast-as-possible", action="store_true",
                        help="a file: decode as fast as the model goes, dropping nothing (not live)")
    parser.add_argument("--stall-timeout", type=float, default=10.0,
                        help="seconds without a frame after which the stream counts as stalled (default 10)")
    parser.add_argument("--video", action="store_true", help="also write annotated.mp4 of what was shown")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many predictions")
    parser.add_argument("--print", action="store_true", help="print each frame's JSON line as it comes")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --out")
    parser.set_defaults(func=_stream)
