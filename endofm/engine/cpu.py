"""CPU floating-point mode for training and inference."""

from __future__ import annotations

import torch


def flush_denormals() -> bool:
    """Treat denormal floats (magnitude below 1.2e-38) as zero on CPU; returns whether the CPU supports it.

    As training goes on, GELU tails and sharp softmaxes fill activations and gradients with denormals, which
    x86 cores handle in microcode: late steps of ``cpu_micro.yaml`` pretraining took 0.155 s instead of
    0.071 s (``benchmarks/denormals.py`` shows the effect on one matrix product). The mode is per thread and
    threads inherit it when they start, so the ``endofm`` command sets it before torch starts its thread
    pool; :class:`~endofm.engine.trainer.Trainer` sets it too, for library use (then it reaches at least the
    calling thread and any thread started later). No value that small changes a result.
    """
    return torch.set_flush_denormal(True)
