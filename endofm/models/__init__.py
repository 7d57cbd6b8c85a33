"""The Endo-FM backbone, its heads, named configurations and checkpoint I/O."""

from endofm.models.backbone import BackboneConfig, EndoFMBackbone
from endofm.models.checkpoint import (
    CheckpointInfo,
    LoadedCheckpoint,
    export_original,
    infer_backbone_config,
    load_checkpoint,
    save_pretrained,
)
from endofm.models.heads import DINOHead, LinearClassifier
from endofm.models.registry import MODEL_CONFIGS, build_model, list_models
from endofm.models.transunet import TransUNet, TransUNetConfig

__all__ = [
    "MODEL_CONFIGS",
    "BackboneConfig",
    "CheckpointInfo",
    "DINOHead",
    "EndoFMBackbone",
    "LinearClassifier",
    "LoadedCheckpoint",
    "TransUNet",
    "TransUNetConfig",
    "build_model",
    "export_original",
    "infer_backbone_config",
    "list_models",
    "load_checkpoint",
    "save_pretrained",
]
