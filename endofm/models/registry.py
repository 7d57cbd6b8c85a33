"""Named backbone configurations and the model factory."""

from __future__ import annotations

import dataclasses

from endofm.errors import InputError
from endofm.models.backbone import BackboneConfig, EndoFMBackbone

MODEL_CONFIGS: dict[str, BackboneConfig] = {
    "endofm_vit_base": BackboneConfig(embed_dim=768, depth=12, num_heads=12),
    "endofm_vit_small": BackboneConfig(embed_dim=384, depth=12, num_heads=6),
    "endofm_vit_tiny": BackboneConfig(embed_dim=192, depth=12, num_heads=3),
    "endofm_vit_mini": BackboneConfig(
        embed_dim=192, depth=4, num_heads=3, patch_size=8, img_size=64, drop_path_rate=0.0
    ),
    "endofm_vit_micro": BackboneConfig(
        embed_dim=96, depth=2, num_heads=2, img_size=64, num_frames=4, drop_path_rate=0.0
    ),
}
"""``endofm_vit_base`` is the released Endo-FM model (121 M parameters); the others are smaller variants
for CPUs (``mini``: ``cpu_tiny.yaml``; ``micro``: the demo and the tests)."""


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(MODEL_CONFIGS)


def build_model(name: str = "endofm_vit_base", **overrides: object) -> EndoFMBackbone:
    """A randomly initialised backbone of a named configuration; keyword arguments override fields.

    Example:
        >>> build_model("endofm_vit_micro", num_frames=8).config.num_frames
        8
    """
    if name not in MODEL_CONFIGS:
        raise InputError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    fields = {f.name for f in dataclasses.fields(BackboneConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise InputError(f"unknown backbone config keys: {sorted(unknown)}; valid: {sorted(fields)}")
    return EndoFMBackbone(dataclasses.replace(MODEL_CONFIGS[name], **overrides))
