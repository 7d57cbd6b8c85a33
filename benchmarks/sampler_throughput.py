"""Throughput of the pretraining view sampler: decoding only the needed frames vs the whole clip.

Three methods build the same 10 views (2 global, 8 local) of the same frames:

- ``union (ours)``: :class:`~endofm.data.views.MultiViewSampler` decodes only the union of the frames the
  views need, resized on decode to a short side of 256, and augments them;
- ``full clip, our views``: decodes every frame of the clip at full size first, then the same augmentation
  code samples the views from it (isolates what decoding less is worth);
- ``original loader``: the work the original Endo-FM loader does per sample: every frame of the clip decoded
  and converted to RGB at full size, each view's frames gathered and turned into float at full size, then
  cropped and resized (bicubic, float), flipped, colour-jittered by blending, made gray and normalised
  channel by channel (written here from the description of the original's data pipeline).

The frames are synthetic endoscopy-like renders (moving gradients when :mod:`endofm.data.synthetic` is not
importable), written twice: as the synthetic corpus is (``corpus``: :func:`endofm.data.encoding.write_video`,
whose x264 settings favour random reads) and as a typical file not prepared for training (``plain``). The
methods read the same files, so the encoding changes what each decode costs, for every method alike, and
how many frames ours can skip.

    python benchmarks/sampler_throughput.py --size 480 640 --out sampler_throughput.json
    python benchmarks/sampler_throughput.py --input ../shared/data/real_videos/*.mp4 --out real.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from endofm.data.encoding import write_video
from endofm.data.normalization import NORMALIZATION
from endofm.data.video import VideoReader
from endofm.data.views import MultiViewConfig, MultiViewSampler, crop_box


def _frames(seed: int, num_frames: int, height: int, width: int) -> tuple[np.ndarray, str]:
    """``num_frames`` RGB frames: a short synthetic render played back and forth, or gradients."""
    try:
        from endofm.data.synthetic import render_video
    except ImportError:
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        frames = [
            np.stack([127 + 120 * np.sin(x / 17 + y / 23 + c + 0.2 * t) for c in range(3)], -1).astype(np.uint8)
            for t in range(num_frames)
        ]
        return np.stack(frames), "gradients"
    base = render_video([seed, 7], min(num_frames, 40), (height, width), fps=30.0).frames
    cycle = np.concatenate([base, base[-2:0:-1]]) if len(base) > 2 else base
    return np.resize(cycle, (num_frames, *cycle.shape[1:])), "endofm.data.synthetic"


ENCODINGS = {
    "corpus": "the synthetic corpus's own encoding (endofm.data.encoding.write_video: random_access_options)",
    "plain": "x264 veryfast, crf 20, a keyframe every --gop frames, B-frames used as references",
}


def write_corpus(
    folder: Path, videos: int, num_frames: int, height: int, width: int, encoding: str, gop: int = 30
) -> tuple[list[Path], str]:
    """Write ``videos`` mp4 files at 30 fps in one of :data:`ENCODINGS`."""
    paths, source = [], ""
    for i in range(videos):
        frames, source = _frames(i, num_frames, height, width)
        path = folder / f"{encoding}_{i}.mp4"
        if encoding == "corpus":
            write_video(path, frames, fps=30.0)
        else:
            with av.open(str(path), "w") as container:
                stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=30)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"g": str(gop), "crf": "20", "preset": "veryfast"}
                for frame in frames:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode())
        paths.append(path)
    return paths, source


def union_views(sampler: MultiViewSampler, path: Path, length: int, generator: torch.Generator) -> list:
    """Views built by decoding only the frames they need, resized on decode."""
    with sampler.open_video(path) as reader:
        return sampler(reader, 0, length, generator)


def full_clip_views(sampler: MultiViewSampler, path: Path, length: int, generator: torch.Generator) -> list:
    """Views built from the whole clip decoded at full size first."""
    with VideoReader(path) as reader:
        clip = reader.read(range(length))
    return sampler(clip, 0, length, generator)


def original_loader_views(sampler: MultiViewSampler, path: Path, length: int, generator: torch.Generator) -> list:
    """The original loader's work: full-size RGB decode of the clip, then float views built from it."""
    with av.open(str(path)) as container:
        decoded = []
        for frame in container.decode(video=0):
            decoded.append(frame.to_rgb().to_ndarray())
            if len(decoded) == length:
                break
    clip = torch.as_tensor(np.stack(decoded))
    config = sampler.config
    mean, std = NORMALIZATION[config.normalization]
    views = []
    for indices, spec in zip(sampler.frame_indices(length, generator), sampler.views, strict=True):
        frames = clip.index_select(0, torch.tensor(indices)).permute(0, 3, 1, 2).float() / 255.0
        top, left, h, w = crop_box(frames.shape[-2], frames.shape[-1], spec.scale, config.ratio, generator)
        frames = torch.nn.functional.interpolate(
            frames[:, :, top : top + h, left : left + w], size=(spec.size, spec.size), mode="bicubic",
            align_corners=False,
        )
        if float(torch.rand((), generator=generator)) < config.flip_p:
            frames = frames.flip(-1)
        if float(torch.rand((), generator=generator)) < config.jitter_p:
            for op in torch.randperm(3, generator=generator).tolist():
                alpha = 1.0 + (2 * float(torch.rand((), generator=generator)) - 1) * config.jitter[op]
                if op == 0:
                    frames = frames * alpha + torch.zeros(frames.shape) * (1 - alpha)
                elif op == 1:
                    gray = _original_gray(frames)
                    gray[:] = gray.mean(dim=(1, 2, 3), keepdim=True)
                    frames = frames * alpha + gray * (1 - alpha)
                else:
                    frames = frames * alpha + _original_gray(frames) * (1 - alpha)
        if float(torch.rand((), generator=generator)) < config.grayscale_p:
            frames = _original_gray(frames)
        normalised = torch.zeros_like(frames)
        for channel in range(3):
            normalised[:, channel] = (frames[:, channel] - mean[channel]) / std[channel]
        views.append(normalised.permute(1, 0, 2, 3).index_select(1, torch.arange(len(indices))))
    return views


def _original_gray(frames: torch.Tensor) -> torch.Tensor:
    """Gray copy of ``[T, 3, H, W]`` frames, written channel by channel as the original does."""
    gray = frames.clone()
    luma = 0.299 * frames[:, 2] + 0.587 * frames[:, 1] + 0.114 * frames[:, 0]
    for channel in range(3):
        gray[:, channel] = luma
    return gray


METHODS = {
    "union (ours)": union_views,
    "full clip, our views": full_clip_views,
    "original loader": original_loader_views,
}


def time_methods(sampler: MultiViewSampler, paths: list[Path], frames: int, clips: int) -> dict:
    """Clips/s of every method on the same clips and seeds, interleaved clip by clip, and the ratios."""
    lengths = []
    for path in paths:
        with VideoReader(path) as reader:
            lengths.append(min(frames, len(reader)))
    for method in METHODS.values():
        method(sampler, paths[0], lengths[0], torch.Generator().manual_seed(0))
    seconds = dict.fromkeys(METHODS, 0.0)
    for rep in range(clips):
        path, length = paths[rep % len(paths)], lengths[rep % len(paths)]
        for name, method in METHODS.items():
            start = time.perf_counter()
            method(sampler, path, length, torch.Generator().manual_seed(rep))
            seconds[name] += time.perf_counter() - start
    rates = {name: clips / total for name, total in seconds.items()}
    ours = rates["union (ours)"]
    return {
        "clip_frames": lengths,
        "mean_file_bytes": sum(p.stat().st_size for p in paths) / len(paths),
        "clips_per_second": rates,
        "speedup": ours / rates["original loader"],
        "speedup_at_equal_augmentation": ours / rates["full clip, our views"],
    }


def run(args: argparse.Namespace) -> dict:
    """Time the methods on each corpus (the given files, or one written per encoding); return the results."""
    height, width = args.size
    sampler = MultiViewSampler(MultiViewConfig(decode_short_side=args.short_side))
    results, source = {}, "given files"
    with tempfile.TemporaryDirectory() as tmp:
        if args.input:
            with VideoReader(args.input[0]) as reader:
                height, width = reader.info.height, reader.info.width
            results["given files"] = time_methods(sampler, list(args.input), args.frames, args.clips)
        else:
            for encoding in args.encodings:
                paths, source = write_corpus(Path(tmp), args.videos, args.frames, height, width, encoding, args.gop)
                results[encoding] = {"encoding": ENCODINGS[encoding], **time_methods(sampler, paths, args.frames,
                                                                                      args.clips)}
    return {
        "video_size": [height, width],
        "decode_short_side": args.short_side,
        "clips_timed_per_method": args.clips,
        "frames": source,
        "plain_keyframe_interval": args.gop,
        "corpora": results,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=150, help="frames per clip (default 150: 5 s at 30 fps)")
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--encodings", nargs="+", choices=sorted(ENCODINGS), default=["corpus", "plain"])
    parser.add_argument("--gop", type=int, default=30, help="keyframe interval of the plain encoding")
    parser.add_argument("--clips", type=int, default=12, help="clips timed per method")
    parser.add_argument("--short-side", type=int, default=256, help="decode short side of the union method")
    parser.add_argument("--input", type=Path, nargs="+", help="time these videos instead of a synthetic corpus")
    parser.add_argument("--out", type=Path, default=Path("sampler_throughput.json"))
    args = parser.parse_args()
    result = run(args)
    height, width = result["video_size"]
    print(f"{height}x{width} clips of up to {args.frames} frames, 10 views, frames: {result['frames']}")
    for name, corpus in result["corpora"].items():
        label = f"{name}: {corpus['encoding']}" if "encoding" in corpus else name
        print(f"\n{label} ({corpus['mean_file_bytes'] / 1e6:.2f} MB per file)")
        print(f"{'method':<36}{'clips/s':>9}")
        for method, rate in corpus["clips_per_second"].items():
            print(f"{method:<36}{rate:>9.2f}")
        print(f"{'speedup vs original loader':<36}{corpus['speedup']:>8.2f}x")
        print(f"{'speedup vs full clip, our views':<36}{corpus['speedup_at_equal_augmentation']:>8.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temp = args.out.with_name(f".{args.out.name}.tmp")
    temp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
