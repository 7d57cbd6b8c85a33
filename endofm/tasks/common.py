"""What the three fine-tuning tasks share: backbone initialisation, model selection on a validation split,
the fine-tuned model folder (which records the task for ``endofm predict``), and the run's products.

A fine-tuned model folder is the package's model format (``config.json`` + ``model.safetensors``, so
:func:`~endofm.models.checkpoint.load_checkpoint` reads its backbone) plus ``task_head.safetensors`` (the
task's head); ``config.json``'s metadata records ``task``, ``head`` (the head's constructor arguments) and
``data`` (the preprocessing the model was trained with).
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn

from endofm.config import config_to_dict, save_config
from endofm.engine.distributed import DistributedContext, init_distributed
from endofm.engine.logging import plot_curves
from endofm.engine.optim import build_optimizer
from endofm.engine.schedules import lr_schedule
from endofm.engine.trainer import Recipe, Trainer
from endofm.errors import CheckpointError, ConfigError, TrainingError
from endofm.io import atomic_write, atomic_write_text
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import CONFIG_FILE, load_checkpoint, save_pretrained
from endofm.models.heads import LinearClassifier
from endofm.models.registry import MODEL_CONFIGS, build_model

TASKS = ("classify", "segment", "detect")
HEAD_FILE = "task_head.safetensors"
SELECT_ON_TEST_NOTE = (
    "select-on-test: the best epoch was chosen on the test split (the original Endo-FM protocol); the test "
    "metrics are optimistic and not an honest estimate"
)


@dataclass
class FinetuneModelConfig:
    """The backbone to fine-tune: ``init`` weights (any checkpoint load_checkpoint reads) or a random ``arch``."""

    arch: str = "endofm_vit_base"
    """Named config used when ``init`` is not set (random initialisation, a baseline)."""
    init: str | None = None
    """An original checkpoint (``endo_fm.pth``, a training checkpoint), an endofm model folder (a pretraining
    export or a fine-tuned model); its architecture is used and ``arch`` is ignored."""
    num_heads: int | None = None
    drop_path_rate: float = 0.1
    grad_checkpointing: bool = False
    """Recompute the backbone's block activations in backward: less memory (e.g. 224 px clips on a small GPU)."""

    def __post_init__(self) -> None:
        if self.arch not in MODEL_CONFIGS:
            raise ConfigError(f"model.arch {self.arch!r} is not one of {sorted(MODEL_CONFIGS)}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"model.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")


@dataclass
class SelectionConfig:
    """How the reported model is chosen."""

    select_on_test: bool = False
    """Reproduce the original protocol: pick the best epoch on the test split (optimistic; says so)."""
    metric: str = ""
    """Validation metric to maximise (empty: the task's default)."""
    every: int = 1
    """Evaluate on the validation split every this many epochs (and always after the last)."""


@dataclass
class SplitsConfig:
    """Which splits train, select and test."""

    train: str = "train"
    val: str = "auto"
    """A split name, or ``auto`` (the task's rule: a dedicated split when the layout has one, else
    ``val_fraction`` of the training cases held out)."""
    test: str = "auto"
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


def build_backbone(model: FinetuneModelConfig) -> EndoFMBackbone:
    """The backbone to fine-tune, with ``model.init`` weights when given."""
    if model.init is None:
        backbone = build_model(model.arch, drop_path_rate=model.drop_path_rate)
    else:
        source = load_checkpoint(model.init, num_heads=model.num_heads).backbone
        backbone = EndoFMBackbone(dataclasses.replace(source.config, drop_path_rate=model.drop_path_rate))
        backbone.load_state_dict(source.state_dict())
    return backbone.set_grad_checkpointing(model.grad_checkpointing)


def _backbone_keys(head: nn.Module, backbone: EndoFMBackbone) -> set[str]:
    """Keys of ``head``'s state dict that are the backbone's own tensors (a detector holds its backbone)."""
    shared = {id(t) for t in (*backbone.parameters(), *backbone.buffers())}
    return {name for name, t in head.state_dict(keep_vars=True).items() if id(t) in shared}


def save_finetuned(directory: str | Path, task: str, backbone: EndoFMBackbone, head: nn.Module,
                   head_config: dict[str, Any], data: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write a fine-tuned model folder (see the module docstring); ``config.json`` is written last. The head
    file leaves out the backbone's tensors, which the folder stores once."""
    directory = Path(directory)
    skipped = _backbone_keys(head, backbone)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items() if k not in skipped}
    atomic_write(directory / HEAD_FILE, lambda tmp: save_safetensors(tensors, tmp))
    classifier = head if isinstance(head, LinearClassifier) else None
    metadata = {"task": task, "head": head_config, "data": data, **(extra or {})}
    return save_pretrained(directory, backbone, classifier=classifier, metadata=metadata)


@dataclass
class FinetunedModel:
    """A fine-tuned model read back: its task, backbone, head, and the metadata it was saved with."""

    task: str
    backbone: EndoFMBackbone
    head: nn.Module
    head_config: dict[str, Any]
    data: dict[str, Any]
    path: str
    metadata: dict[str, Any] = field(default_factory=dict)


def read_finetuned(path: str | Path) -> FinetunedModel:
    """Load a fine-tuned model folder, or an original fine-tuned PolypDiag classifier checkpoint."""
    from endofm.tasks.classify import CLASSIFY_DEFAULT_DATA

    path = Path(path)
    loaded = load_checkpoint(path)
    metadata = dict(loaded.info.args or {}) if loaded.info.layout == "endofm" else {}
    task = metadata.get("task")
    if task is None:
        if loaded.classifier is not None:
            config = loaded.classifier.config
            return FinetunedModel("classify", loaded.backbone, loaded.classifier, config, dict(CLASSIFY_DEFAULT_DATA),
                                  str(path), {"source": "original fine-tuned classifier"})
        raise CheckpointError(f"{path}: not a fine-tuned model (no task recorded and no classifier); fine-tune it "
                              "with `endofm finetune {classify,segment,detect} --init ...` first")
    if task not in TASKS:
        raise CheckpointError(f"{path / CONFIG_FILE}: unknown task {task!r}")
    head_file = path / HEAD_FILE
    if not head_file.exists():
        raise CheckpointError(f"{path}: {HEAD_FILE} is missing (the {task} head)")
    try:
        head = build_head(task, metadata.get("head") or {}, loaded.backbone)
    except (TypeError, ValueError) as error:
        message = f"{path / CONFIG_FILE}: the recorded {task} head config does not fit ({error})"
        raise CheckpointError(message) from error
    try:
        state = load_safetensors(str(head_file))
    except Exception as error:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{head_file}: unreadable ({error})") from error
    missing, unexpected = head.load_state_dict(state, strict=False)
    stored_once = _backbone_keys(head, loaded.backbone)
    missing = [key for key in missing if key not in stored_once]
    if missing or unexpected:
        raise CheckpointError(f"{head_file}: does not fit the {task} head (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    return FinetunedModel(task, loaded.backbone.eval(), head.eval(), metadata.get("head") or {},
                          metadata.get("data") or {}, str(path), metadata)


def build_head(task: str, config: dict[str, Any], backbone: EndoFMBackbone) -> nn.Module:
    """The head of a task from its recorded constructor arguments."""
    if task == "classify":
        return LinearClassifier(**config)
    if task == "segment":
        from endofm.tasks.segment import SegmentationDecoder

        return SegmentationDecoder(**config)
    from endofm.tasks.detect import build_detector

    return build_detector(backbone, **config)


def is_better(value: float, best: float | None) -> bool:
    """Whether a validation value beats the best so far (NaN never does)."""
    return math.isfinite(value) and (best is None or value > best)


def print_table(title: str, metrics: dict[str, Any]) -> None:
    """Print the scalar metrics as a two-column table."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    width = max([len(k) for k in scalars] + [6]) + 2
    print(title)
    print(f"{'metric':<{width}}value")
    for key, value in scalars.items():
        print(f"{key:<{width}}{value:.4f}" if isinstance(value, float) else f"{key:<{width}}{value}")


def json_safe(value: Any) -> Any:
    """NaN/inf as None, tensors and numpy scalars as plain numbers (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class FinetuneRecipe(Recipe):
    """A task recipe: evaluates on the validation split at epoch ends, keeps the best weights, and at the
    end reports the test metrics of that model and saves it (``model/``, ``metrics.json``, plots)."""

    task: str
    default_metric: str
    evaluator: Callable[..., dict[str, Any]]
    """The task's metrics: ``evaluator(network, dataset, batch_size, device, num_workers)``."""
    plot_keys = ("loss", "lr")

    def __init__(self, config: Any, context: DistributedContext, val_set: Any, test_set: Any,
                 split_names: dict[str, str]) -> None:
        self.config, self.device = config, context.device
        self.val_set, self.test_set, self.split_names = val_set, test_set, split_names
        self.metric = config.selection.metric or self.default_metric
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_score: float | None = None
        self.best_epoch = -1
        self.history: list[dict[str, float]] = []
        self.network = self.build_network().to(self.device)

    @abstractmethod
    def build_network(self) -> nn.Module:
        """The task's network (backbone and head) from ``self.config``."""

    def evaluate(self, dataset: Any) -> dict[str, Any]:
        """Metrics of the current network on a dataset."""
        run = self.config.run
        return type(self).evaluator(self.network, dataset, run.batch_size, self.device, run.num_workers)

    def head_config(self) -> dict[str, Any]:
        """Constructor arguments of the head (recorded in the model folder)."""
        return dict(self.parts()[1].config)

    @abstractmethod
    def parts(self) -> tuple[EndoFMBackbone, nn.Module]:
        """The backbone and the head of the network."""

    def save_model(self, directory: Path, extra: dict[str, Any]) -> Path:
        """Write the selected network as a fine-tuned model folder (``extra`` joins its metadata)."""
        backbone, head = self.parts()
        return save_finetuned(directory, self.task, backbone, head, self.head_config(), self.data_config(), extra)

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
        metrics = self.evaluate(self.val_set)
        if self.metric not in metrics:
            raise ConfigError(f"selection.metric {self.metric!r} is not one of {sorted(metrics)}")
        value = float(metrics[self.metric])
        if is_better(value, self.best_score):
            self.best_score, self.best_epoch = value, epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
        scalars = {f"val_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.history.append({"epoch": epoch + 1, **scalars})
        return scalars

    def state_dict(self) -> dict[str, Any]:
        return {"best_state": self.best_state, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_state, self.best_score = state["best_state"], state["best_score"]
        self.best_epoch, self.history = state["best_epoch"], state["history"]

    def finish(self, out_dir: Path) -> dict[str, str]:
        if self.best_state is None:
            raise TrainingError(f"no validation result was finite in {out_dir}; nothing to select (check the data "
                                "and the learning rate)")
        self.network.load_state_dict(self.best_state)
        test_metrics = self.evaluate(self.test_set)
        protocol = SELECT_ON_TEST_NOTE if self.config.selection.select_on_test else (
            f"best epoch chosen on the validation split ({self.split_names['val']}), kept apart from the test split")
        model_dir = self.save_model(out_dir / "model", {"selection": {
            "metric": self.metric, "best_epoch": self.best_epoch + 1, "protocol": protocol}})
        report = {"task": self.task, "protocol": protocol, "select_on_test": self.config.selection.select_on_test,
                  "splits": self.split_names, "selection_metric": self.metric, "best_epoch": self.best_epoch + 1,
                  "best_val": self.best_score, "test": test_metrics, "val_history": self.history,
                  "model": str(model_dir)}
        metrics_path = atomic_write_text(out_dir / "metrics.json", json.dumps(json_safe(report), indent=2) + "\n")
        keys = sorted({k for row in self.history for k in row if k != "epoch"})
        plot_curves(self.history, keys, out_dir / "plots", x_key="epoch")
        return {"model": str(model_dir), "metrics": str(metrics_path), "plots": str(out_dir / "plots")}


def run_finetune(config: Any, recipe_cls: type[FinetuneRecipe], datasets: tuple, collate_fn: Any,
                 resume: bool = False) -> dict[str, Any]:
    """Shared driver: check the run folder, save the config, train with the engine, return the summary."""
    context = init_distributed(config.run.device)
    out_dir = Path(config.run.out_dir)
    if not resume and (out_dir / "checkpoints" / "last.pt").exists():
        raise TrainingError(f"{out_dir} already holds a run: pass --resume to continue it, or another run.out_dir")
    train, val, test, names = datasets
    if config.run.batch_size > len(train):
        raise ConfigError(f"run.batch_size={config.run.batch_size} is larger than the training set ({len(train)})")
    if context.is_main:
        save_config(config, out_dir / "config.yaml")
    torch.manual_seed(config.run.seed)
    recipe = recipe_cls(config, context, val, test, names)
    trainer = Trainer(recipe, train, collate_fn, config.run, context, config_to_dict(config))
    return trainer.fit(resume=resume)
