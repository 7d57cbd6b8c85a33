"""The stream's causal predictors (:mod:`endofm.stream.steps`) over a file of ``endofm export``, run by ONNX
Runtime (:mod:`endofm.export.runtime`): no PyTorch on this path."""

from __future__ import annotations

import os
from collections.abc import Sequence

from endofm.errors import ExportError, InputError
from endofm.export.runtime import load_exported
from endofm.stream.steps import (
    DEFAULT_SEGMENT_WINDOW,
    CausalPredictor,
    PastDetector,
    WindowClassifier,
    WindowEmbedder,
    WindowSegmenter,
    refuse_options,
)

POLYP_CLASSES = ("adenomatous", "hyperplastic")
"""The KUMC classes, for an exported detector whose file names none (the data readers need PyTorch)."""


def onnx_predictor(path: str | os.PathLike, embed: bool = False, window: int | None = None,
                   seed: int | None = None, score_threshold: float | None = None, num_heads: int | None = None,
                   model_name: str | None = None, providers: Sequence[str] | None = None) -> CausalPredictor:
    """The causal predictor (:mod:`endofm.stream.steps`) of an exported file, run by ONNX Runtime. ``embed``
    asks for a backbone's embeddings (and is refused for another model); ``num_heads`` applies to PyTorch
    checkpoints only."""
    if num_heads is not None or model_name is not None:
        raise InputError(f"{path}: --num-heads and --model apply to PyTorch checkpoints, not to an ONNX file")
    info, net = load_exported(path, providers)
    kind, spec, metadata = info["kind"], info["input"], info.get("metadata") or {}
    refuse_options(info["task"], window, seed, score_threshold)
    if embed != (kind == "backbone"):
        raise ExportError(f"{path}: an exported {kind} model; " + (
            "embeddings need an exported backbone (endofm export --embed)" if embed else
            "it gives embeddings: add --embed"))
    if kind == "backbone":
        return WindowEmbedder(net, spec, window or int(spec.get("frames") or 8))
    if kind == "classify":
        data = metadata.get("data") or {}
        frames = int(spec.get("frames") or data.get("num_frames") or 8)
        return WindowClassifier(net, spec, frames, data.get("classes") or ("normal", "abnormal"), span=window)
    if kind == "segment":
        if window is not None and spec.get("frames") and window != spec["frames"]:
            raise InputError(f"{path}: exported for clips of {spec['frames']} frames; --window {window} differs")
        return WindowSegmenter(net, spec, int(spec.get("frames") or window or DEFAULT_SEGMENT_WINDOW))
    return PastDetector(net, spec, metadata.get("classes") or list(POLYP_CLASSES), seed or 0,
                        0.5 if score_threshold is None else score_threshold)
