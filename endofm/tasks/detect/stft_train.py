"""Training the STFT detector as the original (``endofm finetune detect`` with ``detector: stft``): the
network from the pretrained backbone, the original's SGD parameter groups, its training step and the recipe
(:class:`STFTRecipe`, driven by :func:`finetune_stft`)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from endofm.data.datasets.kumc import KUMCDataset
from endofm.engine.distributed import DistributedContext
from endofm.engine.logging import plot_curves
from endofm.errors import CheckpointError, ConfigError, TrainingError
from endofm.io import atomic_write_text
from endofm.models.backbone import EndoFMBackbone
from endofm.models.detection.stft import FPN_STRIDES, STFTConfig, STFTDetector
from endofm.models.detection.stft_loss import stft_losses
from endofm.models.detection.transform import STFT_INPUT
from endofm.tasks.config import FinetuneModelConfig
from endofm.tasks.detect.config import DetectConfig, STFTModelConfig
from endofm.tasks.detect.data import STFTTrainFrames, collate_one
from endofm.tasks.detect.io import MODEL_NAME, save_folder
from endofm.tasks.detect.stft_inference import STFTSplit, evaluate_split
from endofm.tasks.finetune import FinetuneRecipe, build_backbone, is_better, run_finetune
from endofm.tasks.results import json_safe


def build_stft_network(model: FinetuneModelConfig, sizes: STFTModelConfig) -> STFTDetector:
    """An STFT detector to fine-tune: the body is the backbone of ``model.init`` (every tensor of it: blocks,
    norm, embeddings, as the original's ``get_vit_base_patch16_224`` loads the pretrained teacher), with
    ``model.drop_path_rate``; ``fpn1``/``fpn2``, the FPN and the head start at the original's initialisation."""
    backbone = build_backbone(dataclasses.replace(model, grad_checkpointing=False))
    config = STFTConfig(backbone=backbone.config, out_channels=sizes.out_channels, num_convs=sizes.num_convs,
                        num_classes=len(KUMCDataset.classes))
    detector = STFTDetector(config)
    missing, unexpected = detector.backbone.body.load_state_dict(backbone.state_dict(), strict=False)
    if unexpected or any(not key.startswith(("fpn1.", "fpn2.")) for key in missing):
        raise CheckpointError(f"{model.init}: the backbone does not fit the STFT body (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    detector.backbone.body.set_grad_checkpointing(model.grad_checkpointing)
    return detector.train()


def original_optimizer(model: STFTDetector, lr: float = 0.0025, weight_decay: float = 1e-4, momentum: float = 0.9,
                       bias_lr_factor: float = 2.0, weight_decay_bias: float = 0.0) -> torch.optim.SGD:
    """The original's SGD: one group per parameter, biases at ``bias_lr_factor`` x lr with
    ``weight_decay_bias``, every other parameter (norms and embeddings included) with ``weight_decay``."""
    groups = [{"params": [p], "lr": lr * (bias_lr_factor if "bias" in name else 1.0),
               "weight_decay": weight_decay_bias if "bias" in name else weight_decay, "initial_lr": None}
              for name, p in model.named_parameters() if p.requires_grad]
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def train_step(model: STFTDetector, sample: dict[str, Any],
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The five losses of one sample as the original trains: the key frame and its references through the
    backbone as ONE clip, the head on all of them, the losses on the key frame."""
    frames = sample["frames"].to(device)
    outputs = model(frames, clip=True)
    return stft_losses(outputs, sample["boxes"].to(device), sample["labels"].to(device), FPN_STRIDES)


class STFTRecipe(FinetuneRecipe):
    """The original STFT training (:func:`train_step`, :func:`original_optimizer`,
    :class:`~endofm.tasks.detect.config.IterationSchedule`), evaluated with the original's test-time video path
    (:func:`~endofm.tasks.detect.stft_inference.evaluate_split` of the validation and test splits, as
    :class:`~endofm.tasks.detect.stft_inference.STFTSplit`) every ``test_period`` iterations; see
    :func:`finetune_stft`."""

    task = "detect"
    default_metric = "map_50"
    evaluator = evaluate_split
    config: DetectConfig

    @classmethod
    def one_sample_per_process(cls, config: DetectConfig) -> str | None:
        return "detector stft (as the original)"

    def __init__(self, config: DetectConfig, context: DistributedContext, *args: Any) -> None:
        if config.stft.empty_frames == "skip_iteration" and (context.world_size > 1 or config.run.precision == "fp16"):
            raise ConfigError("stft.empty_frames=skip_iteration needs one process and no fp16 loss scaling (a "
                              "skipped iteration has no gradient); use stft.empty_frames=leave_out")
        super().__init__(config, context, *args)
        self.total = self.config.iterations.max_iter
        self.unused_parameters = True  # the offset convolutions run without gradient, as the original's
        self.pending: dict[str, float] = {}
        self.last_eval: tuple[int, dict[str, Any]] | None = None
        self.best_iteration, self.best_metrics = 0, None
        self.steps_per_epoch = 1
        self.skipped_iterations, self.last_skipped = 0, False

    def build_network(self) -> STFTDetector:
        return build_stft_network(self.config.model, self.config.stft)

    def configure(self, steps_per_epoch: int, epochs: int) -> torch.optim.Optimizer:
        schedule, optim = self.config.iterations, self.config.optim
        limits = [schedule.max_iter, epochs * steps_per_epoch, self.config.run.max_steps or schedule.max_iter]
        self.total, self.steps_per_epoch = min(limits), steps_per_epoch
        return original_optimizer(self.network, optim.lr, optim.weight_decay, optim.momentum,
                                  schedule.bias_lr_factor, schedule.weight_decay_bias)

    def before_step(self, step: int, epoch: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        # the original's scheduler steps only on the iterations it did not skip
        factor = self.config.iterations.factor(step - self.skipped_iterations)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return {"lr": self.config.optim.lr * factor}

    def loss_parts(self, network: nn.Module, batch: dict, epoch: int) -> list[Any]:
        """No part for a frame without boxes under ``stft.empty_frames=skip_iteration``: no gradient, so the
        optimiser leaves every parameter (and its momentum) as it is, as the original's skipped iteration."""
        self.last_skipped = self.config.stft.empty_frames == "skip_iteration" and not len(batch["labels"])
        if self.last_skipped:
            self.skipped_iterations += 1
            return []
        return super().loss_parts(network, batch, epoch)

    def compute_loss(self, network: nn.Module, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        losses = train_step(network, batch, self.device)
        return sum(losses.values()), {k: float(v.detach()) for k, v in losses.items()}

    def batch_size(self, batch: dict) -> int:
        return 1

    def parts(self) -> tuple[EndoFMBackbone, nn.Module]:
        return self.network.backbone.body, self.network

    def after_step(self, step: int) -> None:
        iteration, period = step + 1, self.config.iterations.test_period
        if self.last_skipped or (iteration != self.total and not (period and iteration % period == 0)):
            return  # the original's skipped iteration passes its evaluation by too
        metrics = self.evaluate(self.val_set)
        if self.metric not in metrics:
            raise ConfigError(f"selection.metric {self.metric!r} is not one of {sorted(metrics)}")
        self.last_eval = (iteration, metrics)
        value = float(metrics[self.metric])
        if is_better(value, self.best_score):
            self.best_score, self.best_iteration, self.best_metrics = value, iteration, metrics
            if self.config.iterations.keep == "best":
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
        scalars = {f"val_{k}": int(v) if isinstance(v, (int, np.integer)) else float(v)
                   for k, v in metrics.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
        self.history.append({"iteration": iteration, **scalars})
        self.pending = scalars

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        pending, self.pending = self.pending, {}
        return pending

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_iteration": self.best_iteration, "best_metrics": self.best_metrics,
                "last_eval": self.last_eval, "skipped_iterations": self.skipped_iterations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.best_iteration, self.best_metrics = state["best_iteration"], state["best_metrics"]
        self.last_eval = state["last_eval"]
        self.skipped_iterations = state.get("skipped_iterations", 0)

    def save_model(self, directory: Path, extra: dict[str, Any]) -> Path:
        sizes = self.config.stft
        spec = dataclasses.replace(STFT_INPUT, size=(sizes.size, sizes.size))
        data = {"size": sizes.size, "reference_seed": sizes.reference_seed, "splits": self.split_names}
        return save_folder(directory, self.network, spec, {"detector": MODEL_NAME, "data": data, **extra})

    def before_finish(self) -> None:
        """The kept model's test metrics, evaluated by every process (each its share of the videos)."""
        schedule, names = self.config.iterations, self.split_names
        if schedule.keep == "best":
            if self.best_state is None:
                return  # :meth:`finish` says why
            self.network.load_state_dict(self.best_state)
        chosen = self.best_iteration if schedule.keep == "best" else self.total
        same = names["val"] == names["test"]
        if same and schedule.keep == "best":
            self.test_metrics = self.best_metrics
        elif same and self.last_eval is not None and self.last_eval[0] == chosen:
            self.test_metrics = self.last_eval[1]
        else:
            self.test_metrics = self.evaluate(self.test_set)

    def finish(self, out_dir: Path) -> dict[str, str]:
        schedule, names = self.config.iterations, self.split_names
        if schedule.keep == "best":
            if self.best_state is None:
                raise TrainingError(f"no validation result was finite in {out_dir}; nothing to select (check the "
                                    "data and the learning rate)")
            chosen = self.best_iteration
            protocol = (f"the model of iteration {chosen} of {self.total}, chosen on {names['val']} by "
                        f"{self.metric} (evaluated every {schedule.test_period or self.total} iterations)")
            if names["val"] == names["test"]:
                protocol = f"select-on-test: {protocol}; the test metrics are optimistic"
        else:
            chosen = self.total
            protocol = f"the model after the last iteration ({self.total}); nothing selected"
        if names["test"] == "val":
            protocol = (f"the original protocol: trained on {names['train']}2019, evaluated on val2019 (the "
                        f"original's DATASETS.TEST, the split the paper reports); {protocol}")
        test_metrics = self.test_metrics
        select_on_test = schedule.keep == "best" and names["val"] == names["test"]
        model_dir = self.save_model(out_dir / "model", {"selection": {
            "metric": self.metric, "keep": schedule.keep, "iteration": chosen, "protocol": protocol}})
        report = {"task": self.task, "detector": MODEL_NAME, "protocol": protocol, "select_on_test": select_on_test,
                  "splits": names, "selection_metric": self.metric, "keep": schedule.keep,
                  "iterations": self.total, "iteration": chosen,
                  "best_epoch": max(1, math.ceil(chosen / self.steps_per_epoch)), "best_val": self.best_score,
                  "test": test_metrics, "val_history": self.history, "model": str(model_dir)}
        self.report = json_safe(report)
        metrics_path = atomic_write_text(out_dir / "metrics.json", json.dumps(self.report, indent=2) + "\n")
        keys = sorted({k for row in self.history for k, v in row.items()
                       if k != "iteration" and not isinstance(v, int)})  # counts are the same every evaluation
        plot_curves(self.history, keys, out_dir / "plots", x_key="iteration")
        return {"model": str(model_dir), "metrics": str(metrics_path), "plots": str(out_dir / "plots")}


def finetune_stft(config: DetectConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune the STFT detector as the original (``config`` with ``detector: stft``).

    The run is iteration-based as the original's: ``iterations.max_iter`` iterations of one sample each,
    passes over the training frames in a new random order each (the original's random sampler repeated
    until ``MAX_ITER``). ``run.epochs`` counts passes: it is an upper bound (the recipes set it to
    ``max_iter``, so that the iterations decide) and the run records the passes its iterations take; a smaller
    ``run.epochs`` or ``run.max_steps`` ends it sooner. The learning rate follows the iteration count whatever
    the passes. The run folder gets ``model/`` (:func:`~endofm.tasks.detect.io.save_folder`, read by
    ``endofm.load_finetuned``), ``metrics.json`` (frame-level F1 of the original, box P/R/F1 at IoU 0.5, COCO
    mAP) and plots.
    """
    data, sizes, run = config.data, config.stft, config.run
    if not data.root:
        raise ConfigError("data.root is not set: give the KUMC/PolypsSet folder (--data ROOT)")
    splits = data.splits
    test = "test" if splits.test == "auto" else splits.test
    val = test if config.selection.select_on_test else ("val" if splits.val == "auto" else splits.val)
    for split in {val, test}:
        KUMCDataset(data.root, split, skip_unannotated=True)  # the layout's errors before any training
    train = STFTTrainFrames(data.root, splits.train, sizes.size, data.hflip, sizes.empty_frames == "leave_out")
    if not len(train):
        raise ConfigError(f"{data.root}: the {splits.train} split has no annotated frame with a box to train on")
    per_pass = min(len(train), run.epoch_steps or len(train))
    total = min(config.iterations.max_iter, run.max_steps or config.iterations.max_iter, run.epochs * per_pass)
    config = dataclasses.replace(config, run=dataclasses.replace(run, epochs=math.ceil(total / per_pass),
                                                                 max_steps=total))
    names = {"train": splits.train, "val": val, "test": test}
    evaluation = {name: STFTSplit(data.root, split, sizes.size, sizes.reference_seed, sizes.queue)
                  for name, split in (("val", val), ("test", test))}
    return run_finetune(config, STFTRecipe, (train, evaluation["val"], evaluation["test"], names), collate_one,
                        resume)
