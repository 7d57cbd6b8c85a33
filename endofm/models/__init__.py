"""The Endo-FM backbone, its heads, named configurations and checkpoint I/O."""

from endofm.models.backbone import BackboneConfig, EndoFMBackbone
from endofm.models.checkpoint import CheckpointInfo, LoadedCheckpoint, export_original, load_checkpoint, save_pretrained
from endofm.models.factory import create_model, load_pretrained
from endofm.models.heads import DINOHead, LinearClassifier
from endofm.models.inputs import InputSpec
from endofm.models.registry import MODEL_CONFIGS, MODELS, ModelSpec, build_model, list_models, model_spec
from endofm.models.segmentation import TransUNet, TransUNetConfig
from endofm.models.state import infer_backbone_config

__all__ = [
    "MODELS",
    "MODEL_CONFIGS",
    "BackboneConfig",
    "CheckpointInfo",
    "DINOHead",
    "InputSpec",
    "EndoFMBackbone",
    "LinearClassifier",
    "LoadedCheckpoint",
    "ModelSpec",
    "TransUNet",
    "TransUNetConfig",
    "build_model",
    "create_model",
    "export_original",
    "infer_backbone_config",
    "list_models",
    "load_checkpoint",
    "load_pretrained",
    "model_spec",
    "save_pretrained",
]
