"""ONNX Runtime on a CPU against PyTorch eager: the backbone at ViT-B 8 x 224 and the downstream models, fp32
and int8 each (PyTorch: the package's ``--int8``, dynamic quantisation of the linear layers; ONNX Runtime: its
dynamic quantisation of the exported file).

The four run interleaved round by round on the same input (the machine may be shared: the ratio is the median
of the rounds' ratios, with the spread). Models have random weights.

    python benchmarks/onnx_runtime.py --models backbone classify --rounds 5 --out onnx_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from stream import build  # benchmarks/stream.py, beside this script

from endofm.export.onnx import export_onnx, quantize_int8
from endofm.export.runtime import load_exported
from endofm.models import cpu_kernels
from endofm.models.quantize import quantize_int8 as eager_int8
from endofm.models.registry import build_model


def _model(name: str, arch: str) -> tuple[torch.nn.Module, object, torch.Tensor]:
    """(PyTorch module, what to export, input) of ``name``."""
    if name == "backbone":
        model = build_model(arch).eval()
        return model, model, torch.randn(1, 3, model.config.num_frames, *model.config.img_size)
    loaded = build(name, arch)
    frames = 8 if name == "classify" else 4
    size = loaded.input_spec.size
    return loaded.model, loaded, torch.randn(1, 3, frames, *size)


def timed(fn, x) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main() -> None:
    """Time each model in the four ways; print and write the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="endofm_vit_base")
    parser.add_argument("--models", nargs="+", default=["backbone", "classify", "segment"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {"arch": args.arch, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
               "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, exportable, x = _model(name, args.arch)
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(exportable, path)
            ort32 = load_exported(path)[1]
            ort8 = load_exported(quantize_int8(path))[1]
            eager8 = eager_int8(model)
            array = x.numpy()

            def eager(module: torch.nn.Module):
                def run(clip: torch.Tensor) -> None:
                    with torch.inference_mode():
                        module(clip)
                return run

            runs = {"eager_fp32": (eager(model), x), "eager_int8": (eager(eager8), x),
                    "onnxruntime_fp32": (ort32, array), "onnxruntime_int8": (ort8, array)}
            for fn, value in runs.values():  # warm-up
                fn(value)
            seconds = {key: [] for key in runs}
            for _ in range(args.rounds):
                for key, (fn, value) in runs.items():
                    seconds[key].append(timed(fn, value))
            ratios = [e / o for e, o in zip(seconds["eager_fp32"], seconds["onnxruntime_fp32"], strict=True)]
            with torch.inference_mode(), cpu_kernels.enabled(True):
                expected = model(x).float().numpy()
            entry = {key: round(statistics.median(values) * 1000, 1) for key, values in seconds.items()}
            entry = {"ms_median": entry, "onnxruntime_fp32_speedup_vs_eager": round(statistics.median(ratios), 3),
                     "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)],
                     "onnxruntime_fp32_max_abs_diff": float(np.abs(ort32(array) - expected).max()),
                     "input": list(x.shape)}
            results["models"][name] = entry
            print(name, json.dumps(entry), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
