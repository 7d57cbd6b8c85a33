"""The pretraining config: sections for the model, data, optimiser, loss and run."""

from __future__ import annotations

from dataclasses import dataclass, field

from endofm.data.views import MultiViewConfig
from endofm.engine.trainer import RunConfig
from endofm.errors import ConfigError
from endofm.models.registry import MODEL_CONFIGS
from endofm.pretrain.loss import CENTERINGS


@dataclass
class ModelConfig:
    """Backbone and DINO head of the student and teacher."""

    arch: str = "endofm_vit_base"
    drop_path_rate: float = 0.1
    teacher_drop_path: float | None = None
    """Stochastic depth of the teacher (``None``: ``drop_path_rate``, as the original, which builds the teacher
    like the student and never puts it in eval mode, so drop path is active in every teacher forward).
    ``0`` gives a deterministic teacher (not the original)."""
    init: str | None = None
    """Initial weights of the student and the teacher, DINO head included when the file has one (as the
    original, which loads SVT's ``kinetics400_vitb_ssl.pth`` into both): an original checkpoint
    (``endo_fm.pth``, SVT's Kinetics weights, a full training checkpoint), a run's training checkpoint or an
    endofm model folder. Its architecture must match ``arch`` and its head the ``head_*`` sizes. ``null``
    (or ``none``) starts from random weights."""
    num_heads: int | None = None
    """Heads of the ``init`` checkpoint (default: those of ``arch``; shapes do not tell them)."""
    grad_checkpointing: bool = False
    checkpoint_blocks: int | None = None
    """With ``grad_checkpointing``: recompute only the first this many blocks (default all); fewer blocks save
    less memory and cost less recomputation."""
    backward_per_group: bool = True
    """Backpropagate the loss terms of each group of equally shaped views before the next group's forward:
    the same gradient (the loss is a sum over student views), with the activations of one group held at a
    time instead of all views'."""
    compile: bool = False
    """Compile the student's and the teacher's backbones with ``torch.compile`` (one graph per view shape,
    ``dynamic=False``). The first steps pay for the compilation."""
    token_keep_ratio: float = 1.0
    """Token-drop speed variant (off at 1.0): the student's global views keep this random share of their
    spatial positions. Not part of the published recipe."""
    head_out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    norm_last_layer: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.init, str) and self.init.strip().lower() in ("", "none", "null"):
            self.init = None
        if self.arch not in MODEL_CONFIGS:
            raise ConfigError(f"model.arch {self.arch!r} is not one of {sorted(MODEL_CONFIGS)}")
        depth = MODEL_CONFIGS[self.arch].depth
        if self.checkpoint_blocks is not None and not 0 <= self.checkpoint_blocks <= depth:
            raise ConfigError(f"model.checkpoint_blocks must be between 0 and {self.arch}'s depth {depth}, "
                              f"got {self.checkpoint_blocks}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"model.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.teacher_drop_path is not None and not 0.0 <= self.teacher_drop_path < 1.0:
            raise ConfigError(f"model.teacher_drop_path must be in [0, 1), got {self.teacher_drop_path}")
        if not 0.0 < self.token_keep_ratio <= 1.0:
            raise ConfigError(f"model.token_keep_ratio must be in (0, 1], got {self.token_keep_ratio}")


@dataclass
class DataConfig:
    """Where the clips come from and how they become views."""

    manifest: str = ""
    """A manifest CSV from ``endofm data scan``; the original's ``train.csv`` (``path,-1``) or list file
    (``<dir> <start> <len> -1``) as they are; a folder holding ``train.csv`` (the original's ``--data_path``);
    or a folder of videos (scanned into the run folder)."""
    clip_seconds: float = 5.0
    """Clip length when ``manifest`` is a folder that is scanned."""
    views: MultiViewConfig = field(default_factory=MultiViewConfig)
    cache: bool = False
    """Decode every clip once before training and cut the views from memory (the same views as from the
    files): for small corpora of short clips read many times, such as ``cpu_micro.yaml``'s."""
    cache_max_gib: float = 4.0
    """Memory the cache may take (per process); a corpus that needs more stops the run before training."""

    def __post_init__(self) -> None:
        if self.cache_max_gib <= 0:
            raise ConfigError(f"data.cache_max_gib must be positive, got {self.cache_max_gib}")


@dataclass
class PretrainOptimConfig:
    """AdamW and its schedules (per iteration)."""

    lr: float = 5e-4
    """Peak learning rate for a global batch of 256; scaled linearly with the batch size."""
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    """Per-parameter gradient-norm clip, as the original (0 turns it off)."""
    freeze_last_layer_epochs: int = 1
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0
    """The teacher's EMA momentum follows a cosine from ``momentum_teacher`` to this (the original: 1)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum_teacher <= 1.0 or not 0.0 <= self.momentum_teacher_end <= 1.0:
            raise ConfigError(f"optim.momentum_teacher and optim.momentum_teacher_end must be in [0, 1], got "
                              f"{self.momentum_teacher} and {self.momentum_teacher_end}")


@dataclass
class LossConfig:
    """Temperatures and centring of the self-distillation loss."""

    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    centering: str = "center"
    """``center`` (the published recipe: running mean, subtracted) or ``sinkhorn`` (Sinkhorn-Knopp over the
    batch, as SwAV and DINOv2; robust on small corpora of look-alike clips)."""
    koleo_weight: float = 0.0
    """Weight of the KoLeo regulariser on the student's global-view embeddings (0 = off, the published
    recipe; DINOv2 uses 0.1)."""

    def __post_init__(self) -> None:
        if self.centering not in CENTERINGS:
            raise ConfigError(f"loss.centering must be one of {CENTERINGS}, got {self.centering!r}")
        if self.koleo_weight < 0:
            raise ConfigError(f"loss.koleo_weight must be non-negative, got {self.koleo_weight}")


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs; loaded from a recipe (``endofm/configs/pretrain/*.yaml``, by name)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
