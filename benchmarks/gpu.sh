#!/usr/bin/env bash
# One short GPU session: the released ViT-B pretraining-like step (10 views, batch 8, bf16, flash SDPA),
# without and with gradient checkpointing. Results: $OUT (or ./gpu_results) as JSON and printed lines.
# Usage: bash benchmarks/gpu.sh            (from the repository root; set PYTHON to pick an interpreter)
set -euo pipefail
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
OUTDIR=${OUT:-gpu_results}
mkdir -p "$OUTDIR"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
timeout 240 "$PYTHON" benchmarks/gpu_pretrain_step.py --out "$OUTDIR/step.json"
timeout 240 "$PYTHON" benchmarks/gpu_pretrain_step.py --grad-checkpointing --out "$OUTDIR/step_ckpt.json"
