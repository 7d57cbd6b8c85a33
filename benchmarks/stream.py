"""Live streaming speed: sustained frames per second and latency p50/p95 of ``endofm stream``'s loop per task and
model size, on a synthetic video played at its own rate (frames dropped when the model is slower) and as fast
as the model goes.

Models have random weights at the released architectures' sizes (``--arch endofm_vit_base``: the PolypDiag
classifier at 8 x 224, the STFT detector at 640 x 640 with 256 channels, the TransUNet at 224) or smaller
ones (``endofm_vit_micro`` etc.: the package's CPU sizes). ``--runtime onnxruntime`` exports each model
first and streams the ONNX file.

    python benchmarks/stream.py --arch endofm_vit_base --device cuda --seconds 10 --out stream_gpu.json
    python benchmarks/stream.py --arch endofm_vit_micro --seconds 5 --out stream_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from endofm.data.encoding import write_video
from endofm.data.synthetic import render_video
from endofm.models.classification import ClassifierNetwork
from endofm.models.detection.stft import STFTConfig, STFTDetector
from endofm.models.detection.transform import STFT_INPUT
from endofm.models.heads import LinearClassifier
from endofm.models.registry import build_model, model_spec
from endofm.models.segmentation import TransUNet, TransUNetConfig
from endofm.stream import Stream
from endofm.stream.torch_nets import finetuned_predictor
from endofm.tasks.base import LoadedFinetuned
from endofm.tasks.classify import CLASSIFY_DEFAULT_DATA, input_spec
from endofm.tasks.segment import TRANSUNET_INPUT


def build(task: str, arch: str) -> LoadedFinetuned:
    """A random-weight model of ``task`` with the backbone ``arch`` (released input sizes for ViT-B)."""
    config = model_spec(arch).config
    base = arch == "endofm_vit_base"
    if task == "classify":
        backbone = build_model(arch)
        size = 224 if base else config.img_size[0]
        data = {**CLASSIFY_DEFAULT_DATA, "size": size}
        return LoadedFinetuned("classify", ClassifierNetwork(backbone, LinearClassifier(config.embed_dim, 2)).eval(),
                               input_spec(data), arch, "polypdiag", {"data": data})
    if task == "detect":
        size = 640 if base else 128
        model = STFTDetector(STFTConfig(dataclasses.replace(config, drop_path_rate=0.0),
                                        out_channels=256 if base else 64, num_convs=4 if base else 1)).eval()
        return LoadedFinetuned("detect", model, dataclasses.replace(STFT_INPUT, size=(size, size)), arch, "stft")
    sizes = {} if base else {"resnet_width": 32, "resnet_units": (1, 1, 1), "decoder_channels": (16, 16, 16, 16)}
    model = TransUNet(TransUNetConfig(hidden=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
                                      **sizes)).eval()
    return LoadedFinetuned("segment", model, dataclasses.replace(TRANSUNET_INPUT, frames=4), arch, "transunet")


def predictor_of(loaded: LoadedFinetuned, device: str, runtime: str, folder: Path):
    if runtime == "torch":
        return finetuned_predictor(loaded, torch.device(device))
    from endofm.export.onnx import export_onnx
    from endofm.export.runtime import onnx_predictor

    path = folder / f"{loaded.task}.onnx"
    export_onnx(loaded, path, overwrite=True)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
    return onnx_predictor(path, providers=providers)


def main() -> None:
    """Stream each task live and as fast as possible; print and write the summaries."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="endofm_vit_micro")
    parser.add_argument("--tasks", nargs="+", default=["classify", "detect", "segment"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime"))
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the synthetic video (30 frames/s)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {"arch": args.arch, "device": args.device, "runtime": args.runtime, "torch": torch.__version__,
               "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
               "tasks": {}}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = write_video(folder / "live.mp4", render_video(0, round(30 * args.seconds), 360, polyp=True).frames,
                            fps=30)
        for task in args.tasks:
            predictor = predictor_of(build(task, args.arch), args.device, args.runtime, folder)
            predictor.push(render_video(1, 1, 360).frames[0])  # warm-up (allocations, kernels)
            results["tasks"][task] = {}
            for mode, live in (("live", True), ("as_fast_as_possible", False)):
                predictor.reset()
                stream = Stream(str(video), predictor, live=live, stall_timeout=120)
                for _ in stream:
                    pass
                summary = stream.summary()
                results["tasks"][task][mode] = {key: summary[key] for key in (
                    "frames_in", "frames_out", "frames_dropped", "latency_ms", "sustained_fps")}
                print(f"{task:9s} {mode:20s} {summary['sustained_fps']:7.2f} frames/s  latency p50 "
                      f"{summary['latency_ms']['p50']} ms p95 {summary['latency_ms']['p95']} ms  dropped "
                      f"{summary['frames_dropped']}/{summary['frames_in']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
