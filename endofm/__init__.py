"""endofm: foundation models for endoscopy video.

The public API, in a few lines::

    import endofm

    model = endofm.create_model("endofm_vit_base", pretrained="endo_fm.pth")  # or a folder, or hf-hub:org/name
    model.input_spec                                       # size, frames, mean/std the model expects
    ckpt = endofm.load_checkpoint("endo_fm.pth")          # any original layout, or an endofm folder
    video_embedding = endofm.embed_video("case.mp4", ckpt.backbone, window=32, stride=16)
    model = endofm.build_model("endofm_vit_base")          # random weights, released architecture
    cls = model(clips)                                     # clips [B, 3, T, H, W] -> [B, 768]
    cls, patches = model.forward_tokens(clips)             # patches [B, T, h, w, 768]
    pooled = model.forward_pooled(clips, "max")            # or "mean": over the patch tokens -> [B, 768]
    ckpt = endofm.load_checkpoint("runs/x/checkpoints/last.pt")  # a pretraining run's teacher at that step
    endofm.save_pretrained("my-model", ckpt.backbone)      # safetensors + config.json
    seg = endofm.load_finetuned("cvc.pth", num_heads=12)   # any fine-tuned model: .task, .model, .input

Errors a user can cause are :class:`EndoFMError` subclasses with messages that name the file or key.
"""

from endofm.engine.cpu import apply_cpu_settings
from endofm.errors import CheckpointError, ConfigError, DatasetError, EndoFMError, InputError, VideoError
from endofm.models import (
    BackboneConfig,
    DINOHead,
    EndoFMBackbone,
    InputSpec,
    LinearClassifier,
    ModelSpec,
    build_model,
    create_model,
    export_original,
    list_models,
    load_checkpoint,
    model_spec,
    save_pretrained,
)
from endofm.tasks.embed import VideoEmbedding, embed_video
from endofm.tasks.finetuned import LoadedFinetuned, load_finetuned, save_finetuned

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
    "export_original",
    "list_models",
    "load_checkpoint",
    "model_spec",
    "load_finetuned",
    "save_finetuned",
    "save_pretrained",
]
