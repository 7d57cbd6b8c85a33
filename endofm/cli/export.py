"""``endofm export``: a model as ONNX, checked by ONNX Runtime."""

from __future__ import annotations

import argparse


def _export(args: argparse.Namespace) -> int:
    from endofm.export.onnx import export_onnx

    if args.model and not args.embed:
        from endofm.errors import InputError

        raise InputError("--model names a backbone for embeddings: add --embed")
    written = export_onnx(args.checkpoint, args.out, embed=args.embed, model_name=args.model,
                          num_heads=args.num_heads, overwrite=args.overwrite, int8=args.int8, opset=args.opset)
    for path in written:
        print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``."""
    from endofm.export.onnx import OPSET

    parser = subparsers.add_parser(
        "export", help="export a model to ONNX (checked by ONNX Runtime); needs endofm[onnx]",
        description="The PolypDiag classifier, the TransUNet, the STFT detector (two files: NAME.onnx per frame, "
                    "NAME.head.onnx per key frame) or, with --embed, a backbone. ONNX Runtime's outputs are "
                    "compared with PyTorch's before the file is kept.")
    parser.add_argument("checkpoint", help="fine-tuned model (file or folder), or a backbone with --embed")
    parser.add_argument("out", help="the .onnx file to write")
    parser.add_argument("--embed", action="store_true", help="export a backbone: clips -> embeddings")
    parser.add_argument("--model", default=None, help="with --embed: the named backbone (endofm models list)")
    parser.add_argument("--num-heads", type=int, default=None, help="attention heads of a released checkpoint")
    parser.add_argument("--int8", action="store_true",
                        help="also write NAME.int8.onnx, ONNX Runtime's dynamic quantisation (int8 weights)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    parser.set_defaults(func=_export)
