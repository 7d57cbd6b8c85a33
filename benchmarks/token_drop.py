"""Training-step speed of the token-drop pretraining variant against the full recipe, side by side.

One pretraining step (teacher on the 2 global views, student on all 10 views of the original recipe,
backward, AdamW, EMA) with ``model.token_keep_ratio`` at 1.0 (the published recipe) and at smaller ratios,
interleaved round by round on the same random batch, so a busy machine slows every variant alike.

    python benchmarks/token_drop.py --arch endofm_vit_small --batch 2 --keep 0.25 0.1 --out token_drop.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from endofm.config import load_config
from endofm.engine.distributed import DistributedContext
from endofm.pretrain import PretrainConfig
from endofm.pretrain.recipe import DINORecipe


def make_batch(config: PretrainConfig, batch: int) -> dict:
    """A random multi-view batch shaped like the collated output of the pretraining dataset."""
    views = config.data.views.views
    groups, group_views = [], []
    for index, view in enumerate(views):
        if group_views and (views[group_views[-1][0]].num_frames, views[group_views[-1][0]].size) == (
            view.num_frames, view.size):
            group_views[-1].append(index)
        else:
            group_views.append([index])
    for members in group_views:
        view = views[members[0]]
        groups.append(torch.randn(len(members) * batch, 3, view.num_frames, view.size, view.size))
    return {"groups": groups, "group_views": group_views, "meta": {"path": ["synthetic"] * batch}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="endofm_vit_small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.25, 0.1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--head-out-dim", type=int, default=65536)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    ratios = [1.0, *args.keep]
    recipes, optimizers = {}, {}
    for keep in ratios:
        config = load_config(PretrainConfig, overrides=[
            f"model.arch={args.arch}", "model.drop_path_rate=0.0", f"model.token_keep_ratio={keep}",
            f"run.batch_size={args.batch}", f"model.head_out_dim={args.head_out_dim}", "run.device=cpu"])
        torch.manual_seed(0)
        recipes[keep] = DINORecipe(config, DistributedContext())
        optimizers[keep] = recipes[keep].configure(steps_per_epoch=100, epochs=1)
    batch = make_batch(config, args.batch)
    times: dict[float, list[float]] = {keep: [] for keep in ratios}
    for round_index in range(args.rounds + 1):
        for keep in ratios:
            recipe, optimizer = recipes[keep], optimizers[keep]
            start = time.perf_counter()
            loss, _ = recipe.compute_loss(recipe.network, batch, epoch=0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            recipe.after_backward(epoch=1)
            optimizer.step()
            recipe.after_step(0)
            if round_index:  # the first round warms up
                times[keep].append(time.perf_counter() - start)
    best = {keep: min(values) for keep, values in times.items()}
    print(f"{args.arch}, batch {args.batch}, the original 10 views, fp32 on {platform.processor() or 'cpu'}")
    print(f"{'token_keep_ratio':<18}{'s/step (best)':>14}{'speed-up':>10}")
    for keep in ratios:
        print(f"{keep:<18}{best[keep]:>14.2f}{best[1.0] / best[keep]:>9.2f}x")
    result = {"arch": args.arch, "batch": args.batch, "seconds": times, "best": best,
              "speedup": {keep: best[1.0] / best[keep] for keep in ratios}}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({str(k): v for k, v in result.items()}, handle, indent=2, default=str)


if __name__ == "__main__":
    main()
