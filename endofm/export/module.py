"""An exported model as the package's PyTorch-side objects, so ``endofm predict --runtime onnxruntime`` runs
the offline prediction of :mod:`endofm.tasks.predict` as it is, with the network in ONNX Runtime
(:func:`load_onnx_finetuned`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from endofm.errors import ExportError
from endofm.export.runtime import OnnxDetector, OnnxNet, load_exported
from endofm.models.detection.stft import LEVELS, STFTDetector
from endofm.models.detection.stft_postprocess import PostprocessConfig, postprocess
from endofm.models.inputs import InputSpec
from endofm.tasks.base import LoadedFinetuned

FRAME_PARTS = ("cls_tower", "bbox_tower", "bbox_reg")


class OnnxModule(nn.Module):
    """A one-input, one-output exported network as a module (CPU tensors in and out; ``to`` is a no-op: ONNX
    Runtime runs where its session does)."""

    def __init__(self, net: OnnxNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.net(x.detach().cpu().numpy())).to(x.device)


class _Head:
    """What :func:`endofm.tasks.detect.stft_inference.detect_video` calls of ``model.head``: the per-frame parts come
    from the exported per-frame file already."""

    @staticmethod
    def frame_parts(parts: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        return parts


class OnnxSTFT(STFTDetector):
    """The exported STFT detector with the methods video inference calls (:meth:`frame_features`,
    ``head.frame_parts``, :meth:`detect_parts`), post-processing by the package's PyTorch code. It is an
    :class:`STFTDetector` to the tasks (which pick the STFT's video path by type) without its PyTorch layers."""

    def __init__(self, detector: OnnxDetector, config: PostprocessConfig) -> None:
        nn.Module.__init__(self)
        self.detector, self.postprocess_config, self._head = detector, config, _Head()

    @property
    def head(self) -> Any:  # type: ignore[override]
        return self._head

    def frame_features(self, frames: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        flat = [torch.from_numpy(value) for value in self.detector.frame(frames.cpu().numpy())]
        return [dict(zip(FRAME_PARTS, flat[3 * level : 3 * level + 3], strict=True)) for level in range(len(LEVELS))]

    def detect_parts(self, parts: Sequence[dict[str, torch.Tensor]], image_size: tuple[int, int]) -> dict[str, Any]:
        frames = parts[0]["bbox_reg"].shape[0]
        per_frame = [[level[name][k : k + 1].numpy() for level in parts for name in FRAME_PARTS] for k in range(frames)]
        out: dict[str, Any] = {name: [torch.from_numpy(v) for v in values]
                               for name, values in self.detector.head(per_frame).items()}
        out["detections"] = postprocess(out, image_size, self.postprocess_config)
        return out


def load_onnx_finetuned(path: str | os.PathLike) -> LoadedFinetuned:
    """An exported fine-tuned model as :func:`~endofm.load_finetuned` returns one, its network in ONNX
    Runtime; an :class:`ExportError` for an exported backbone (no task to predict)."""
    info, net = load_exported(path)
    if info["kind"] == "backbone":
        raise ExportError(f"{path}: an exported backbone (embeddings), not a fine-tuned model; predict needs an "
                          "exported classifier, segmenter or detector (endofm stream --embed runs a backbone)")
    metadata = dict(info.get("metadata") or {})
    spec = InputSpec.from_dict(info["input"])
    if isinstance(net, OnnxDetector):
        config = PostprocessConfig(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in (metadata.get("postprocess") or {}).items()})
        model: nn.Module = OnnxSTFT(net, config)
    else:
        model = OnnxModule(net)
    return LoadedFinetuned(info["task"], model, spec, str(path), f"onnx-{metadata.get('layout', info['kind'])}",
                           metadata)
