#!/usr/bin/env bash
# One short GPU session on an H200-class GPU. RUNS picks what runs, in this order (default: all but compile,
# about 7 minutes; one run of each step variant takes under a minute):
#   flash     the released ViT-B pretraining step (10 views, batch 8, bf16, flash SDPA, one backward per group
#             of views as the engine runs it) + a kernel profile
#   onegraph  the same with all views in one graph (as the original)
#   auto      the same with the SDPA kernel torch picks
#   ckpt      the same with gradient checkpointing of all blocks; ckpt6: of the first 6 blocks
#   original  the original module structure in fp16 with a gradient scaler
#   compile   torch.compile'd backbones (compilation takes minutes: give it a call of its own)
#   compile_ckpt6  the same with checkpointing of the first 6 blocks (fewer launches may make recompute cheap)
#   engine    `endofm pretrain` with the endofm_vit_base recipe on a synthetic corpus
#   demo      `endofm demo --quick --device cuda` (every task end to end)
#   stream    benchmarks/stream.py: the released ViT-B classifier, STFT and TransUNet on a live 30 frames/s video
#             (sustained frames/s, latency p50/p95), PyTorch then ONNX Runtime
# Results land in $OUT (or ./gpu_results): step*.json, pretrain_log.jsonl, demo_report.md, summary.json, gpu.log.
# Usage: bash benchmarks/gpu.sh; RUNS="compile" bash benchmarks/gpu.sh (repository root; PYTHON picks the
# interpreter; wheels in .whl/ are installed first where the machine lacks packages, e.g. PyAV)
set -uo pipefail
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUTDIR=${OUT:-gpu_results}
WORK=${TMPDIR:-/tmp}/endofm_gpu
mkdir -p "$OUTDIR" "$WORK"
exec > >(tee "$OUTDIR/gpu.log") 2>&1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl
  export PYTHONPATH="$WORK/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv || true

RUNS=${RUNS:-flash onegraph auto ckpt ckpt6 original engine demo stream}
STEP="timeout 150 $PYTHON benchmarks/gpu_pretrain_step.py"
for run in $RUNS; do
  echo "== $run =="
  case $run in
    flash) $STEP --profile --out "$OUTDIR/step.json" ;;
    onegraph) $STEP --one-graph --out "$OUTDIR/step_onegraph.json" ;;
    auto) $STEP --sdpa auto --out "$OUTDIR/step_auto.json" ;;
    ckpt) $STEP --grad-checkpointing --out "$OUTDIR/step_ckpt.json" ;;
    ckpt6) $STEP --grad-checkpointing --checkpoint-blocks 6 --out "$OUTDIR/step_ckpt6.json" ;;
    original) $STEP --original --out "$OUTDIR/step_original.json" ;;
    compile) timeout 500 "$PYTHON" benchmarks/gpu_pretrain_step.py --compile --out "$OUTDIR/step_compile.json" ;;
    compile_ckpt6) timeout 500 "$PYTHON" benchmarks/gpu_pretrain_step.py --compile --grad-checkpointing \
      --checkpoint-blocks 6 --out "$OUTDIR/step_compile_ckpt6.json" ;;
    engine)
      timeout 90 "$PYTHON" -m endofm data synth "$WORK/corpus" --videos 64
      timeout 150 "$PYTHON" -m endofm pretrain --config endofm_vit_base \
        data.manifest="$WORK/corpus/pretrain" run.out_dir="$WORK/pretrain" run.batch_size=8 run.max_steps=30 \
        run.num_workers=12 run.checkpoint_every=0
      cp "$WORK/pretrain/log.jsonl" "$OUTDIR/pretrain_log.jsonl" ;;
    stream)
      timeout 240 "$PYTHON" benchmarks/stream.py --arch endofm_vit_base --device cuda --seconds 10 \
        --out "$OUTDIR/stream.json"
      timeout 240 "$PYTHON" benchmarks/stream.py --arch endofm_vit_base --device cuda --seconds 10 \
        --runtime onnxruntime --out "$OUTDIR/stream_onnx.json" ;;
    demo)
      timeout 240 "$PYTHON" -m endofm demo --quick --device cuda --out "$WORK/demo"
      cp "$WORK/demo/report.md" "$OUTDIR/demo_report.md" ;;
    *) echo "unknown run $run (flash onegraph auto ckpt ckpt6 original compile compile_ckpt6 engine demo stream)" ;;
  esac
done

echo "== summary =="
"$PYTHON" - "$OUTDIR" <<'EOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
load = lambda name: json.loads((out / name).read_text()) if (out / name).exists() else None
names = ("", "_onegraph", "_auto", "_ckpt", "_ckpt6", "_original", "_compile", "_compile_ckpt6")
ours, onegraph, auto, ckpt, ckpt6, orig, compiled, compiled_ckpt6 = (load(f"step{s}.json") for s in names)
summary = {}
runs = (("ours bf16 flash", ours), ("ours one graph", onegraph), ("ours bf16 auto", auto),
        ("ours + checkpointing", ckpt), ("ours + ckpt 6 blocks", ckpt6), ("original fp16", orig), ("ours + torch.compile", compiled),
        ("compile + ckpt 6 blocks", compiled_ckpt6))
for name, r in runs:
    if r:
        print(f"{name:22s} {r['s_per_step']:.3f} s/step  {r['peak_memory_gib']:.2f} GiB  "
              f"{r['achieved_tflops']:.0f} TFLOP/s  {', '.join(r.get('attention_ops', []))}")
for name, r in (("flash", ours), ("onegraph", onegraph), ("auto", auto), ("compile", compiled), ("compile_ckpt6", compiled_ckpt6)):
    if r and orig:
        summary[f"{name}_speedup_vs_original"] = orig["s_per_step"] / r["s_per_step"]
        summary[f"{name}_memory_vs_original"] = r["peak_memory_gib"] / orig["peak_memory_gib"]
for name, r in (("checkpointing", ckpt), ("checkpointing_6_blocks", ckpt6)):
    if ours and r:
        summary[f"{name}_memory_ratio"] = r["peak_memory_gib"] / ours["peak_memory_gib"]
        summary[f"{name}_time_ratio"] = r["s_per_step"] / ours["s_per_step"]
log = out / "pretrain_log.jsonl"
if log.exists():
    rates = [r["clips_per_s"] for r in map(json.loads, log.read_text().splitlines()) if "clips_per_s" in r][5:]
    if rates:
        summary["engine_clips_per_s_median"] = statistics.median(rates)
        summary["engine_s_per_step_batch8"] = 8 / statistics.median(rates)
    peaks = [r["peak_gpu_memory_gib"] for r in map(json.loads, log.read_text().splitlines()) if "peak_gpu_memory_gib" in r]
    if peaks:
        summary["engine_peak_memory_gib"] = max(peaks)
print(json.dumps(summary, indent=2))
(out / "summary.json").write_text(json.dumps(summary, indent=2))
EOF
