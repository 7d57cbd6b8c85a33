"""Live video: causal predictors that take a stream frame by frame, the loop that keeps them live, and the
files a run writes (``endofm stream``).

The loop, the sources and the predictors' window logic import no PyTorch; the model runs in PyTorch
(:mod:`endofm.stream.torch_nets`) or in ONNX Runtime (:mod:`endofm.stream.onnx_nets`). :func:`load_predictor`
picks by the file: an ``.onnx`` file made by ``endofm export`` runs in ONNX Runtime.

Example:
    >>> from endofm.stream import Stream, load_predictor
    >>> predictor = load_predictor("kumc.pth")  # doctest: +SKIP
    >>> for result in Stream("/dev/video0", predictor):  # doctest: +SKIP
    ...     print(result.frame, result.latency, result.prediction["boxes"])
    >>> boxes = predictor.push(frame_rgb)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from endofm.stream.engine import Stream, StreamResult, run_stream
from endofm.stream.source import LiveFrames, SourceFrame
from endofm.stream.steps import CausalPredictor, PastDetector, WindowClassifier, WindowEmbedder, WindowSegmenter


def load_predictor(checkpoint: str | os.PathLike, device: str = "cpu", embed: bool = False, **options: Any
                   ) -> CausalPredictor:
    """The causal predictor of a model file: an ``endofm export`` ONNX file (ONNX Runtime, no PyTorch), or any
    model :func:`endofm.load_finetuned` reads (``embed``: a backbone, :func:`endofm.create_model` with
    ``model_name``). ``options``: ``window``, ``seed``, ``score_threshold``, ``num_heads``. An ONNX file runs
    on ONNX Runtime's CUDA provider for a ``cuda`` device (where the installed ONNX Runtime has it), else on
    the CPU."""
    if str(checkpoint).endswith(".onnx"):
        from endofm.stream.onnx_nets import onnx_predictor

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        return onnx_predictor(checkpoint, embed=embed, providers=providers, **options)
    from endofm.stream.torch_nets import load_predictor as load_torch

    return load_torch(checkpoint, device, embed, **options)


__all__ = ["CausalPredictor", "LiveFrames", "PastDetector", "SourceFrame", "Stream", "StreamResult",
           "WindowClassifier", "WindowEmbedder", "WindowSegmenter", "load_predictor", "run_stream"]
