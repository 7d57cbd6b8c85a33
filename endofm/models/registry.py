"""Named backbones: each one's architecture and the input it expects (:class:`ModelSpec`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from endofm.errors import InputError
from endofm.models.backbone import BackboneConfig, EndoFMBackbone
from endofm.models.inputs import InputSpec

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
"""The normalisation of the original's pretraining views."""


@dataclass(frozen=True)
class ModelSpec:
    """A named backbone: its architecture, the input it was pretrained on, and what it is."""

    config: BackboneConfig
    description: str

    @property
    def input_spec(self) -> InputSpec:
        """The input the model was pretrained on (:func:`pretraining_input`)."""
        return pretraining_input(self.config)


def pretraining_input(config: BackboneConfig) -> InputSpec:
    """What a backbone expects (``model.input_spec``): clips of its ``num_frames`` RGB frames, short side to its
    image size and centre-cropped, ImageNet mean and std (the original's pretraining views)."""
    return InputSpec(size=config.img_size, frames=config.num_frames, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     resize="center_crop")


MODELS: dict[str, ModelSpec] = {
    "endofm_vit_base": ModelSpec(BackboneConfig(embed_dim=768, depth=12, num_heads=12),
                                 "the released Endo-FM model: ViT-B/16, 8 x 224"),
    "endofm_vit_small": ModelSpec(BackboneConfig(embed_dim=384, depth=12, num_heads=6), "ViT-S/16, 8 x 224"),
    "endofm_vit_tiny": ModelSpec(BackboneConfig(embed_dim=192, depth=12, num_heads=3), "ViT-Ti/16, 8 x 224"),
    "endofm_vit_mini": ModelSpec(BackboneConfig(embed_dim=192, depth=4, num_heads=3, patch_size=8, img_size=64,
                                                drop_path_rate=0.0), "a CPU model (the cpu_tiny recipe), 8 x 64"),
    "endofm_vit_micro": ModelSpec(BackboneConfig(embed_dim=96, depth=2, num_heads=2, img_size=64, num_frames=4,
                                                 drop_path_rate=0.0), "the demo's and the tests' model, 4 x 64"),
}

MODEL_CONFIGS: dict[str, BackboneConfig] = {name: spec.config for name, spec in MODELS.items()}
"""The architecture of each named model."""


def model_spec(name: str) -> ModelSpec:
    """The record of a named model (:data:`MODELS`)."""
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return MODELS[name]


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(MODEL_CONFIGS)


def backbone_config(base: BackboneConfig, **overrides: object) -> BackboneConfig:
    """``base`` with fields changed; a key that is no field of :class:`BackboneConfig` is refused, naming it."""
    fields = {f.name for f in dataclasses.fields(BackboneConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise InputError(f"unknown backbone config keys: {sorted(unknown)}; valid: {sorted(fields)}")
    return dataclasses.replace(base, **overrides)


def build_model(name: str = "endofm_vit_base", **overrides: object) -> EndoFMBackbone:
    """The network of a named architecture, randomly initialised; keyword arguments override fields.

    The building block of training and of :func:`~endofm.models.factory.create_model`: an architecture and
    nothing else (no weights, no ``input_spec``). To use a model, pretrained or not, call ``create_model``.

    Example:
        >>> build_model("endofm_vit_micro", num_frames=8).config.num_frames
        8
    """
    return EndoFMBackbone(backbone_config(model_spec(name).config, **overrides))
