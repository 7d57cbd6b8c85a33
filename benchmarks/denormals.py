"""What denormal floats cost a matrix product on this CPU, and what flushing them to zero gives back.

Late in a pretraining run the gradients hold denormals (magnitudes below 1.2e-38), which x86 cores handle in
microcode. The product timed is a backward product of the ``cpu_micro.yaml`` recipe (``[1088, 288] @ [288,
96]``), with a share of the left matrix's entries replaced by denormals, in three settings interleaved round
by round: normal values, denormals, and denormals inside :func:`endofm.engine.cpu.denormals_flushed` (the
mode of the trainer's steps). One thread, as the mode is per thread.

    python benchmarks/denormals.py --out denormals.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from endofm.engine.cpu import denormals_flushed

SHAPE = (1088, 288, 96)


def best_time(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """Best of ``repeats`` timings of ``a @ b`` in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a.mm(b)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    """Time the three settings for each denormal share, print the ratios, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.01, 0.1, 0.5])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("denormals.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    rows, inner, cols = SHAPE
    normal = torch.randn(rows, inner, generator=generator)
    weight = torch.randn(inner, cols, generator=generator)
    results = []
    print(f"{'denormal share':>15} {'normal ms':>10} {'denormal ms':>12} {'flushed ms':>11} {'slow-down':>10} "
          f"{'flush speed-up':>15}")
    for share in args.shares:
        mask = torch.rand(rows, inner, generator=generator) < share
        denormal = torch.where(mask, normal * 1e-39, normal)
        times = {"normal": float("inf"), "denormal": float("inf"), "flushed": float("inf")}
        for _ in range(args.rounds):
            times["normal"] = min(times["normal"], best_time(normal, weight, args.repeats))
            times["denormal"] = min(times["denormal"], best_time(denormal, weight, args.repeats))
            with denormals_flushed():
                times["flushed"] = min(times["flushed"], best_time(denormal, weight, args.repeats))
        row = {"denormal_share": share, **{f"{k}_ms": v * 1e3 for k, v in times.items()},
               "denormal_slowdown": times["denormal"] / times["normal"],
               "flush_speedup": times["denormal"] / times["flushed"]}
        results.append(row)
        print(f"{share:>15.2f} {row['normal_ms']:>10.3f} {row['denormal_ms']:>12.3f} {row['flushed_ms']:>11.3f} "
              f"{row['denormal_slowdown']:>9.2f}x {row['flush_speedup']:>14.2f}x")
    args.out.write_text(json.dumps({"shape": SHAPE, "threads": 1, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
