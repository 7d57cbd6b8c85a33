"""Denormal floats on CPU: flushed to zero in torch's compute, kept everywhere else.

As training goes on, GELU tails and sharp softmaxes fill gradients with denormals (magnitudes below
1.2e-38), which x86 cores handle in microcode: late steps of ``cpu_micro.yaml`` pretraining took 0.155 s
instead of 0.071 s (``benchmarks/denormals.py`` shows the effect on one matrix product). The flush mode is
per thread, and threads take the mode of the thread that starts them. So torch's thread pool is started
with it (:func:`start_thread_pool_flushing_denormals`), and the calling thread flushes only inside
:func:`denormals_flushed` blocks, the trainer's steps: other numerical code is not built for the mode
(scipy's ``cKDTree`` recursed without end building a tree of a segmentation surface under it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

POOL_START_SIZE = 512
"""Side of the square matrices whose addition and product make torch and its BLAS start their CPU threads."""


def start_thread_pool_flushing_denormals() -> bool:
    """Start torch's CPU thread pool with denormals flushed in its threads, leaving the calling thread as it
    was; returns whether the CPU supports the mode. Only a pool not started yet is affected, so the ``endofm``
    command calls this first thing, and the trainer calls it for library use."""
    if not torch.set_flush_denormal(True):
        return False
    try:
        matrix = torch.ones(POOL_START_SIZE, POOL_START_SIZE).add_(1.0)
        matrix.mm(matrix)
    finally:
        torch.set_flush_denormal(False)
    return True


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormals to zero on the calling thread inside the block (and keep them again after it)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
