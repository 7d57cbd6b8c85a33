"""The detection run's configuration (``endofm finetune detect``, ``configs/finetune/detect*.yaml``): the
detector (``detector``: ``stft`` or ``fcos``), each detector's own section (``stft``, ``fcos``), the data, the
optimiser and, for the STFT, the original's iteration schedule (``iterations``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from endofm.engine.optim import OptimConfig
from endofm.engine.schedules import warmup_multistep
from endofm.engine.trainer import RunConfig
from endofm.errors import ConfigError
from endofm.tasks.config import FinetuneModelConfig, SelectionConfig, SplitsConfig

DETECTORS = ("stft", "fcos")
EMPTY_FRAMES = ("leave_out", "skip_iteration", "train")
QUEUES = ("video", "list")
"""Test-time reference queues of the STFT (:func:`~endofm.tasks.detect.stft_inference.detect_videos`)."""
REFERENCES = ("original", "past")
"""Where the STFT's test-time references come from (:func:`~endofm.tasks.detect.stft_inference.detect_video`)."""


@dataclass
class DetectDataConfig:
    """Where the KUMC/PolypsSet-layout data is and how samples are made (``ref_offsets``, ``short_side``,
    ``max_size`` and ``normalization`` are the FCOS's; the STFT's input is ``stft.size``)."""

    root: str = ""
    ref_offsets: tuple[int, ...] = (-2, -1)
    """FCOS: reference frames relative to the current one (the current frame last)."""
    short_side: int = 600
    max_size: int = 640
    normalization: str = "imagenet"
    hflip: float = 0.5
    """Horizontal-flip probability of a training sample (its frames flipped together)."""
    splits: SplitsConfig = field(default_factory=lambda: SplitsConfig(val="val", test="test"))


@dataclass
class FCOSConfig:
    """Pyramid and FCOS head (``detector: fcos``)."""

    out_channels: int = 256
    head_convs: int = 4
    score_thresh: float = 0.05
    """Lowest score kept at inference (the metrics apply their own 0.5 threshold; mAP uses all)."""
    nms_thresh: float = 0.6
    detections_per_img: int = 100


@dataclass
class STFTModelConfig:
    """The STFT detector's own parts and input (``detector: stft``); the defaults are the released model's."""

    out_channels: int = 256
    """FPN and head channels (``BACKBONE_OUT_CHANNELS``; a multiple of 32)."""
    num_convs: int = 4
    """Convolutions of each head tower (``FCOS.NUM_CONVS``)."""
    size: int = 640
    """Frames are resized to ``size`` x ``size`` (the original: 640, aspect ratio not kept)."""
    reference_seed: int = 0
    """Seed of the test-time reference draws (the original never seeds them)."""
    empty_frames: str = "leave_out"
    """Training frames without a box: ``leave_out`` of the training set (every iteration a step),
    ``skip_iteration`` (the original: drawn, and their iteration skipped with no optimiser or learning-rate
    step, counted in ``iterations.max_iter``) or ``train`` on them, every location a negative."""

    queue: str = "video"
    """Test-time reference queue: ``video`` (reset at each video's first frame, as the model intends) or
    ``list`` (the original with its own list files: one queue over the split's videos, never reset;
    :func:`~endofm.tasks.detect.stft_inference.list_queue_windows`)."""

    def __post_init__(self) -> None:
        if self.queue not in QUEUES:
            raise ConfigError(f"stft.queue must be one of {', '.join(QUEUES)}, got {self.queue!r}")
        if self.empty_frames not in EMPTY_FRAMES:
            raise ConfigError(f"stft.empty_frames must be one of {', '.join(EMPTY_FRAMES)}, got {self.empty_frames!r}")
        if self.out_channels < 32 or self.out_channels % 32:
            raise ConfigError(f"stft.out_channels must be a positive multiple of 32, got {self.out_channels}")
        if self.size < 32 or self.num_convs < 0:
            raise ConfigError(f"stft.size must be at least 32 and stft.num_convs not negative ({self})")


@dataclass
class IterationSchedule:
    """The original's iteration-based ``SOLVER`` (``detector: stft``): one iteration is one optimiser step on
    one sample; the learning rate of iteration ``i`` (0-based) is the base rate (times ``bias_lr_factor`` for
    biases) times :func:`~endofm.engine.schedules.warmup_multistep` of ``i``, as the original's
    ``WarmupMultiStepLR`` stepped after every iteration. The base rate, momentum and weight decay are
    ``optim.lr``, ``optim.momentum`` and ``optim.weight_decay``."""

    max_iter: int = 96000
    warmup_iters: int = 8000
    warmup_factor: float = 1 / 3
    warmup_method: str = "linear"
    steps: tuple[int, ...] = (64000, 80000, 88000)
    gamma: float = 0.5
    bias_lr_factor: float = 2.0
    weight_decay_bias: float = 0.0
    test_period: int = 4000
    """Evaluate on the validation split every this many iterations (the original's ``TEST_PERIOD``) and after
    the last; 0: after the last only."""
    keep: str = "best"
    """The model reported and saved: ``best`` (the evaluation with the highest ``selection.metric`` on the
    validation split) or ``last`` (the model after the last iteration; the original selects nothing: its
    trainer only logs the periodic evaluations of a ``cvc_`` method and saves ``model_final``)."""

    def __post_init__(self) -> None:
        if self.max_iter < 1 or self.warmup_iters < 0 or self.test_period < 0:
            raise ConfigError(f"iterations: max_iter must be positive, warmup_iters and test_period not negative "
                              f"({self})")
        if self.warmup_method not in ("linear", "constant"):
            raise ConfigError(f"iterations.warmup_method must be linear or constant, got {self.warmup_method!r}")
        if list(self.steps) != sorted(self.steps):
            raise ConfigError(f"iterations.steps must increase, got {list(self.steps)}")
        if self.keep not in ("best", "last"):
            raise ConfigError(f"iterations.keep must be best or last, got {self.keep!r}")

    def factor(self, step: int) -> float:
        """The learning-rate factor of 0-based iteration ``step``."""
        return warmup_multistep(step, self.warmup_iters, self.warmup_factor, tuple(self.steps), self.gamma,
                                self.warmup_method)


@dataclass
class DetectConfig:
    """A detection fine-tuning run; the defaults are the original's model and hyper-parameters (STFT, SGD lr
    0.0025 with weight decay 1e-4, batch 1, 96000 iterations with warm-up and steps, 640 x 640), with the
    model chosen on a validation split kept apart from the test split."""

    detector: str = "stft"
    """``stft`` (the original's model) or ``fcos`` (torchvision's FCOS on a simple pyramid, lighter)."""
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    stft: STFTModelConfig = field(default_factory=STFTModelConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    data: DetectDataConfig = field(default_factory=DetectDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.0025, momentum=0.9,
                                                                   weight_decay=1e-4, warmup_epochs=1))
    """stft: ``lr``, ``momentum`` and ``weight_decay`` (SGD); its schedule is ``iterations``."""
    iterations: IterationSchedule = field(default_factory=IterationSchedule)
    """stft: the original's iteration-based schedule and evaluation period."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/finetune-detect", epochs=96000,
                                                             batch_size=1, checkpoint_every=4000))
    """stft: ``epochs`` bounds the passes over the training frames (see
    :func:`~endofm.tasks.detect.stft_train.finetune_stft`); fcos: the epochs."""

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ConfigError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.detector == "stft" and self.optim.name != "sgd":
            raise ConfigError(f"detector stft trains as the original, with optim.name sgd, got {self.optim.name!r} "
                              "(without --config, an optim.* override starts the optim section from its own "
                              "defaults: pass --config detect)")
