"""Compiled inference: ``torch.compile`` with the weights frozen into the graph.

With frozen weights inductor folds them as constants, packs them for the CPU's GEMM ahead of time and fuses
bias, GELU, residual adds and norms around the matrix products. ``benchmarks/model_speed.py --compile``
measures the gain and the compile time per input shape.
"""

from __future__ import annotations

from torch import nn


def compile_for_inference(model: nn.Module) -> nn.Module:
    """Compile ``model`` in place for inference (eval mode, weights frozen in) and return it.

    The first call with each input shape compiles. Weights changed afterwards are not seen by the compiled
    graph: compile after loading. Inductor's ``freezing`` option is set for this model's graphs alone.
    """
    model.eval().compile(options={"freezing": True})
    return model
