"""The classification task's configs: the data (sampling and views) and the fine-tuning run."""

from __future__ import annotations

from dataclasses import dataclass, field

from endofm.data.datasets.polypdiag import SAMPLINGS
from endofm.engine.optim import OptimConfig
from endofm.engine.trainer import RunConfig
from endofm.errors import ConfigError
from endofm.models.backbone import POOLS
from endofm.tasks.config import FinetuneModelConfig, SelectionConfig, SplitsConfig

CLASSIFY_DEFAULT_DATA = {"num_frames": 8, "size": 224, "normalization": "polypdiag", "sampling": "original",
                         "sampling_rate": 32, "target_fps": 30.0, "view": "original"}
"""Preprocessing of the original PolypDiag fine-tuning (used for the original's fine-tuned checkpoints)."""
VIEWS = ("original", "center")


@dataclass
class ClassifyDataConfig:
    """Where the PolypDiag-layout data is and how clips are made (defaults: the original's)."""

    root: str = ""
    num_frames: int = 8
    """``DATA.NUM_FRAMES`` of the original's TimeSformer config."""
    size: int = 224
    """``DATA.TRAIN_CROP_SIZE`` / ``TEST_CROP_SIZE``."""
    normalization: str = "polypdiag"
    sampling: str = "original"
    """``original``: ``num_frames`` frames over a window of ``sampling_rate * num_frames`` frames at
    ``target_fps`` (scaled by the video's frame rate), starting at random in training and at the first frame
    at test time, the last frame repeated for a short video; ``spread``: evenly over the whole video."""
    sampling_rate: int = 32
    """``DATA.SAMPLING_RATE`` of the original's config (frames at ``target_fps`` between two sampled frames)."""
    target_fps: float = 30.0
    """``DATA.TARGET_FPS``."""
    view: str = "original"
    """``original``: training resizes the short side to 256-320 (at 224; bilinear, no antialiasing), crops at
    random and flips; test resizes it to ``size`` and takes the first crop (left, or top), as the original's
    test set (``TEST.NUM_SPATIAL_CROPS`` is 3 when it reads, so spatial index 0). ``center``: antialiased
    resizes, at test time the short side to ``size * 8/7`` and the centre crop."""
    splits: SplitsConfig = field(default_factory=SplitsConfig)

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"data.sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.view not in VIEWS:
            raise ConfigError(f"data.view must be one of {', '.join(VIEWS)}, got {self.view!r}")
        if self.sampling_rate < 1 or self.target_fps <= 0:
            raise ConfigError(f"data.sampling_rate and data.target_fps must be positive, got {self.sampling_rate} "
                              f"and {self.target_fps}")


@dataclass
class ClassifyConfig:
    """A classification fine-tuning run; defaults are the original's hyper-parameters."""

    mode: str = "finetune"
    """``finetune`` (all weights) or ``linear`` (frozen backbone, linear probe)."""
    pool: str = "cls"
    """The clip embedding the linear head reads: ``cls`` (the original's), or ``mean`` or ``max`` over the patch
    tokens (the gradient reaches the patches directly: from random weights and few labels these learn far
    faster; ``max`` suits a small finding such as a polyp)."""
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=1e-3, scale_lr=True))
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/finetune-classify", epochs=20,
                                                             batch_size=4))

    def __post_init__(self) -> None:
        if self.mode not in ("finetune", "linear"):
            raise ConfigError(f"mode must be finetune or linear, got {self.mode!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
