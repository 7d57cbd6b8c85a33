"""The segmentation task's configuration: the run (:class:`SegmentConfig`), its data, and the two segmenters'
own settings (``transunet:`` the original's TransUNet around the backbone, ``decoder:`` the lighter decoder)."""

from __future__ import annotations

from dataclasses import dataclass, field

from endofm.engine.optim import OptimConfig
from endofm.engine.trainer import RunConfig
from endofm.errors import ConfigError
from endofm.metrics.segmentation import EMPTY_RULES
from endofm.models.inputs import InputSpec
from endofm.tasks.base import preset_input
from endofm.tasks.config import FinetuneModelConfig, SelectionConfig, SplitsConfig

SEGMENTERS = ("transunet", "decoder")


@dataclass
class SegmentDataConfig:
    """Where the CVC-ClinicDB-layout data is and how clips are made."""

    root: str = ""
    clip_length: int | None = None
    """Consecutive frames per sample (sequences are cut into windows covering them); null: every sequence
    whole, as one clip (the original; needs ``run.batch_size`` 1)."""
    size: int = 224
    resize: int = 256
    """Training: frames are resized to ``resize`` square, then a random ``size`` crop is taken (the original's
    256 -> 224); 0: resized to ``size`` directly."""
    hflip: float = 0.5
    rotation: float = 5.0
    """Training: a random rotation within +- this many degrees (0: none)."""
    per_frame_augment: bool = True
    """Draw the random crop, flip and rotation for every frame on its own (the original transforms frames one
    by one); false: one draw for the whole clip."""
    channel_order: str = "BGR"
    """The original reads frames with OpenCV and feeds them in BGR order."""
    minmax: bool = True
    """Scale every frame to [0, 1] by its own minimum and maximum (the original) instead of dividing by 255."""
    normalization: str = "half"
    mask_threshold: int = 128
    """A mask pixel is polyp when its grey level is at least this: 128 (above mid-grey) or 255 (only white,
    the original's ``label == 255``). Masks of only 0 and 255 give the same labels either way."""
    splits: SplitsConfig = field(default_factory=lambda: SplitsConfig(test="test"))

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"data.channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.clip_length is not None and self.clip_length < 1:
            raise ConfigError(f"data.clip_length must be positive or null, got {self.clip_length}")
        if not 1 <= self.mask_threshold <= 255:
            raise ConfigError(f"data.mask_threshold must be a grey level in 1..255, got {self.mask_threshold}")
        if self.resize and self.resize < self.size:
            raise ConfigError(f"data.resize {self.resize} is smaller than the crop data.size {self.size}")

    def input_spec(self) -> InputSpec:
        """The model input these settings make."""
        return preset_input(self.normalization, (self.size, self.size), self.clip_length,
                            channel_order=self.channel_order, minmax=self.minmax)


@dataclass
class TransUNetPartsConfig:
    """The TransUNet's own parts, the recipe's ``transunet:`` section (its transformer is the backbone's, so the
    rest of :class:`~endofm.models.segmentation.transunet.TransUNetConfig` comes from the backbone); the
    defaults are the original's."""

    resnet_width: int = 64
    resnet_units: tuple[int, int, int] = (3, 4, 9)
    decoder_channels: tuple[int, int, int, int] = (256, 128, 64, 16)
    n_skip: int = 3
    dropout: float = 0.1


@dataclass
class DecoderConfig:
    """The lighter decoder (``segmenter: decoder``)."""

    channels: tuple[int, ...] = (256, 128, 64, 32)
    stem: bool = False
    """A light convolutional stem on the frame for high-resolution skip features."""


@dataclass
class SegmentConfig:
    """A segmentation fine-tuning run; defaults are the original's model and hyper-parameters (TransUNet,
    whole sequences at batch 1, AdamW 1e-4 with weight decay 0.05 on every parameter, poly decay, 150
    epochs, 224 input), with selection on a validation split."""

    segmenter: str = "transunet"
    """``transunet`` (the original's model) or ``decoder`` (the lighter decoder on the patch tokens)."""
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    transunet: TransUNetPartsConfig = field(default_factory=TransUNetPartsConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    data: SegmentDataConfig = field(default_factory=SegmentDataConfig)
    dice_denominator: str = "squared"
    """Soft Dice denominators: ``squared`` (sum p^2 + sum t^2, the original) or ``linear`` (sum p + sum t)."""
    empty_rule: str = "standard"
    """Dice of empty masks (:data:`~endofm.metrics.segmentation.EMPTY_RULES`; ``original``: the original's)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05,
                                                                   schedule="poly", decay_all=True))
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/finetune-segment", epochs=150,
                                                             batch_size=1))

    def __post_init__(self) -> None:
        if self.segmenter not in SEGMENTERS:
            raise ConfigError(f"segmenter must be one of {SEGMENTERS}, got {self.segmenter!r}")
        if self.dice_denominator not in ("squared", "linear"):
            raise ConfigError(f"dice_denominator must be squared or linear, got {self.dice_denominator!r}")
        if self.empty_rule not in EMPTY_RULES:
            raise ConfigError(f"empty_rule must be one of {EMPTY_RULES}, got {self.empty_rule!r}")
        if self.segmenter == "transunet" and (self.model.grad_checkpointing or self.data.size != 224):
            raise ConfigError("segmenter transunet takes data.size 224 (its 14x14 token grid) and no "
                              f"model.grad_checkpointing; got size {self.data.size}")
