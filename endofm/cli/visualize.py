"""``endofm visualize attention``: where the backbone looks, frame by frame."""

from __future__ import annotations

import argparse

from endofm.cli.options import add_num_heads, add_overwrite, add_which, device, positive_int


def _attention(args: argparse.Namespace) -> int:
    from endofm.io import claim_output
    from endofm.models.checkpoint import load_checkpoint
    from endofm.report.attention import RESULT_FILES, attention_maps, save_attention

    claim_output(args.out, args.overwrite, folder=True, results=RESULT_FILES)
    model = load_checkpoint(args.checkpoint, num_heads=args.num_heads, which=args.which).backbone
    result = attention_maps(args.video, model, num_frames=args.frames, size=args.size,
                            normalization=args.normalization, device=args.device)
    written = save_attention(result, args.out)
    print(f"attention of {len(result.indices)} frames of {args.video} -> {args.out} "
          f"({written['grid'].name}, {written['video'].name}, one PNG per frame)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``visualize attention``."""
    parser = subparsers.add_parser("visualize", help="pictures of what a model does")
    commands = parser.add_subparsers(dest="visualize_command", metavar="WHAT", required=True)
    attention = commands.add_parser(
        "attention", help="CLS-to-patch attention of the last block per frame, as PNG and mp4 overlays")
    attention.add_argument("video", help="video file or frame folder")
    attention.add_argument("--checkpoint", required=True, help="checkpoint file or endofm model folder")
    attention.add_argument("--out", required=True, help="output folder (refused if it holds earlier attention "
                                                         "pictures, unless --overwrite)")
    add_overwrite(attention)
    attention.add_argument("--frames", type=positive_int, default=None,
                           help="frames of the clip (default: the model's)")
    attention.add_argument("--size", type=positive_int, default=None, help="crop size (default: the model's)")
    attention.add_argument("--normalization", default="imagenet", help="normalisation preset")
    add_num_heads(attention)
    add_which(attention)
    attention.add_argument("--device", type=device, default="cpu", help="torch device")
    attention.set_defaults(func=_attention)
