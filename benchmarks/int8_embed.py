"""``endofm embed --int8`` against float32: clips/s and cosine similarity of the embeddings on real videos.

Both models embed the same videos with the same weights (a seeded random initialisation of the named config
unless ``--checkpoint`` is given) through :func:`endofm.tasks.embed.embed_video`, alternating runs; the
reported time is the best of ``--rounds`` full passes (decoding included), and the model-only time is the
best forward of one batch of clips.

    python benchmarks/int8_embed.py --out int8.json
    python benchmarks/int8_embed.py --quick      # endofm_vit_small at 8 x 112, one round
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from endofm.models.checkpoint import load_checkpoint
from endofm.models.quantize import quantize_int8
from endofm.models.registry import build_model
from endofm.tasks.embed import embed_video, find_videos

DEFAULT_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_videos"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    """Embed with both models, print the speed-up and the similarity, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="*", default=[str(DEFAULT_VIDEOS)])
    parser.add_argument("--model", default="endofm_vit_base")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--window", type=int, default=32, help="clip length in frames (clips every window)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.model, args.size, args.rounds = "endofm_vit_small", args.size or 112, 1
    torch.manual_seed(0)
    if args.checkpoint:
        fp32 = load_checkpoint(args.checkpoint).backbone.eval()
    else:
        fp32 = build_model(args.model).eval()
        with torch.no_grad():  # random init leaves most temporal_fc at zero: give every layer weight
            for block in fp32.blocks:
                torch.nn.init.trunc_normal_(block.temporal_fc.weight, std=0.02)
    int8 = quantize_int8(fp32)
    videos = find_videos(args.videos)
    kwargs = {"size": args.size, "window": args.window, "batch_size": args.batch_size}
    best = {"fp32": float("inf"), "int8": float("inf")}
    features: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for name, model in (("fp32", fp32), ("int8", int8)):
            start = time.perf_counter()
            rows = [embed_video(v, model, **kwargs).features for v in videos]
            best[name] = min(best[name], time.perf_counter() - start)
            features[name] = np.concatenate(rows)
    clips = len(features["fp32"])
    cfg = fp32.config
    x = torch.randn(args.batch_size, 3, cfg.num_frames, args.size or cfg.img_size[0], args.size or cfg.img_size[0])
    forward = {"fp32": float("inf"), "int8": float("inf")}
    with torch.inference_mode():
        for _ in range(args.rounds + 1):
            for name, model in (("fp32", fp32), ("int8", int8)):
                start = time.perf_counter()
                model(x)
                forward[name] = min(forward[name], time.perf_counter() - start)
    cos = cosine_rows(features["fp32"], features["int8"])
    result = {
        "model": args.checkpoint or args.model,
        "videos": [str(v) for v in videos],
        "clips": clips,
        "clip_shape": list(x.shape[1:]),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "embed_clips_per_s": {k: clips / v for k, v in best.items()},
        "embed_speedup": best["fp32"] / best["int8"],
        "forward_clips_per_s": {k: args.batch_size / v for k, v in forward.items()},
        "forward_speedup": forward["fp32"] / forward["int8"],
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
    }
    print(f"{result['model']}: {clips} clips of {result['clip_shape']} from {len(videos)} videos")
    print(f"embed (decode + model): fp32 {result['embed_clips_per_s']['fp32']:.2f} clips/s, int8 "
          f"{result['embed_clips_per_s']['int8']:.2f} clips/s, speed-up {result['embed_speedup']:.2f}x")
    print(f"model forward: speed-up {result['forward_speedup']:.2f}x; cosine int8 vs fp32: min "
          f"{result['cosine_min']:.4f}, mean {result['cosine_mean']:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
