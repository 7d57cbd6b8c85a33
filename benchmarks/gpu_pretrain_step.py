"""One Endo-FM pretraining-like step of the released ViT-B, timed on a GPU (or, with ``--tiny``, on a CPU).

The step follows the original recipe's shape of work: a student (backbone + DINO head) forwards the 10 views
of every clip (2 global views of 8 and 16 frames at 224 px, 8 local views of 2, 2, 4, 4, 8, 8, 16, 16 frames
at 96 px; each group of equal shape in one forward), an EMA teacher forwards the 2 global views without
gradients, the loss is the mean of the 18 teacher-student cross-entropy terms, then backward, gradient
clipping, an AdamW step and the EMA update. As the pretraining engine does (``model.backward_per_group``),
the loss terms of each group of views are backpropagated before the next group's forward, so that one
group's activations are held at a time (``--one-graph``: all views in one graph, as the original does).
It runs in bf16 autocast with the flash SDPA kernel (``--sdpa auto``: the kernel torch picks, as the
training engine leaves it).
``--original`` runs the same step on the original module structure (:mod:`original_reference`) as the
original trains it: fp16 autocast with a gradient scaler, plain-math attention, no checkpointing, one graph.

Reported: seconds per step (median of the timed steps), peak GPU memory (on a CPU: the growth of the
process's peak resident memory over the timed steps; run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed
tensors leave the process at once), model FLOPs per step (counted by
``torch.utils.flop_counter`` without checkpointing's recomputation) and achieved TFLOP/s. Self-checks:
finite loss, gradients everywhere, the attention operators that ran (from ``torch.profiler``), and the
targets (<= 0.45 s/step, <= 18 GiB) as pass/fail lines.

    python benchmarks/gpu_pretrain_step.py --out gpu_step.json               # H100/H200-class GPU
    python benchmarks/gpu_pretrain_step.py --original --out gpu_original.json
    python benchmarks/gpu_pretrain_step.py --tiny --device cpu               # a small CPU self-test
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import rss_kib  # noqa: E402
from original_reference import OriginalVisionTransformer  # noqa: E402

from endofm.engine.optim import adamw, decay_groups  # noqa: E402
from endofm.models.heads import DINOHead  # noqa: E402
from endofm.models.registry import build_model  # noqa: E402
from endofm.pretrain.loss import DINOLoss  # noqa: E402

GLOBAL_FRAMES, LOCAL_FRAMES = (8, 16), (2, 2, 4, 4, 8, 8, 16, 16)
TARGET_S_PER_STEP, TARGET_GIB = 0.45, 18.0


class Network(nn.Module):
    """Backbone + DINO head; views are forwarded in groups of equal shape, the head runs on all of them."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.head(torch.cat([self.backbone(v) for v in views]))


def make_views(batch: int, global_size: int, local_size: int,
               device: torch.device) -> tuple[list[torch.Tensor], list[list[int]]]:
    """The 10 views of a batch of clips (2 global, then 8 local), consecutive views of equal shape
    concatenated along the batch as the training engine's loader groups them: 6 groups, the 2 global first;
    and the view indices of each group."""
    shapes = [(f, global_size) for f in GLOBAL_FRAMES] + [(f, local_size) for f in LOCAL_FRAMES]
    groups: list[list[torch.Tensor]] = []
    group_views: list[list[int]] = []
    for index, (frames, size) in enumerate(shapes):
        view = torch.randn(batch, 3, frames, size, size, device=device)
        if index > 0 and shapes[index - 1] == (frames, size):
            groups[-1].append(view)
            group_views[-1].append(index)
        else:
            groups.append([view])
            group_views.append([index])
    return [torch.cat(group) for group in groups], group_views



def build(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Student and EMA teacher."""
    if args.tiny:
        backbone = build_model("endofm_vit_micro", drop_path_rate=0.1)
        head = DINOHead(in_dim=backbone.embed_dim, out_dim=1024, hidden_dim=128, bottleneck_dim=32)
    else:
        backbone = build_model("endofm_vit_base")
        head = DINOHead(in_dim=backbone.embed_dim)
    if args.original:
        backbone = OriginalVisionTransformer(backbone.config)
    else:
        backbone.set_grad_checkpointing(args.grad_checkpointing, blocks=args.checkpoint_blocks)
    student = Network(backbone, head).to(device)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    if args.compile:  # after the copy, so that each compiled call belongs to its own module
        student.backbone.compile(dynamic=False)
        teacher.backbone.compile(dynamic=False)
    return student, teacher


def pick_sdpa_backends(device: torch.device, dtype: torch.dtype) -> tuple[list[SDPBackend], str]:
    """Flash attention alone where it runs on these (strided) inputs; else flash + memory-efficient."""
    if device.type != "cuda":
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH], "cpu flash"
    q = torch.randn(64, 8, 12, 3, 64, device=device, dtype=dtype).permute(3, 1, 2, 0, 4)[0]  # strided like ours
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            F.scaled_dot_product_attention(q, q, q)
        return [SDPBackend.FLASH_ATTENTION], "flash"
    except RuntimeError:
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION], "flash+efficient (flash refused)"


def top_device_ops(events: list, count: int) -> tuple[list[dict], float]:
    """The ``count`` operators and kernels of a profiled step with the most self time on the device (the
    CPU where there is no device time), and the summed self time of all in seconds."""
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    events = kernels or events

    def self_time(event) -> float:
        return event.self_device_time_total if kernels else event.self_cpu_time_total

    total = sum(self_time(e) for e in events) or 1.0
    ranked = sorted(events, key=self_time, reverse=True)[:count]
    rows = [{"name": e.key, "ms": self_time(e) / 1e3, "calls": e.count, "share": self_time(e) / total} for e in ranked]
    return rows, total / 1e6


def main() -> None:
    """Run the step, print a summary and the checks, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=8, help="clips per step (per GPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--checkpoint-blocks", type=int, default=None,
                        help="with --grad-checkpointing: only the first N blocks (default all)")
    parser.add_argument("--no-bf16", action="store_true", help="float32 instead of bf16 autocast")
    parser.add_argument("--sdpa", choices=("flash", "auto"), default="flash",
                        help="flash: the flash kernel alone; auto: the kernel torch picks")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the backbones (one graph per view shape; compiled during warm-up)")
    parser.add_argument("--one-graph", action="store_true",
                        help="all views in one graph and one backward (as the original), not one per group")
    parser.add_argument("--profile", action="store_true", help="print the ops that take the most time of a step")
    parser.add_argument("--original", action="store_true",
                        help="the original module structure, fp16 autocast with a gradient scaler")
    parser.add_argument("--tiny", action="store_true", help="micro model, 64/32 px, batch 2: a CPU self-test")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    global_size, local_size = (64, 32) if args.tiny else (224, 96)
    batch = 2 if args.tiny else args.batch
    if args.original and args.grad_checkpointing:
        parser.error("the original module structure has no gradient checkpointing")
    half = torch.float16 if args.original and device.type == "cuda" else torch.bfloat16
    dtype = torch.float32 if args.no_bf16 else half
    student, teacher = build(args, device)
    params = [p for p in student.parameters() if p.requires_grad]
    groups, lr = decay_groups(student.named_parameters()), 5e-4 * batch / 256
    make = torch.optim.AdamW if args.original else adamw  # torch's default AdamW, as the original builds it
    optimizer = make(groups, lr=lr, weight_decay=0.04)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = DINOLoss(student.head.last_layer.weight_v.shape[0], len(GLOBAL_FRAMES + LOCAL_FRAMES)).to(device)
    views, group_views = make_views(batch, global_size, local_size, device)
    one_graph = args.one_graph or args.original
    parts = [list(range(len(views)))] if one_graph else [[g] for g in range(len(views))]
    if args.original:
        backends, kernel = [SDPBackend.MATH], "none (the original's plain-math attention)"
    elif args.sdpa == "auto":
        backends, kernel = None, "auto"
    else:
        backends, kernel = pick_sdpa_backends(device, dtype)
    autocast = nullcontext() if args.no_bf16 else torch.autocast(device.type, dtype=dtype)

    def kernels_and_precision() -> ExitStack:
        stack = ExitStack()
        if backends:
            stack.enter_context(sdpa_kernel(backends))
        stack.enter_context(autocast)
        return stack

    def step() -> float:
        with kernels_and_precision(), torch.no_grad():
            teacher_out = teacher(views[:2])
            targets = loss_fn.teacher_probabilities(teacher_out, teacher_temp=0.04)
            loss_fn.update_center(teacher_out)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=device)
        for part in parts:
            with kernels_and_precision():
                out = student([views[g] for g in part])
                part_loss = loss_fn.student_loss(out, [v for g in part for v in group_views[g]], targets)
            scaler.scale(part_loss).backward()
            loss += part_loss.detach().float()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 1 - 0.996)
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    losses = [step() for _ in range(args.warmup)]
    missing = [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None]
    if args.grad_checkpointing:  # count model FLOPs, not checkpointing's recomputation
        student.backbone.set_grad_checkpointing(False)
    with FlopCounterMode(display=False) as counter, torch.compiler.set_stance("force_eager"):
        step()
    flops = counter.get_total_flops()
    if args.grad_checkpointing:
        student.backbone.set_grad_checkpointing(True, blocks=args.checkpoint_blocks)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.profile and device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sync()
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profiler:
        step()
        sync()
    profiled_s = time.perf_counter() - start
    events = profiler.key_averages()
    attention_ops = sorted({e.key for e in events if "attention" in e.key})
    top_ops, busy_s = top_device_ops(events, 25) if args.profile else ([], 0.0)
    rss_before_kib = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")
        rss_before_kib = rss_kib("VmRSS")
    times = []
    for _ in range(args.steps):
        sync()
        start = time.perf_counter()
        losses.append(step())
        sync()
        times.append(time.perf_counter() - start)
    s_per_step = statistics.median(times)
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gib = None if rss_before_kib is None else (rss_kib("VmHWM") - rss_before_kib) / 2**20
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
        "model": "original module structure" if args.original else "endofm",
        "batch": batch,
        "view_groups": [list(v.shape) for v in views],
        "dtype": str(dtype),
        "sdpa_kernel": kernel,
        "attention_ops": attention_ops,
        "top_ops": top_ops,
        "profiled_step_s": profiled_s,
        "kernel_time_s": busy_s if args.profile else None,
        "grad_checkpointing": args.grad_checkpointing,
        "compile": args.compile,
        "one_graph": one_graph,
        "checkpointed_blocks": getattr(student.backbone, "checkpointed_blocks", 0),
        "s_per_step": s_per_step,
        "step_times_s": times,
        "peak_memory_gib": peak_gib,
        "flops_per_step": flops,
        "achieved_tflops": flops / s_per_step / 1e12,
        "losses": losses,
    }
    checks = {
        "finite loss": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
        "every trainable parameter got a gradient": not missing,
    }
    if not args.tiny and not args.original and device.type == "cuda":
        checks[f"s/step <= {TARGET_S_PER_STEP}"] = s_per_step <= TARGET_S_PER_STEP
        checks[f"peak memory <= {TARGET_GIB} GiB"] = peak_gib <= TARGET_GIB
    result["checks"] = checks
    mem = "n/a" if peak_gib is None else f"{peak_gib:.2f} GiB" + (" (growth)" if device.type == "cpu" else "")
    print(f"{result['device']} ({result['model']}): {s_per_step:.3f} s/step, peak {mem}, "
          f"{flops / 1e9:.1f} GFLOP/step, {result['achieved_tflops']:.2f} TFLOP/s, sdpa {kernel}, "
          f"checkpointed blocks {result['checkpointed_blocks']}, {'one graph' if one_graph else 'backward per group'}")
    print(f"  attention operators: {', '.join(attention_ops) or 'none (plain matmul + softmax)'}")
    if args.profile:
        print(f"  profiled step {profiled_s:.3f} s, summed self time of its kernels {busy_s:.3f} s")
    for op in top_ops:
        print(f"  {op['share']:6.1%} {op['ms']:8.2f} ms {op['calls']:6d}x  {op['name'][:90]}")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if not all(v for k, v in checks.items() if k in ("finite loss", "every trainable parameter got a gradient")):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
