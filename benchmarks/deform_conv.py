"""The STFT's deformable convolution on a CPU: ``endofm.models.cpu_kernels.deform_conv`` against
``torchvision.ops.deform_conv2d`` (the op it stands in for), forward and forward + backward.

The shapes are the released detector's (256 channels, 4 deformable groups, 3 x 3 taps) on its FPN levels of a
640 x 640 frame (P3 80 x 80 down to P7 5 x 5), 11 frames (a key frame and 10 references) at test time. The two
run interleaved round by round on the same input; the ratio is the median of the rounds' ratios.

    python benchmarks/deform_conv.py --out deform_conv.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torchvision.ops import deform_conv2d

from endofm.models import cpu_kernels

LEVELS = (80, 40, 20, 10, 5)


def timed(fn, inputs: tuple[torch.Tensor, ...], backward: bool) -> float:
    """Seconds of one call of ``fn(*inputs)`` (and of the backward of its sum)."""
    start = time.perf_counter()
    out = fn(*inputs)
    if backward:
        out.sum().backward()
    return time.perf_counter() - start


def main() -> None:
    """Time both implementations per level, print the ratios, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--frames", type=int, default=11)
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = []
    for size in args.levels:
        x = torch.randn(args.frames, args.channels, size, size, requires_grad=True)
        weight = (torch.randn(args.channels, args.channels, 3, 3) / 50).requires_grad_()
        offset = torch.randn(args.frames, 4 * 18, size, size) * 2
        inputs = (x, offset, weight)
        for backward in (False, True):
            ratios, times = [], {"ours": [], "torchvision": []}
            for _ in range(args.rounds):
                with torch.set_grad_enabled(backward):
                    t_theirs = timed(lambda *t: deform_conv2d(*t, padding=(1, 1)), inputs, backward)
                    t_ours = timed(lambda *t: cpu_kernels.deform_conv(*t, 1), inputs, backward)
                times["ours"].append(t_ours)
                times["torchvision"].append(t_theirs)
                ratios.append(t_theirs / t_ours)
            row = {"size": size, "backward": backward, "speedup": statistics.median(ratios),
                   "ours_s": min(times["ours"]), "torchvision_s": min(times["torchvision"])}
            results.append(row)
            print(f"{size:3d} x {size:<3d} {'fwd+bwd' if backward else 'forward'}: ours {row['ours_s']:.3f} s, "
                  f"torchvision {row['torchvision_s']:.3f} s, {row['speedup']:.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
