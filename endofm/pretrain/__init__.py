"""Self-supervised pretraining with the Endo-FM recipe: loss, EMA teacher, schedules, the run."""

from endofm.engine.schedules import teacher_temperature_schedule
from endofm.pretrain.config import DataConfig, LossConfig, ModelConfig, PretrainConfig, PretrainOptimConfig
from endofm.pretrain.ema import update_ema
from endofm.pretrain.loss import DINOLoss
from endofm.pretrain.recipe import DINORecipe, MultiViewNetwork, pretrain

__all__ = [
    "DINOLoss",
    "DINORecipe",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "MultiViewNetwork",
    "PretrainOptimConfig",
    "PretrainConfig",
    "pretrain",
    "teacher_temperature_schedule",
    "update_ema",
]
