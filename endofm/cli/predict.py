"""``endofm predict``: per-frame predictions of a fine-tuned model on a video, with an annotated mp4."""

from __future__ import annotations

import argparse

from endofm.cli.options import add_num_heads, add_overwrite, add_quiet, device


def _predict(args: argparse.Namespace) -> int:
    from endofm.tasks.predict import predict_video

    written = predict_video(args.video, args.checkpoint, args.out, device=args.device, progress=not args.quiet,
                            num_heads=args.num_heads, runtime=args.runtime, overwrite=args.overwrite,
                            **{dest: getattr(args, dest) for dest in args.task_options})
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``predict``, with the tasks' own options (:attr:`Task.predict_options
    <endofm.tasks.base.Task.predict_options>`)."""
    from endofm.tasks.registry import TASKS

    parser = subparsers.add_parser(
        "predict", help="apply a fine-tuned model to a video (task read from the checkpoint)",
        description="Writes predictions.json (last: its presence marks a complete result), predictions.csv, "
                    "annotated.mp4 and, for segmentation, masks.npz into --out; a folder holding "
                    "such files already is refused unless --overwrite.")
    parser.add_argument("video", help="video file or folder of frames")
    released = ", ".join(task.released_file for task in TASKS.values() if task.released_file)
    parser.add_argument("--checkpoint", required=True, help="fine-tuned model folder (run/model) or one of the "
                        f"original's released fine-tuned models ({released})")
    parser.add_argument("--out", required=True, help="output folder (refused if it holds an earlier prediction, "
                                                      "unless --overwrite)")
    add_overwrite(parser)
    parser.add_argument("--device", type=device, default="auto", help="torch device (default: GPU if available)")
    add_num_heads(parser)
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime"),
                        help="onnxruntime: run an .onnx file of endofm export in ONNX Runtime (default: torch)")
    options = {option.flag: option for task in TASKS.values() for option in task.predict_options}
    for option in options.values():
        parser.add_argument(option.flag, type=option.type, default=option.default, choices=option.choices,
                            help=option.help)
    add_quiet(parser)
    parser.set_defaults(func=_predict, task_options=[option.dest for option in options.values()])
