"""``endofm predict``: per-frame predictions of a fine-tuned model on a video, with an annotated mp4."""

from __future__ import annotations

import argparse


def _predict(args: argparse.Namespace) -> int:
    from endofm.tasks.predict import predict_video

    written = predict_video(args.video, args.checkpoint, args.out, device=args.device,
                            score_threshold=args.score_threshold, progress=not args.quiet,
                            num_heads=args.num_heads, reference_seed=args.reference_seed)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``predict``."""
    parser = subparsers.add_parser(
        "predict", help="apply a fine-tuned model to a video (task read from the checkpoint)",
        description="Writes predictions.json (last: its presence marks a complete result), predictions.csv, "
                    "annotated.mp4 and, for segmentation, masks.npz into --out.")
    parser.add_argument("video", help="video file or folder of frames")
    parser.add_argument("--checkpoint", required=True, help="fine-tuned model folder (run/model) or one of the "
                        "original's fine-tuned models (PolypDiag classifier, KUMC kumc.pth)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default="auto", help="torch device (default: GPU if available)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="detection: lowest box score reported")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads of a released checkpoint (default: embed dim / 64)")
    parser.add_argument("--reference-seed", type=int, default=0,
                        help="STFT detector: seed of the reference-frame draws (the original never seeds them)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_predict)
