"""Runs pretraining and the three fine-tuning tasks at toy scale, with drop path on, in one process launch
(alone, or as one of the processes of ``torchrun``), for :mod:`tests.engine.test_distributed` to compare.

``python ddp_driver.py OUT VIDEOS POLYPDIAG CVC KUMC``: each run writes under ``OUT/<name>``; in a distributed
launch the process also runs the checks that need several processes and writes what it saw to
``OUT/rank<R>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from endofm.config import load_config
from endofm.engine.distributed import init_distributed, mean_count, shutdown
from endofm.errors import TrainingError
from endofm.pretrain import PretrainConfig, pretrain
from endofm.tasks.detect.stft_inference import evaluate_loaded_stft
from endofm.tasks.loading import load_finetuned
from endofm.tasks.registry import TASKS
from endofm.tasks.results import json_safe

PRETRAIN = [
    "model.arch=endofm_vit_micro", "model.drop_path_rate=0.1", "model.head_out_dim=64",
    "model.head_hidden_dim=32", "model.head_bottleneck_dim=16",
    "data.views.global_frames=[2,4]", "data.views.global_size=32", "data.views.local_frames=[2,2]",
    "data.views.local_size=16", "data.views.decode_short_side=40", "optim.warmup_epochs=1", "optim.lr=0.05",
    "run.epochs=2", "run.batch_size=4", "run.num_workers=0", "run.device=cpu", "run.progress=false",
    "run.dist_timeout=120", "loss.centering=sinkhorn",  # its all-reduced normalisation (the CPU recipes')
]
COMMON = ["model.drop_path_rate=0.1", "run.epochs=1", "run.epoch_steps=2", "run.progress=false",
          "run.num_workers=0", "run.dist_timeout=120"]
TASK_RUNS = {  # run name: task, recipe, overrides
    "classify": ("classify", "classify_cpu", ["mode=finetune", "data.size=32", "run.batch_size=4"]),
    "segment": ("segment", "segment_cpu", ["data.size=32", "run.batch_size=2"]),
    "detect": ("detect", "detect_cpu", ["data.short_side=64", "data.max_size=64", "run.batch_size=2"]),
    "detect_stft": ("detect", "detect_stft_cpu", [
        "model.num_heads=2", "stft.size=64", "iterations.max_iter=2", "iterations.warmup_iters=1",
        "iterations.steps=[1]", "iterations.test_period=2"]),  # one sample per process, as the original
    "segment_transunet": ("segment", "segment_transunet_cpu", []),  # one whole sequence per process
}
PER_PROCESS = ("detect_stft", "segment_transunet")
"""Runs of one sample per process (``run.batch_size`` is the number of processes)."""


def main(out: Path, videos: Path, roots: dict[str, Path]) -> None:
    context = init_distributed("cpu", 120)
    pretrain(load_config(PretrainConfig, overrides=[*PRETRAIN, f"data.manifest={videos}",
                                                    f"run.out_dir={out / 'pretrain'}"]))
    for name, (task_name, recipe, extra) in TASK_RUNS.items():
        task = TASKS[task_name]
        config = load_config(task.config_class, recipe, [*COMMON, *extra, f"data.root={roots[task_name]}",
                                                         f"run.out_dir={out / name}",
                                                         *([f"run.batch_size={context.world_size}"]
                                                           if name in PER_PROCESS else [])], kind="finetune")
        task.finetune(config)
    if not context.distributed:
        return
    seen: dict[str, object] = {}
    stopped = load_config(PretrainConfig, overrides=[*PRETRAIN, f"data.manifest={videos}",
                                                     f"run.out_dir={out / 'resumed'}"])
    pretrain(load_config(PretrainConfig, overrides=[*PRETRAIN, f"data.manifest={videos}",
                                                    f"run.out_dir={out / 'resumed'}", "run.max_steps=2"]))
    pretrain(stopped, resume=True)
    try:  # a run folder that each process sees on its own disk
        pretrain(load_config(PretrainConfig, overrides=[*PRETRAIN, f"data.manifest={videos}",
                                                        f"run.out_dir={out / f'unshared{context.rank}'}"]))
    except TrainingError as error:
        seen["unshared"] = str(error)
    seen["mean_count"] = mean_count(torch.tensor(3 * context.rank))
    stft = load_finetuned(out / "detect_stft" / "model")  # evaluated by both processes, each its share of videos
    seen["stft_train"] = json_safe(evaluate_loaded_stft(stft, roots["detect"], "train"))
    (out / f"rank{context.rank}.json").write_text(json.dumps(seen))
    shutdown()


if __name__ == "__main__":
    out, videos, polypdiag, cvc, kumc = map(Path, sys.argv[1:6])
    main(out, videos, {"classify": polypdiag, "segment": cvc, "detect": kumc})
