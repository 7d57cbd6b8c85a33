"""endofm: foundation models for endoscopy video.

The public API, in a few lines::

    import endofm

    model = endofm.create_model("endofm_vit_base", pretrained="endo_fm.pth")  # or a folder, or hf-hub:org/name
    model.input_spec                                       # size, frames, mean/std the model expects
    video_embedding = endofm.embed_video("case.mp4", model, window=32, stride=16)  # with model.input_spec
    ckpt = endofm.load_checkpoint("endo_fm.pth")          # any original layout, or an endofm folder: all its parts
    model = endofm.build_model("endofm_vit_base")          # the bare architecture, random weights (training's start)
    cls = model(clips)                                     # clips [B, 3, T, H, W] -> [B, 768]
    cls, patches = model.forward_tokens(clips)             # patches [B, T, h, w, 768]
    pooled = model.forward_pooled(clips, "max")            # or "mean": over the patch tokens -> [B, 768]
    ckpt = endofm.load_checkpoint("runs/x/checkpoints/last.pt")  # a pretraining run's teacher at that step
    endofm.save_pretrained("my-model", ckpt.backbone)      # safetensors + config.json
    endofm.export_onnx("polypdiag.pth", "polypdiag.onnx")  # ONNX, checked by ONNX Runtime (endofm[onnx])
    seg = endofm.load_finetuned("cvc.pth", num_heads=12)   # any fine-tuned model: .task, .model, .input_spec

Errors a user can cause are :class:`EndoFMError` subclasses with messages that name the file or key.
"""

from __future__ import annotations

import importlib
from typing import Any

from endofm.errors import CheckpointError, ConfigError, DatasetError, EndoFMError, InputError, VideoError

_LAZY = {
    "apply_cpu_settings": "endofm.engine.cpu",
    **dict.fromkeys(("BackboneConfig", "DINOHead", "EndoFMBackbone", "InputSpec", "LinearClassifier", "ModelSpec",
                     "build_model", "create_model", "export_original", "list_models", "load_checkpoint",
                     "model_spec", "save_pretrained"), "endofm.models"),
    "VideoEmbedding": "endofm.tasks.embed",
    "embed_video": "endofm.tasks.embed",
    "LoadedFinetuned": "endofm.tasks.loading",
    "load_finetuned": "endofm.tasks.loading",
    "save_finetuned": "endofm.tasks.loading",
    "export_onnx": "endofm.export.onnx",
}
"""The public names that need PyTorch, imported on first use: ``import endofm`` alone imports no PyTorch, so
the ONNX Runtime path (:mod:`endofm.export.runtime`, :mod:`endofm.stream`) runs without it."""


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'endofm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "apply_cpu_settings",
    "BackboneConfig",
    "CheckpointError",
    "ConfigError",
    "DINOHead",
    "DatasetError",
    "EndoFMBackbone",
    "EndoFMError",
    "InputError",
    "InputSpec",
    "LinearClassifier",
    "LoadedFinetuned",
    "VideoEmbedding",
    "VideoError",
    "ModelSpec",
    "build_model",
    "create_model",
    "embed_video",
    "export_onnx",
    "export_original",
    "list_models",
    "load_checkpoint",
    "model_spec",
    "load_finetuned",
    "save_finetuned",
    "save_pretrained",
]
