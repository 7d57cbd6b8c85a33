"""Causal predictors (:mod:`endofm.stream.steps`) of PyTorch models: any fine-tuned model
:func:`~endofm.load_finetuned` reads, or a backbone (:func:`~endofm.create_model`, a checkpoint) for
embeddings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from endofm.data.datasets.kumc import POLYP_CLASSES
from endofm.engine.distributed import resolve_device
from endofm.errors import InputError
from endofm.models.backbone import EndoFMBackbone
from endofm.models.detection.stft import STFTDetector
from endofm.stream.steps import (
    DEFAULT_SEGMENT_WINDOW,
    CausalPredictor,
    PastDetector,
    WindowClassifier,
    WindowEmbedder,
    WindowSegmenter,
    refuse_options,
)
from endofm.tasks.base import LoadedFinetuned, preset_input


class TorchNet:
    """numpy in, numpy out through a module under inference mode on ``device``."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module, self.device = module.to(device).eval(), device

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(x).to(self.device)).float().cpu().numpy()


class TorchDetector:
    """The STFT detector's two parts (:class:`~endofm.stream.steps.DetectorNet`): per frame the backbone, FPN
    and head towers (:meth:`STFTFCOSHead.frame_parts`), per key frame :meth:`STFTDetector.detect_parts`."""

    def __init__(self, model: STFTDetector, device: torch.device) -> None:
        self.model, self.device = model.to(device).eval(), device

    def frame(self, x: np.ndarray) -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode():
            return self.model.head.frame_parts(self.model.frame_features(torch.from_numpy(x).to(self.device)))

    def detect(self, parts: Sequence[list[dict[str, torch.Tensor]]], image_size: tuple[int, int]
               ) -> dict[str, np.ndarray]:
        stacked = [{name: torch.cat([p[level][name] for p in parts]) for name in parts[0][level]}
                   for level in range(len(parts[0]))]
        with torch.inference_mode():
            found = self.model.detect_parts(stacked, image_size)["detections"]
        return {name: value.cpu().numpy() for name, value in found.items()}


def finetuned_predictor(loaded: LoadedFinetuned, device: str | torch.device = "cpu", window: int | None = None,
                        seed: int | None = None, score_threshold: float | None = None) -> CausalPredictor:
    """The causal predictor of a fine-tuned model: ``window`` frames per clip (default: the model's frame
    count; a segmenter taking any count, :data:`DEFAULT_SEGMENT_WINDOW`), ``seed`` and ``score_threshold`` for
    the detector."""
    refuse_options(loaded.task, window, seed, score_threshold)
    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    spec = loaded.input_spec.to_dict()
    if loaded.task == "classify":
        data = loaded.metadata.get("data") or {}
        frames = int(data.get("num_frames") or loaded.input_spec.frames or 8)
        return WindowClassifier(TorchNet(loaded.model, device), spec, frames, data.get("classes") or
                                ("normal", "abnormal"), span=window)
    if loaded.task == "segment":
        return WindowSegmenter(TorchNet(loaded.model, device), spec,
                               window or loaded.input_spec.frames or DEFAULT_SEGMENT_WINDOW)
    if loaded.task == "detect" and isinstance(loaded.model, STFTDetector):
        return PastDetector(TorchDetector(loaded.model, device), spec,
                            loaded.metadata.get("classes") or list(POLYP_CLASSES), seed or 0,
                            0.5 if score_threshold is None else score_threshold)
    raise InputError(f"{loaded.path}: a {loaded.task} model of layout {loaded.layout} has no live mode "
                     "(live detection runs the STFT detector)")


def backbone_spec(backbone: EndoFMBackbone) -> dict[str, Any]:
    """The input of a backbone: its ``input_spec`` (:func:`~endofm.create_model`), else ImageNet statistics
    at its stored size and frame count, centre-cropped."""
    spec = getattr(backbone, "input_spec", None)
    if spec is None:
        config = backbone.config
        spec = preset_input("imagenet", tuple(config.img_size), config.num_frames, resize="center_crop")
    return spec.to_dict()


def embed_predictor(backbone: EndoFMBackbone, device: str | torch.device = "cpu",
                    window: int | None = None) -> CausalPredictor:
    """The causal embedder of a backbone: the CLS embedding of the last ``window`` frames (default: the
    backbone's frame count)."""
    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    spec = backbone_spec(backbone)
    return WindowEmbedder(TorchNet(backbone, device), spec, window or int(spec["frames"] or 8))


def load_predictor(checkpoint: str | os.PathLike, device: str = "cpu", embed: bool = False,
                   model_name: str | None = None, num_heads: int | None = None, **options: Any
                   ) -> CausalPredictor:
    """The causal predictor of a checkpoint: a fine-tuned model (:func:`~endofm.load_finetuned`), or with
    ``embed`` a backbone (``model_name``: :func:`~endofm.create_model` of that named model)."""
    if embed:
        from endofm.models.checkpoint import load_checkpoint
        from endofm.models.factory import create_model

        window = options.get("window")
        backbone = (create_model(model_name, pretrained=checkpoint) if model_name
                    else load_checkpoint(checkpoint, num_heads=num_heads).backbone)
        refuse_options("embed", options.pop("window", None), options.pop("seed", None),
                       options.pop("score_threshold", None))
        return embed_predictor(backbone, device, window)
    from endofm.tasks.loading import load_finetuned

    return finetuned_predictor(load_finetuned(checkpoint, num_heads), device, **options)
