"""Throughput of the pretraining view sampler: decoding only the needed frames vs the whole clip.

Both methods build the same 10 views (2 global, 8 local) with the same augmentation code; they differ in
decoding. ``union`` decodes only the union of the frames the views need, resized on decode to a short side
of 256; ``full clip`` decodes every frame of the clip at full size first and then samples the views from
it, as the original Endo-FM loader does. The corpus is written here (synthetic endoscopy-like videos when
:mod:`endofm.data.synthetic` is importable, moving gradients otherwise).

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

from endofm.data.video import VideoReader
from endofm.data.views import MultiViewConfig, MultiViewSampler


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


def write_corpus(
    folder: Path, videos: int, num_frames: int, height: int, width: int, gop: int = 30
) -> tuple[list[Path], str]:
    """Write ``videos`` h264 mp4 files (a keyframe every ``gop`` frames, 30 fps)."""
    paths, source = [], ""
    for i in range(videos):
        frames, source = _frames(i, num_frames, height, width)
        path = folder / f"video_{i}.mp4"
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
    with VideoReader(path, size=sampler.config.decode_short_side) as reader:
        return sampler(reader, 0, length, generator)


def full_clip_views(sampler: MultiViewSampler, path: Path, length: int, generator: torch.Generator) -> list:
    """Views built from the whole clip decoded at full size first."""
    with VideoReader(path) as reader:
        clip = reader.read(range(length))
    return sampler(clip, 0, length, generator)


def run(args: argparse.Namespace) -> dict:
    """Time both methods on the same clips and seeds, interleaved; return the results."""
    height, width = args.size
    sampler = MultiViewSampler(MultiViewConfig(decode_short_side=args.short_side))
    methods = {"union (ours)": union_views, "full clip (original)": full_clip_views}
    with tempfile.TemporaryDirectory() as tmp:
        if args.input:
            paths, source = list(args.input), "given files"
            with VideoReader(paths[0]) as reader:
                height, width = reader.info.height, reader.info.width
        else:
            paths, source = write_corpus(Path(tmp), args.videos, args.frames, height, width, args.gop)
        lengths = []
        for path in paths:
            with VideoReader(path) as reader:
                lengths.append(min(args.frames, len(reader)))
        for method in methods.values():
            method(sampler, paths[0], lengths[0], torch.Generator().manual_seed(0))
        seconds = dict.fromkeys(methods, 0.0)
        for rep in range(args.clips):
            path, length = paths[rep % len(paths)], lengths[rep % len(paths)]
            for name, method in methods.items():
                start = time.perf_counter()
                method(sampler, path, length, torch.Generator().manual_seed(rep))
                seconds[name] += time.perf_counter() - start
    rates = {name: args.clips / total for name, total in seconds.items()}
    ours, original = rates["union (ours)"], rates["full clip (original)"]
    return {
        "video_size": [height, width],
        "clip_frames": lengths,
        "decode_short_side": args.short_side,
        "clips_timed_per_method": args.clips,
        "corpus": source,
        "keyframe_interval": None if args.input else args.gop,
        "clips_per_second": rates,
        "speedup": ours / original,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=150, help="frames per clip (default 150: 5 s at 30 fps)")
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--gop", type=int, default=30, help="keyframe interval of the written corpus")
    parser.add_argument("--clips", type=int, default=6, help="clips timed per method")
    parser.add_argument("--short-side", type=int, default=256, help="decode short side of the union method")
    parser.add_argument("--input", type=Path, nargs="+", help="time these videos instead of a synthetic corpus")
    parser.add_argument("--out", type=Path, default=Path("sampler_throughput.json"))
    args = parser.parse_args()
    result = run(args)
    height, width = result["video_size"]
    print(f"{height}x{width} clips of {max(result['clip_frames'])} frames, 10 views, {result['corpus']}")
    print(f"{'method':<24}{'clips/s':>10}")
    for name, rate in result["clips_per_second"].items():
        print(f"{name:<24}{rate:>10.2f}")
    print(f"{'speedup':<24}{result['speedup']:>9.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temp = args.out.with_name(f".{args.out.name}.tmp")
    temp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
