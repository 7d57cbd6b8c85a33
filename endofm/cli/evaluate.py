"""``endofm evaluate``: measure a backbone or a fine-tuned model on a labelled dataset."""

from __future__ import annotations

import argparse
import json

from endofm.cli.options import add_num_heads, add_overwrite, add_quiet, add_which, device, positive_int
from endofm.models.backbone import POOLS


def _load_backbone(args: argparse.Namespace):
    from endofm.models.checkpoint import load_checkpoint
    from endofm.models.registry import build_model

    if args.checkpoint:
        return load_checkpoint(args.checkpoint, num_heads=args.num_heads, which=args.which).backbone
    import torch

    torch.manual_seed(args.seed)
    return build_model(args.model)


def _frozen(args: argparse.Namespace) -> int:
    from endofm.errors import InputError
    from endofm.io import atomic_write_text, claim_output
    from endofm.tasks.probe import evaluate_frozen

    if (args.checkpoint is None) == (args.model is None):
        raise InputError("give exactly one of --checkpoint PATH or --model NAME (random initialisation)")
    if args.model is not None and (args.num_heads is not None or args.which != "teacher"):
        raise InputError("--num-heads and --which read a --checkpoint; --model NAME has random weights")
    if args.out:
        claim_output(args.out, args.overwrite)
    backbone = _load_backbone(args)
    metrics = evaluate_frozen(
        backbone, args.data, train_split=args.train_split, test_split=args.split, k=args.k,
        num_frames=args.frames or backbone.config.num_frames, size=args.size or backbone.config.img_size[0],
        normalization=args.normalization, device=args.device, progress=not args.quiet, pool=args.pool,
    )
    metrics["backbone"] = args.checkpoint or f"{args.model} (random initialisation)"
    metrics["pool"] = args.pool
    metrics["options"] = {"train_split": args.train_split, "split": args.split, "k": args.k,
                          "frames": args.frames or backbone.config.num_frames,
                          "size": args.size or backbone.config.img_size[0], "normalization": args.normalization,
                          "pool": args.pool, "num_heads": args.num_heads, "device": args.device}
    print(f"{'metric':<24}value")
    print(f"{'k-NN accuracy (k=' + str(args.k) + ')':<24}{metrics['knn_accuracy']:.4f}")
    print(f"{'linear-probe accuracy':<24}{metrics['linear_probe_accuracy']:.4f}")
    print(f"({metrics['train_videos']} {args.train_split} videos as memory, {metrics['test_videos']} {args.split} "
          "videos evaluated)")
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2) + "\n")
    return 0


def _task(args: argparse.Namespace) -> int:
    from endofm.errors import InputError
    from endofm.io import atomic_write_text, claim_output
    from endofm.tasks.loading import evaluate_finetuned, load_finetuned
    from endofm.tasks.registry import TASKS
    from endofm.tasks.results import json_safe, print_table

    if args.out:
        claim_output(args.out, args.overwrite)
    model = load_finetuned(args.checkpoint, num_heads=args.num_heads)
    if model.task != args.evaluate_command:
        raise InputError(f"{args.checkpoint} is a {model.task} model, not a {args.evaluate_command} model")
    options = {option.dest: getattr(args, option.dest) for option in TASKS[model.task].evaluate_options}
    metrics = evaluate_finetuned(model, args.data, args.split, args.device, args.batch_size,
                                 progress=not args.quiet, **options)
    print_table(f"{model.task} metrics of {args.checkpoint} on {args.data} ({args.split}):", metrics)
    if args.out:
        report = {"task": model.task, "checkpoint": args.checkpoint, "data": args.data, "split": args.split,
                  "options": {"batch_size": args.batch_size, "device": args.device, "num_heads": args.num_heads,
                              **options},
                  "metrics": metrics}
        atomic_write_text(args.out, json.dumps(json_safe(report), indent=2) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` and its sub-commands (``knn``, which reports the k-NN and the linear-probe accuracy, and one
    per task)."""
    from endofm.tasks.registry import TASKS

    parser = subparsers.add_parser("evaluate", help="evaluate frozen features (knn: k-NN and linear probe) or "
                                                    "fine-tuned models")
    commands = parser.add_subparsers(dest="evaluate_command", metavar="WHAT", required=True)
    sub = commands.add_parser("knn", help="k-NN and linear-probe accuracy of frozen features on a labelled set",
                              description="Labelled set in the PolypDiag layout: videos/ + splits/<split>.txt.")
    sub.add_argument("--data", required=True, help="dataset root (PolypDiag layout)")
    sub.add_argument("--checkpoint", help="checkpoint file or endofm model folder")
    sub.add_argument("--model", help="named config with random weights (the baseline)")
    add_num_heads(sub)
    add_which(sub)
    sub.add_argument("--train-split", default="train", help="split used as memory / probe training set")
    sub.add_argument("--split", default="test", help="split evaluated (default: test)")
    sub.add_argument("--k", type=positive_int, default=5, help="neighbours of the k-NN vote")
    sub.add_argument("--frames", type=positive_int, default=None, help="frames per video (default: the model's)")
    sub.add_argument("--size", type=positive_int, default=None, help="crop size (default: the model's)")
    sub.add_argument("--normalization", default="imagenet", help="normalisation preset")
    sub.add_argument("--pool", choices=POOLS, default="cls",
                     help="clip embedding: the CLS token (default) or the mean or maximum of the patch tokens")
    sub.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (--model)")
    sub.add_argument("--device", type=device, default="cpu", help="torch device")
    sub.add_argument("--out", default=None, help="write the metrics as JSON here (not over an existing file "
                                                 "unless --overwrite)")
    add_overwrite(sub)
    add_quiet(sub)
    sub.set_defaults(func=_frozen)
    for task in TASKS.values():
        sub = commands.add_parser(task.name,
                                  help=f"metrics of a fine-tuned {task.name} model on a {task.dataset}-layout split")
        released = f" ({task.released_file})" if task.released_file else ""
        sub.add_argument("--checkpoint", required=True, help="fine-tuned model folder (a run's model/) or the "
                                                             f"original's released fine-tuned model{released}")
        sub.add_argument("--data", required=True, help=f"dataset root ({task.dataset} layout)")
        sub.add_argument("--split", default="test", help="split evaluated (default: test)")
        sub.add_argument("--batch-size", type=positive_int, default=2, help="samples per forward pass")
        sub.add_argument("--device", type=device, default="cpu", help="torch device")
        sub.add_argument("--out", default=None, help="write the metrics as JSON here (not over an existing file "
                                                     "unless --overwrite)")
        add_overwrite(sub)
        add_num_heads(sub)
        add_quiet(sub)
        for option in task.evaluate_options:
            sub.add_argument(option.flag, type=option.type, default=option.default, choices=option.choices,
                             help=option.help)
        sub.set_defaults(func=_task)
