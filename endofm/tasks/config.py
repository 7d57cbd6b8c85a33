"""The configuration every fine-tuning task shares: the backbone to start from, model selection, splits.

A task's config class (e.g. :class:`~endofm.tasks.classify.ClassifyConfig`) composes these with its own data
section, :class:`~endofm.engine.optim.OptimConfig` and :class:`~endofm.engine.trainer.RunConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from endofm.config import Config
from endofm.engine.optim import OptimConfig
from endofm.engine.trainer import RunConfig
from endofm.errors import ConfigError
from endofm.models.registry import MODEL_CONFIGS


@dataclass
class FinetuneModelConfig:
    """The backbone to fine-tune: ``init`` weights (any checkpoint load_checkpoint reads) or a random ``arch``."""

    arch: str = "endofm_vit_base"
    """Named config used when ``init`` is not set (random initialisation, a baseline)."""
    init: str | None = None
    """An original checkpoint (``endo_fm.pth``, a training checkpoint), an endofm model folder (a pretraining
    export or a fine-tuned model); its architecture is used and ``arch`` is ignored."""
    num_heads: int | None = None
    require_init: bool = False
    """Refuse to start without ``init`` (the original protocols always fine-tune ``endo_fm.pth``);
    ``model.require_init=false`` fine-tunes random weights on purpose (a baseline)."""
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


class TaskConfig(Protocol):
    """What every task's config class has (:class:`~endofm.tasks.finetune.FinetuneRecipe` and
    :func:`~endofm.tasks.finetune.run_finetune` read these; ``data`` is the task's own section)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    model: FinetuneModelConfig
    data: Config
    selection: SelectionConfig
    optim: OptimConfig
    run: RunConfig
