"""The training engine shared by pretraining and fine-tuning."""

from endofm.engine.distributed import DistributedContext, init_distributed
from endofm.engine.trainer import Recipe, RunConfig, Trainer

__all__ = ["DistributedContext", "Recipe", "RunConfig", "Trainer", "init_distributed"]
