"""``endofm convert``, ``endofm info`` and ``endofm embed``: checkpoints and feature extraction."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from endofm.cli.options import add_num_heads, add_overwrite, add_quiet, add_which, device, positive_int


def _add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    add_num_heads(parser)
    add_which(parser)


def _describe(ckpt) -> dict:
    config = ckpt.backbone.config
    return {
        "layout": ckpt.info.layout,
        "which": ckpt.info.which,
        "epoch": ckpt.info.epoch,
        "backbone": config.to_dict(),
        "parameters_millions": round(sum(p.numel() for p in ckpt.backbone.parameters()) / 1e6, 3),
        "dino_head": ckpt.dino_head.config if ckpt.dino_head is not None else None,
        "classifier": ckpt.classifier.config if ckpt.classifier is not None else None,
        "ignored": ckpt.info.ignored,
    }


def _convert(args: argparse.Namespace) -> int:
    from endofm.errors import InputError
    from endofm.io import claim_output
    from endofm.models.checkpoint import load_checkpoint, save_pretrained
    from endofm.tasks.loading import convert_released, released_layout

    claim_output(args.out_dir, args.overwrite, folder=True, option="OUT_DIR")
    found = released_layout(args.checkpoint)
    if args.which != "teacher" and found is not None and found[0].save is not None:
        raise InputError(f"--which {args.which}: {args.checkpoint} is a fine-tuned {found[0].name} model, which has "
                         "no teacher and student")
    released = convert_released(args.checkpoint, args.out_dir, num_heads=args.num_heads)
    if released is not None:
        print(f"converted {args.checkpoint} ({released.layout}, a {released.task} model) -> {args.out_dir}")
        return 0
    ckpt = load_checkpoint(args.checkpoint, num_heads=args.num_heads, which=args.which)
    metadata = {"converted_from": str(args.checkpoint), "layout": ckpt.info.layout, "which": ckpt.info.which}
    out = save_pretrained(args.out_dir, ckpt.backbone, ckpt.dino_head, ckpt.classifier, metadata=metadata)
    summary = _describe(ckpt)
    print(f"converted {args.checkpoint} ({summary['layout']}, {summary['which']}) -> {out}")
    print(f"backbone: {summary['backbone']['embed_dim']} dim, {summary['backbone']['depth']} blocks, "
          f"{summary['backbone']['num_heads']} heads, {summary['parameters_millions']} M parameters")
    return 0


def _info(args: argparse.Namespace) -> int:
    from endofm.io import sha256_of
    from endofm.models.checkpoint import WEIGHTS_FILE, load_checkpoint
    from endofm.tasks.loading import describe_finetuned

    weights = Path(args.checkpoint)
    weights = weights / WEIGHTS_FILE if weights.is_dir() else weights
    described = describe_finetuned(args.checkpoint, num_heads=args.num_heads)
    if described is None:
        described = _describe(load_checkpoint(args.checkpoint, num_heads=args.num_heads, which=args.which))
    print(json.dumps({"file": str(weights), "sha256": sha256_of(weights), **described}, indent=2))
    return 0


def _embed(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from endofm.engine.logging import bar_off
    from endofm.errors import InputError, VideoError
    from endofm.io import atomic_write, claim_output
    from endofm.models.checkpoint import load_checkpoint
    from endofm.models.registry import build_model
    from endofm.tasks.embed import embed_video, find_videos

    if (args.checkpoint is None) == (args.model is None):
        raise InputError("give exactly one of --checkpoint PATH or --model NAME (random weights)")
    if args.stride is not None and args.window is None:
        raise InputError("--stride steps between windows: give --window too (without it, one clip per video)")
    if args.int8 and args.compile:
        raise InputError("give one of --int8 and --compile")
    claim_output(args.out, args.overwrite)
    videos = find_videos(args.inputs)
    if args.checkpoint is not None:
        model = load_checkpoint(args.checkpoint, num_heads=args.num_heads, which=args.which).backbone
    else:
        print(f"warning: {args.model} has random weights; use --checkpoint for real features", file=sys.stderr)
        model = build_model(args.model)
    model.to(args.device)
    if args.compile:
        from endofm.models.compiled import compile_for_inference

        compile_for_inference(model)
    if args.int8:
        from endofm.models.quantize import quantize_int8

        if torch.device(args.device).type != "cpu":
            raise InputError("--int8 runs on the CPU: use --device cpu")
        model = quantize_int8(model)
    rows, failures = [], []
    for video in tqdm(videos, desc="embedding", unit="video", disable=bar_off(not args.quiet)):
        try:
            result = embed_video(video, model, num_frames=args.frames, size=args.size, window=args.window,
                                 stride=args.stride, normalization=args.normalization,
                                 batch_size=args.batch_size, device=args.device)
        except VideoError as error:  # names the video; a bad argument stops the command at the first video
            failures.append(str(error))
            continue
        rows.append(result)
    if not rows:
        raise InputError("no video could be embedded: " + "; ".join(failures))
    arrays = {
        "features": np.concatenate([r.features for r in rows]).astype(np.float32),
        "paths": np.array([r.path for r in rows for _ in r.starts]),
        "starts": np.concatenate([r.starts for r in rows]),
        "ends": np.concatenate([r.ends for r in rows]),
        "source": np.array(str(args.checkpoint or args.model)),
    }

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(args.out, write)
    print(f"wrote {arrays['features'].shape[0]} clip embeddings of dim {arrays['features'].shape[1]} "
          f"from {len(rows)} video(s) to {args.out}")
    if failures:
        print(f"{len(failures)} video(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert``, ``info`` and ``embed``."""
    convert = subparsers.add_parser(
        "convert", help="convert an original Endo-FM checkpoint to the endofm format (safetensors + config.json)")
    convert.add_argument("checkpoint", help="original .pth (pretraining, endo_fm.pth, PolypDiag fine-tuned, CVC "
                                            "TransUNet)")
    convert.add_argument("out_dir", help="output folder (refused if it holds anything, unless --overwrite)")
    _add_checkpoint_args(convert)
    add_overwrite(convert, "OUT_DIR")
    convert.set_defaults(func=_convert)

    info = subparsers.add_parser("info", help="print the layout, architecture and sha256 of a checkpoint")
    info.add_argument("checkpoint", help="checkpoint file or endofm model folder")
    _add_checkpoint_args(info)
    info.set_defaults(func=_info)

    embed = subparsers.add_parser(
        "embed", help="clip embeddings of videos or frame folders, saved as .npz",
        description="Embed videos with an Endo-FM backbone. The .npz holds features [N, D], paths, starts "
                    "and ends (frame span of each clip) and source (the checkpoint).")
    embed.add_argument("inputs", nargs="+", metavar="VIDEO_OR_DIR", help="video files, frame folders or folders")
    embed.add_argument("--checkpoint", help="checkpoint file or endofm model folder")
    embed.add_argument("--model", help="named config with random weights instead of a checkpoint (testing)")
    embed.add_argument("--out", required=True, help="output .npz (an existing file is refused unless --overwrite)")
    embed.add_argument("--frames", type=positive_int, default=None, help="frames per clip (default: the model's)")
    embed.add_argument("--size", type=positive_int, default=None, help="crop size in pixels (default: the model's)")
    embed.add_argument("--window", type=positive_int, default=None,
                       help="clip length in frames (default: whole video)")
    embed.add_argument("--stride", type=positive_int, default=None,
                       help="step between clips in frames (default: window; needs --window)")
    embed.add_argument("--normalization", default=None,
                       help="normalisation preset (default: the model's mean and std, ImageNet's for a backbone)")
    embed.add_argument("--batch-size", type=positive_int, default=8, help="clips per forward pass")
    embed.add_argument("--device", type=device, default="cpu", help="torch device, e.g. cpu or cuda:0")
    embed.add_argument("--int8", action="store_true",
                       help="dynamic int8 linear layers (CPU only): faster, embeddings within ~1e-2 cosine")
    embed.add_argument("--compile", action="store_true",
                       help="torch.compile with the weights frozen in: faster after about half a minute of "
                            "compiling per clip shape, same embeddings")
    add_quiet(embed)
    add_overwrite(embed)
    _add_checkpoint_args(embed)
    embed.set_defaults(func=_embed)
