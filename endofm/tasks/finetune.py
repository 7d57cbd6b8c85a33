"""The fine-tuning run every task shares: the backbone to fine-tune, the recipe (model selection on a
validation split, the run's products) and the driver on the training engine."""

from __future__ import annotations

import dataclasses
import json
import math
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from endofm.config import config_to_dict, save_config
from endofm.engine.cpu import loader_workers
from endofm.engine.distributed import DistributedContext, broadcast_buffers, init_distributed
from endofm.engine.logging import plot_curves
from endofm.engine.optim import build_optimizer
from endofm.engine.runfolder import check_shared, decide_resume
from endofm.engine.schedules import lr_schedule
from endofm.engine.trainer import Recipe, Trainer
from endofm.errors import ConfigError, TrainingError
from endofm.io import atomic_write_text
from endofm.models.backbone import EndoFMBackbone
from endofm.models.factory import load_pretrained
from endofm.models.registry import MODEL_CONFIGS, build_model
from endofm.models.streams import derive, sample_keys
from endofm.tasks.config import FinetuneModelConfig, TaskConfig
from endofm.tasks.folder import save_task_folder
from endofm.tasks.results import json_safe

SELECT_ON_TEST_NOTE = (
    "select-on-test: the best epoch was chosen on the test split (the original Endo-FM protocol); the test "
    "metrics are optimistic and not an honest estimate"
)


def build_backbone(model: FinetuneModelConfig) -> EndoFMBackbone:
    """The backbone to fine-tune, with ``model.init`` weights when given."""
    if model.init is None:
        if model.require_init:
            raise ConfigError("model.init is not set: this recipe fine-tunes pretrained weights; give --init "
                              "endo_fm.pth (or model.require_init=false to train from random weights)")
        backbone = build_model(model.arch, drop_path_rate=model.drop_path_rate)
    else:  # the file's own architecture (model.arch names the random one)
        backbone = load_pretrained(model.init, None, model.num_heads, drop_path_rate=model.drop_path_rate).backbone
    return backbone.train().set_grad_checkpointing(model.grad_checkpointing)


RECORDED_SIZES = ("embed_dim", "depth", "num_heads", "patch_size", "num_frames", "img_size")
"""The backbone sizes a run's ``config.yaml`` names when the backbone came from ``model.init``."""


def backbone_sizes(network: nn.Module) -> dict[str, Any]:
    """The architecture of the Endo-FM transformer in a task network: its backbone's config, or, for the
    TransUNet (which takes over the backbone's blocks), the transformer sizes it keeps."""
    for module in network.modules():
        if isinstance(module, EndoFMBackbone):
            return dataclasses.asdict(module.config)
    c = network.config
    return {"embed_dim": c.hidden, "depth": c.depth, "num_heads": c.num_heads, "mlp_ratio": c.mlp_ratio,
            "qkv_bias": c.qkv_bias}


def architecture_name(sizes: dict[str, Any]) -> str | None:
    """The named architecture (:data:`~endofm.models.registry.MODEL_CONFIGS`) with these sizes (those given,
    drop-path rate aside); None when no named one has them."""
    for name, named in MODEL_CONFIGS.items():
        fields = dataclasses.asdict(named)
        if all(fields[key] == value for key, value in sizes.items() if key != "drop_path_rate"):
            return name
    return None


def save_run_config(config: TaskConfig, network: nn.Module, path: Path) -> Path:
    """Write a run's ``config.yaml`` saying what ran: with ``model.init`` the backbone is the initial weights'
    architecture, so ``model.arch`` names it (when a named one matches) and a first comment line gives its sizes;
    the file still reads back with ``--config``."""
    if config.model.init is None:
        return save_config(config, path)
    sizes = backbone_sizes(network)
    arch = architecture_name(sizes)
    if arch is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, arch=arch))
    shown = ", ".join(f"{key} {'x'.join(map(str, value)) if isinstance(value, tuple) else value}"
                      for key, value in sizes.items() if key in RECORDED_SIZES)
    header = (f"# the backbone that ran has model.init's architecture "
              f"({arch or 'no named one; model.arch is unused'}): {shown}\n")
    return atomic_write_text(path, header + yaml.safe_dump(config_to_dict(config), sort_keys=False))


def is_better(value: float, best: float | None) -> bool:
    """Whether a validation value beats the best so far (NaN never does)."""
    return math.isfinite(value) and (best is None or value > best)


class FinetuneRecipe(Recipe):
    """A task recipe: evaluates on the validation split at epoch ends, keeps the best weights, and at the
    end reports the test metrics of that model and saves it (``model/``, ``metrics.json``, plots)."""

    task: str
    default_metric: str
    evaluator: Callable[..., dict[str, Any]]
    """The task's metrics: ``evaluator(network, dataset, batch_size, device, num_workers)``."""
    plot_keys = ("loss", "lr")

    def __init__(self, config: TaskConfig, context: DistributedContext, val_set: Any, test_set: Any,
                 split_names: dict[str, str]) -> None:
        why = self.one_sample_per_process(config)
        if why and config.run.batch_size != context.world_size:
            raise ConfigError(f"{why} trains one sample per process: run.batch_size must be the number of "
                              f"processes ({context.world_size}), got {config.run.batch_size}")
        self.config, self.device = config, context.device
        self.val_set, self.test_set, self.split_names = val_set, test_set, split_names
        self.metric = config.selection.metric or self.default_metric
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_score: float | None = None
        self.best_epoch = -1
        self.history: list[dict[str, float]] = []
        self.test_metrics: dict[str, Any] = {}
        """The selected model's test metrics (:meth:`before_finish`)."""
        self.report: dict[str, Any] = {}
        """What ``metrics.json`` holds, kept for the caller (:meth:`finish`, main process)."""
        self.network = self.build_network().to(self.device)

    @classmethod
    def one_sample_per_process(cls, config: TaskConfig) -> str | None:
        """Why a recipe trains one sample per process (its samples do not batch), or None: ``run.batch_size``
        must then be the number of processes."""
        return None

    @abstractmethod
    def build_network(self) -> nn.Module:
        """The task's network (backbone and head) from ``self.config``."""

    def evaluate(self, dataset: Any) -> dict[str, Any]:
        """Metrics of the current network on a dataset."""
        run = self.config.run
        workers = loader_workers(run.num_workers)
        return type(self).evaluator(self.network, dataset, run.batch_size, self.device, workers)

    def head_config(self) -> dict[str, Any]:
        """Constructor arguments of the head (recorded in the model folder)."""
        return dict(self.parts()[1].config)

    @abstractmethod
    def parts(self) -> tuple[EndoFMBackbone, nn.Module]:
        """The backbone and the head of the network."""

    def save_model(self, directory: Path, extra: dict[str, Any]) -> Path:
        """Write the selected network as a fine-tuned model folder (``extra`` joins its metadata)."""
        backbone, head = self.parts()
        return save_task_folder(directory, self.task, backbone, head, self.head_config(), self.data_config(), extra)

    def configure(self, steps_per_epoch: int, epochs: int) -> torch.optim.Optimizer:
        self.lr = lr_schedule(self.config.optim, self.config.run.batch_size, epochs, steps_per_epoch)
        return build_optimizer(self.network.named_parameters(), self.config.optim)

    def before_step(self, step: int, epoch: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        lr = float(self.lr[min(step, len(self.lr) - 1)])
        for group in optimizer.param_groups:
            group["lr"] = lr
        return {"lr": lr}

    def data_config(self) -> dict[str, Any]:
        """Preprocessing recorded in the model folder (for predict)."""
        return dataclasses.asdict(self.config.data)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        last = epoch + 1 == self.config.run.epochs
        if (epoch + 1) % self.config.selection.every and not last:
            return {}
        broadcast_buffers(self.network)  # one model on every process, evaluated in shards
        metrics = self.evaluate(self.val_set)
        if self.metric not in metrics:
            raise ConfigError(f"selection.metric {self.metric!r} is not one of {sorted(metrics)}")
        value = float(metrics[self.metric])
        if is_better(value, self.best_score):
            self.best_score, self.best_epoch = value, epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
        scalars = {f"val_{k}": int(v) if isinstance(v, (int, np.integer)) else float(v)
                   for k, v in metrics.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
        self.history.append({"epoch": epoch + 1, **scalars})
        return scalars

    def state_dict(self) -> dict[str, Any]:
        return {"best_state": self.best_state, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_state, self.best_score = state["best_state"], state["best_score"]
        self.best_epoch, self.history = state["best_epoch"], state["history"]

    def before_finish(self) -> None:
        """The selected model's test metrics, evaluated by every process (each its shard)."""
        if self.best_state is not None:
            self.network.load_state_dict(self.best_state)
            self.test_metrics = self.evaluate(self.test_set)

    def finish(self, out_dir: Path) -> dict[str, str]:
        if self.best_state is None:
            raise TrainingError(f"no validation result was finite in {out_dir}; nothing to select (check the data "
                                "and the learning rate)")
        test_metrics = self.test_metrics
        protocol = SELECT_ON_TEST_NOTE if self.config.selection.select_on_test else (
            f"best epoch chosen on the validation split ({self.split_names['val']}), kept apart from the test split")
        model_dir = self.save_model(out_dir / "model", {"selection": {
            "metric": self.metric, "best_epoch": self.best_epoch + 1, "protocol": protocol}})
        report = {"task": self.task, "protocol": protocol, "select_on_test": self.config.selection.select_on_test,
                  "splits": self.split_names, "selection_metric": self.metric, "best_epoch": self.best_epoch + 1,
                  "best_val": self.best_score, "test": test_metrics, "val_history": self.history,
                  "model": str(model_dir)}
        self.report = json_safe(report)
        metrics_path = atomic_write_text(out_dir / "metrics.json", json.dumps(self.report, indent=2) + "\n")
        keys = sorted({k for row in self.history for k, v in row.items() if k != "epoch" and not isinstance(v, int)})
        # counts (val_samples, val_frames) are left out: the same number every epoch
        plot_curves(self.history, keys, out_dir / "plots", x_key="epoch")
        return {"model": str(model_dir), "metrics": str(metrics_path), "plots": str(out_dir / "plots")}


class KeyedSamples(Dataset):
    """A training set whose sample ``index`` draws its random augmentation from a stream seeded by
    ``(seed, epoch, index)``: the same whichever process or DataLoader worker reads it. The global torch
    generator is seeded for the sample and restored after it."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations the next samples draw."""
        self.epoch = int(epoch)
        inner = getattr(self.dataset, "set_epoch", None)
        if inner is not None:
            inner(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        key = derive(sample_keys(self.seed, self.epoch, [index]), AUGMENT_SALT)[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(key))
            return self.dataset[index]


AUGMENT_SALT = 1
"""The sub-stream of a sample's key that its augmentation draws from."""


def run_finetune(config: TaskConfig, recipe_cls: type[FinetuneRecipe], datasets: tuple, collate_fn: Any,
                 resume: bool = False) -> dict[str, Any]:
    """Shared driver: check the run folder, save the config, train with the engine, return the summary (with
    ``report``, what ``metrics.json`` holds, on the main process)."""
    context = init_distributed(config.run.device, config.run.dist_timeout)
    out_dir = Path(config.run.out_dir)
    check_shared(out_dir, context)
    resume = decide_resume(out_dir, context, resume, config_to_dict(config))
    train, val, test, names = datasets
    if config.run.batch_size > len(train):
        raise ConfigError(f"run.batch_size={config.run.batch_size} is larger than the training set ({len(train)})")
    if config.run.batch_size % context.world_size:
        raise ConfigError(f"run.batch_size={config.run.batch_size} (the global batch) does not divide over "
                          f"{context.world_size} processes: use a multiple of {context.world_size}")
    torch.manual_seed(config.run.seed)
    recipe = recipe_cls(config, context, val, test, names)
    if context.is_main:
        save_run_config(config, recipe.network, out_dir / "config.yaml")
    trainer = Trainer(recipe, KeyedSamples(train, config.run.seed), collate_fn, config.run, context,
                      config_to_dict(config))
    return {**trainer.fit(resume=resume), "report": recipe.report}
