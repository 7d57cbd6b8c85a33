"""What live (causal) STFT references cost in accuracy: a tiny STFT detector (``detect_stft_cpu``) trained on
synthetic KUMC videos, then its test split scored through the original's video path with references from
the 9 frames before and after each key frame, and with the later ones mirrored to the past (what
``endofm stream`` does), over several seeds of the reference draws. JSON out.

    OMP_NUM_THREADS=2 python benchmarks/stft_causal.py --work /tmp/stft-causal --out stft_causal.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from endofm.config import load_config
from endofm.data.synthetic import write_kumc
from endofm.tasks.detect.config import DetectConfig
from endofm.tasks.detect.stft_inference import evaluate_stft
from endofm.tasks.detect.train import finetune_detect
from endofm.tasks.loading import load_finetuned

METRICS = ("map_50", "map_50_class_agnostic", "box_f1", "frame_f1_original")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="stft-causal", help="scratch folder (emptied first)")
    parser.add_argument("--out", default="stft_causal.json", help="JSON results")
    parser.add_argument("--videos", type=int, default=20, help="synthetic KUMC videos")
    parser.add_argument("--iterations", type=int, default=600, help="training iterations")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the reference draws")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    root = write_kumc(work / "kumc", args.videos, seed=0)
    config = load_config(DetectConfig, "detect_stft_cpu", [
        f"data.root={root}", f"run.out_dir={work / 'run'}", "run.progress=false",
        f"iterations.max_iter={args.iterations}", f"iterations.steps=[{int(args.iterations * 0.8)}]",
        f"iterations.test_period={args.iterations}"], kind="finetune")
    finetune_detect(config)
    loaded = load_finetuned(work / "run" / "model")
    results: dict[str, dict[str, list[float]]] = {}
    for references in ("original", "past"):
        for seed in range(args.seeds):
            metrics = evaluate_stft(loaded.model, root, "test", loaded.input_spec.size, seed=seed,
                                    references=references)
            for key in METRICS:
                results.setdefault(references, {}).setdefault(key, []).append(float(metrics[key]))
    summary = {references: {key: {"mean": statistics.mean(values), "values": values}
                            for key, values in per.items()} for references, per in results.items()}
    report = {"videos": args.videos, "iterations": args.iterations, "seeds": args.seeds, "split": "test",
              "results": summary}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for key in METRICS:
        original, past = (summary[r][key]["mean"] for r in ("original", "past"))
        print(f"{key}: -9..+9 {original:.3f}, past only {past:.3f} (difference {past - original:+.3f})")


if __name__ == "__main__":
    main()
