"""Speed and memory of the backbone against the original model code, side by side in one run.

Every variant gets the same weights (one state dict) and the same input; timings interleave the variants
round by round (so a busy machine slows all of them alike) and report the best and the median round; the
speed-ups are medians of the ratios within rounds.

- ``original``: :mod:`original_reference`, the original module structure (the baseline of every ratio);
- ``sdpa`` / ``math``: our backbone with either attention path; ``ckpt``: ``sdpa`` with gradient
  checkpointing; ``compile``: ``torch.compile`` of ``sdpa`` (``--compile``, timed after warm-up; inference
  with the weights frozen in, as ``endofm embed --compile``);
  ``pergroup``: ``sdpa`` on the multi-view batch with one backward per group of views, as the pretraining
  engine runs it (``model.backward_per_group``: the same gradient, one group's activations held at a time;
  multi-view step and its memory only);
  ``int8``: dynamic int8 linears (inference only). ``compile`` is left out of the multi-view batch, whose
  mix of shapes inductor (torch 2.14, CPU) fails to compile.

Measured per config: inference clips/s, training step (forward + backward + AdamW step) on a batch of
clips and on the pretraining multi-view batch (2 global + 8 local views, each group forwarded separately),
peak memory of an inference forward and of a training step (process peak RSS above the resident model and
optimiser state, in a fresh subprocess after a tiny warm-up call), and the share of profiled CPU self time
outside matmul kernels (``aten::mm/addmm/bmm/baddbmm``, oneDNN ``mkldnn::_linear_pointwise``, the
convolution); the fused CPU attention kernel is reported apart (``attention_kernel_share``) and counted as
non-matmul in ``non_matmul_share``. Every timing also counts the page faults per call (minor faults: the kernel
zero-filling freshly mapped memory).

In one process the variants share glibc's heap, and one variant's frees decide whether the next one's
tensors come from kept memory or from fresh pages. ``--isolated`` times each variant in a fresh process
instead (processes round-robin over the variants; best and median over processes), as a user runs one
model; ``--keep-freed-memory`` applies :func:`endofm.engine.cpu.keep_freed_memory` (the ``endofm``
command's allocator setting) to every variant, in-process or isolated.

    python benchmarks/model_speed.py --quick --out speed.json
    python benchmarks/model_speed.py --configs cpu_small endofm_vit_base --compile --out speed.json
    python benchmarks/model_speed.py --configs cpu_small --isolated --keep-freed-memory --out iso.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from original_reference import OriginalVisionTransformer  # noqa: E402

from endofm.engine.cpu import keep_freed_memory  # noqa: E402
from endofm.engine.optim import adamw  # noqa: E402
from endofm.models.compiled import compile_for_inference  # noqa: E402
from endofm.models.quantize import quantize_int8  # noqa: E402
from endofm.models.registry import build_model  # noqa: E402

MATMUL_OPS = {
    "aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::baddbmm_",
    "aten::_addmm_activation",
    "aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution", "mkldnn::_linear_pointwise",
    "mkl::_mkl_linear",
}
ATTENTION_OPS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """A model and the input sizes it is measured at."""

    model: str
    overrides: dict
    frames: int
    size: int
    batch: int
    local_size: int
    multiview_batch: int


CONFIGS = {
    "cpu_small": BenchConfig("endofm_vit_small", {"depth": 4, "img_size": 112}, 8, 112, 4, 48, 1),
    "endofm_vit_base": BenchConfig("endofm_vit_base", {}, 8, 224, 2, 96, 1),
    "base_tiny_input": BenchConfig("endofm_vit_base", {}, 4, 112, 1, 48, 1),
}
"""``cpu_small``: 384 dim, 4 blocks, 6 heads, 8 x 112 px, batch 4. ``endofm_vit_base``: the released model
at 8 x 224. ``base_tiny_input``: the released model on 4 x 112 px clips (a faster stand-in)."""
VARIANTS = ("original", "sdpa", "math", "ckpt", "pergroup", "int8", "compile")
GLOBAL_FRAMES, LOCAL_FRAMES = (8, 16), (2, 2, 4, 4, 8, 8, 16, 16)


def make_models(name: str, variants: list[str]) -> dict[str, nn.Module]:
    """The variants of one config, all with the weights of one randomly initialised backbone."""
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    ours = build_model(cfg.model, **cfg.overrides)
    state = ours.state_dict()
    models: dict[str, nn.Module] = {}
    for variant in variants:
        if variant == "original":
            model = OriginalVisionTransformer(ours.config)
            model.load_state_dict(state)
        elif variant == "int8":
            model = quantize_int8(copy.deepcopy(ours))
        else:
            model = copy.deepcopy(ours).set_attention_impl("math" if variant == "math" else "sdpa")
            model.set_grad_checkpointing(variant == "ckpt")
            if variant == "compile":
                model = compile_for_inference(model)
        models[variant] = model
    return models


def clips(cfg: BenchConfig, batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """A fixed random batch ``[batch, 3, frames, size, size]``."""
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def multiview_batch(cfg: BenchConfig) -> list[torch.Tensor]:
    """The pretraining views at this config's scale: 2 global views, 8 local views."""
    views = [clips(cfg, cfg.multiview_batch, f, cfg.size, i) for i, f in enumerate(GLOBAL_FRAMES)]
    views += [clips(cfg, cfg.multiview_batch, f, cfg.local_size, 10 + i) for i, f in enumerate(LOCAL_FRAMES)]
    return views


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW as each side's training code builds it: ``torch.optim.AdamW``'s default for the original, the
    engine's :func:`endofm.engine.optim.adamw` (fused kernel) for ours."""
    if isinstance(model, OriginalVisionTransformer):
        return torch.optim.AdamW(model.parameters(), lr=1e-6)
    return adamw([{"params": list(model.parameters())}], lr=1e-6)


def train_step_fn(
    model: nn.Module, inputs: list[torch.Tensor], optimizer: torch.optim.Optimizer | None = None,
    per_group: bool = False,
) -> Callable[[], None]:
    """One AdamW step on the mean squared CLS output of every input (forwarded one group at a time); with
    ``per_group`` each group's term is backpropagated before the next group's forward, as the pretraining
    engine does (``model.backward_per_group``)."""
    optimizer = optimizer or make_optimizer(model)

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        if per_group:
            for x in inputs:
                model(x).square().mean().backward()
        else:
            sum(model(x).square().mean() for x in inputs).backward()
        optimizer.step()

    return step


def infer_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One inference forward."""

    def run() -> None:
        model.eval()
        with torch.inference_mode():
            model(x)

    return run


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_interleaved(fns: dict[str, Callable[[], None]], warmup: int, rounds: int) -> dict[str, dict]:
    """Seconds per call of each function, measured round-robin; best and median of ``rounds``, and the mean
    page faults per call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = defaultdict(list)
    faults: dict[str, int] = defaultdict(int)
    for _ in range(rounds):
        for name, fn in fns.items():
            faults_before, start = _minor_faults(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            faults[name] += _minor_faults() - faults_before
    return {
        name: {"best_s": min(t), "median_s": statistics.median(t), "faults_per_call": faults[name] / rounds,
               "rounds_s": t}
        for name, t in times.items()
    }


def section_fn(name: str, variant: str, model: nn.Module, section: str) -> Callable[[], None]:
    """The timed call of one section (``inference``, ``train_step``, ``multiview_step``) for one variant."""
    cfg = CONFIGS[name]
    if section == "multiview_step":
        return train_step_fn(model, multiview_batch(cfg), per_group=variant == "pergroup")
    x = clips(cfg, cfg.batch, cfg.frames, cfg.size)
    return infer_fn(model, x) if section == "inference" else train_step_fn(model, [x])


def child_time(name: str, variant: str, section: str, calls: int) -> None:
    """(Subprocess.) Print the best seconds and the page faults per call of one variant's section."""
    fn = section_fn(name, variant, make_models(name, [variant])[variant], section)
    print(json.dumps(time_interleaved({variant: fn}, warmup=1, rounds=calls)[variant]))


def time_isolated(name: str, variants: list[str], section: str, args: argparse.Namespace) -> dict[str, dict]:
    """:func:`time_interleaved` with every variant in fresh processes (``args.calls`` timed calls each), round-robin
    over the variants for ``args.rounds``: ``best_s`` over all processes, ``median_s`` of the processes' bests,
    mean faults per call."""
    options = (["--keep-freed-memory"] if args.keep_freed_memory else []) + (
        ["--threads", str(args.threads)] if args.threads else [])
    runs: dict[str, list[dict]] = defaultdict(list)
    for _ in range(args.rounds):
        for variant in variants:
            cmd = [sys.executable, __file__, "--child-time", name, variant, section, str(args.calls), *options]
            runs[variant].append(json.loads(_child(cmd)))
    return {
        variant: {
            "best_s": min(r["best_s"] for r in rs),
            "median_s": statistics.median(r["best_s"] for r in rs),
            "faults_per_call": statistics.mean(r["faults_per_call"] for r in rs),
            "rounds_s": [r["best_s"] for r in rs],
        }
        for variant, rs in runs.items()
    }


def _child(cmd: list[str], env: dict | None = None) -> str:
    """The last stdout line of a benchmark subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]


def op_shares(fn: Callable[[], None], iterations: int = 1) -> dict:
    """Profiled CPU self time split into matmul kernels, fused attention kernels and everything else."""
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(iterations):
            fn()
    total = matmul = attention = 0.0
    others: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        t = event.self_cpu_time_total
        total += t
        if event.key in MATMUL_OPS:
            matmul += t
        elif event.key in ATTENTION_OPS:
            attention += t
        else:
            others[event.key] += t
    top = sorted(others.items(), key=lambda kv: -kv[1])[:6]
    return {
        "non_matmul_share": 1 - matmul / total,
        "non_matmul_non_attention_share": 1 - (matmul + attention) / total,
        "attention_kernel_share": attention / total,
        "top_other_ops": {k: round(v / total, 4) for k, v in top},
    }


def rss_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of this process, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_peak_memory(name: str, variant: str, kind: str) -> None:
    """(Subprocess.) Print the peak RSS of one inference forward (``kind`` ``inference``) or training step
    (``clips``, ``multiview``) above the resident model and AdamW state, in MiB."""
    cfg = CONFIGS[name]
    model = make_models(name, [variant])[variant]
    inputs = multiview_batch(cfg) if kind == "multiview" else [clips(cfg, cfg.batch, cfg.frames, cfg.size)]
    if kind == "inference":
        infer_fn(model, clips(cfg, 1, 1, 32))()
        step = infer_fn(model, inputs[0])
    else:
        optimizer = make_optimizer(model)
        train_step_fn(model, [clips(cfg, 1, 1, 32)], optimizer)()  # a tiny step allocates the AdamW state
        step = train_step_fn(model, inputs, optimizer, per_group=variant == "pergroup")
    Path("/proc/self/clear_refs").write_text("5")
    base = rss_kib("VmRSS")
    step()
    print(json.dumps({"peak_mib": (rss_kib("VmHWM") - base) / 1024}))


def peak_memory(name: str, variant: str, kind: str) -> float | None:
    """Peak inference or training-step memory of one variant, measured in a fresh process (None where
    unsupported)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    cmd = [sys.executable, __file__, "--child", name, variant, kind]
    # a fixed mmap threshold returns freed tensors to the system at once, so RSS follows live memory
    return json.loads(_child(cmd, {"MALLOC_MMAP_THRESHOLD_": "65536"}))["peak_mib"]


def bench_config(name: str, args: argparse.Namespace) -> dict:
    """Every measurement of one config."""
    cfg = CONFIGS[name]
    variants = [v for v in VARIANTS if v in args.variants and (v != "compile" or args.compile)]
    models = make_models(name, variants)
    x = clips(cfg, cfg.batch, cfg.frames, cfg.size)
    result: dict = {"config": dataclasses.asdict(cfg), "input": list(x.shape)}
    with torch.inference_mode():
        ref = models["original"].eval()(x)
        result["max_abs_diff_vs_original"] = {
            v: float((models[v].eval()(x) - ref).abs().max()) for v in ("sdpa", "math") if v in models
        }
        if "int8" in models:
            cos = torch.nn.functional.cosine_similarity(models["int8"](x), ref)
            result["int8_min_cosine_vs_fp32"] = float(cos.min())
    sections = {
        "inference": [v for v in variants if v not in ("ckpt", "pergroup")],
        "train_step": [] if args.inference_only else [v for v in variants if v not in ("int8", "pergroup")],
        # inductor fails on the views' mix of shapes
        "multiview_step": [] if args.no_multiview or args.inference_only else [
            v for v in variants if v not in ("int8", "compile")],
    }
    for section, section_variants in sections.items():
        if not section_variants:
            continue
        if args.isolated:
            times = time_isolated(name, section_variants, section, args)
        else:
            warmup = args.warmup + (section == "inference")
            fns = {v: section_fn(name, v, models[v], section) for v in section_variants}
            times = time_interleaved(fns, warmup, args.rounds)
        result[section] = times
    result["inference"] = {v: {**t, "clips_per_s": cfg.batch / t["best_s"]} for v, t in result["inference"].items()}
    result["op_shares"] = {} if args.no_profile else {
        f"{mode}/{v}": op_shares(infer_fn(models[v], x) if mode == "forward" else train_step_fn(models[v], [x]))
        for mode in ("forward",) + (() if args.inference_only else ("train_step",))
        for v in ("original", "sdpa", "math", "compile")
        if v in models and not (args.quick and v == "math")
    }
    if not args.no_memory:
        kinds = ["inference"] + ([] if args.inference_only else ["clips"])
        kinds += [] if args.no_multiview or args.inference_only else ["multiview"]
        result["peak_mib"] = {
            f"{kind}/{v}": peak_memory(name, v, kind)
            for kind in kinds for v in ("original", "sdpa", "ckpt", "pergroup")
            if v in models and (kind == "multiview" or v != "pergroup") and (kind != "inference" or v != "ckpt")
        }
    result["ratios"] = ratios(result)
    return result


def ratios(result: dict) -> dict:
    """Speed-ups over the original, and the checkpointing and int8 trade-offs. ``*_speedup_vs_original`` is the
    median over rounds of the ratio within each round (variants timed back to back, so a slow spell of a
    shared machine slows both sides of a ratio); ``*_best_vs_best`` the ratio of the best rounds."""
    out: dict = {}
    for section in ("inference", "train_step", "multiview_step"):
        times = result.get(section)
        if not times:
            continue
        base = times["original"]
        out[section] = {}
        for v, t in times.items():
            if v != "original":
                out[section][f"{v}_speedup_vs_original"] = statistics.median(
                    b / o for b, o in zip(base["rounds_s"], t["rounds_s"], strict=True))
                out[section][f"{v}_best_vs_best"] = base["best_s"] / t["best_s"]
        if "ckpt" in times:
            out[section]["ckpt_time_vs_sdpa"] = times["ckpt"]["best_s"] / times["sdpa"]["best_s"]
    if "int8" in result["inference"]:
        out["inference"]["int8_speedup_vs_sdpa"] = (
            result["inference"]["sdpa"]["best_s"] / result["inference"]["int8"]["best_s"])
    mem = result.get("peak_mib")
    if mem:
        for kind in ("inference", "clips", "multiview"):
            if mem.get(f"{kind}/original"):
                out[f"peak_mem_{kind}"] = {"sdpa_vs_original": mem[f"{kind}/sdpa"] / mem[f"{kind}/original"]}
                for v in ("ckpt", "pergroup"):
                    if mem.get(f"{kind}/{v}"):
                        out[f"peak_mem_{kind}"][f"{v}_vs_sdpa"] = mem[f"{kind}/{v}"] / mem[f"{kind}/sdpa"]
                        out[f"peak_mem_{kind}"][f"{v}_vs_original"] = mem[f"{kind}/{v}"] / mem[f"{kind}/original"]
    return out


def print_table(name: str, result: dict) -> None:
    """Human-readable summary of one config."""
    print(f"\n== {name}: input {result['input']}")
    print(f"{'variant':10s} {'infer clips/s':>14s} {'train step s':>13s} {'multiview s':>12s} "
          f"{'infer MiB':>10s} {'peak MiB':>10s} {'mv peak MiB':>12s} {'faults/call (infer, train)':>27s}")
    mem = result.get("peak_mib", {})
    multiview, train = result.get("multiview_step", {}), result.get("train_step", {})
    for v in VARIANTS:
        cells = [
            f"{result['inference'][v]['clips_per_s']:14.2f}" if v in result["inference"] else f"{'-':>14s}",
            f"{train[v]['best_s']:13.3f}" if v in train else f"{'-':>13s}",
            f"{multiview[v]['best_s']:12.3f}" if v in multiview else f"{'-':>12s}",
            f"{mem[f'inference/{v}']:10.0f}" if mem.get(f"inference/{v}") else f"{'-':>10s}",
            f"{mem[f'clips/{v}']:10.0f}" if mem.get(f"clips/{v}") else f"{'-':>10s}",
            f"{mem[f'multiview/{v}']:12.0f}" if mem.get(f"multiview/{v}") else f"{'-':>12s}",
        ]
        faults = [f"{times[v]['faults_per_call']:.0f}" if v in times else "-" for times in (result["inference"], train)]
        if any(c.strip() != "-" for c in cells):
            print(f"{v:10s} " + " ".join(cells) + f" {', '.join(faults):>27s}")
    for key, shares in result["op_shares"].items():
        print(f"  {key:22s} outside matmul {shares['non_matmul_share']:6.1%}  outside matmul+attention "
              f"{shares['non_matmul_non_attention_share']:6.1%}")
    print("  ratios: " + json.dumps(result["ratios"], indent=None, default=lambda f: round(f, 3)))


def main() -> None:
    """Parse arguments, run the configs, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--quick", action="store_true", help="cpu_small only, 2 rounds, no multi-view (~2 min)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (after warm-up)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="variants to run (original and sdpa are always run)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-multiview", action="store_true", help="skip the multi-view pretraining batch")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler op shares")
    parser.add_argument("--inference-only", action="store_true",
                        help="time and measure inference alone (no training step)")
    parser.add_argument("--isolated", action="store_true",
                        help="time every variant in fresh processes (round-robin), not side by side in one")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process with --isolated")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="the endofm command's allocator setting (endofm.engine.cpu.keep_freed_memory) for all")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-time", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory and not keep_freed_memory():
        parser.error("--keep-freed-memory needs glibc")
    if args.child:
        child_peak_memory(*args.child)
        return
    if args.child_time:
        name, variant, section, calls = args.child_time
        child_time(name, variant, section, int(calls))
        return
    args.variants = sorted(set(args.variants) | {"original", "sdpa"}, key=VARIANTS.index)
    if args.quick:
        args.rounds, args.warmup, args.no_multiview = min(args.rounds, 2), 0, True
    configs = args.configs or (["cpu_small"] if args.quick else ["cpu_small", "endofm_vit_base"])
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "args": vars(args),
        "configs": {},
    }
    for name in configs:
        report["configs"][name] = {"load_average_before": os.getloadavg()}
        start = time.perf_counter()
        report["configs"][name].update(bench_config(name, args))
        report["configs"][name]["load_average_after"] = os.getloadavg()
        report["configs"][name]["bench_seconds"] = time.perf_counter() - start
        print_table(name, report["configs"][name])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
