"""What one pass over the demo's synthetic KUMC training frames costs on the CPU: the STFT recipe
(``detect_stft_cpu``) against the lighter FCOS recipe the demo uses (``detect_cpu``), each from random micro
weights and including its evaluations, to decide which detector the demo trains.

    OMP_NUM_THREADS=1 python benchmarks/detect_cpu_pass.py --work /tmp/detect-pass
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from endofm.config import load_config
from endofm.data.datasets.kumc import KUMCDataset
from endofm.data.synthetic import write_kumc
from endofm.tasks.detect.config import DetectConfig
from endofm.tasks.detect.train import finetune_detect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="detect-pass", help="scratch folder (emptied first)")
    parser.add_argument("--videos", type=int, default=20, help="KUMC videos (the demo writes 20)")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    root = write_kumc(work / "kumc", args.videos, seed=0)
    print(f"training frames: {len(KUMCDataset(root, 'train', skip_unannotated=True))}")
    for recipe in ("detect_cpu", "detect_stft_cpu"):
        start = time.perf_counter()
        config = load_config(DetectConfig, recipe, [f"data.root={root}", f"run.out_dir={work / recipe}",
                                                    "run.epochs=1", "run.progress=false"], kind="finetune")
        finetune_detect(config)
        report = json.loads((work / recipe / "metrics.json").read_text())
        test = {key: round(report["test"][key], 3) for key in ("map_50", "box_f1", "frame_f1_original")}
        print(f"{recipe}: one pass in {time.perf_counter() - start:.1f} s (evaluations included), test {test}")


if __name__ == "__main__":
    main()
