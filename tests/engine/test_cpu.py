"""Denormals: flushed in torch's thread pool and inside the trainer's steps, kept on the calling thread."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

PROBE = """
import torch
from endofm.cli.main import main
from endofm.engine.cpu import denormals_flushed
main([])
tiny = torch.full((1 << 20,), 1e-39)
doubled = tiny * 2
with denormals_flushed():
    inside = tiny * 2
after = tiny[:4] * 2
print(int((doubled == 0).sum()), int((doubled != 0).sum()), int((inside != 0).sum()), int((after == 0).sum()))
"""


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX") or torch.get_num_threads() < 2,
                    reason="needs x86 (DAZ/FTZ) and at least 2 torch threads")
def test_the_pool_flushes_denormals_and_the_calling_thread_only_inside_the_block() -> None:
    """The command starts the pool flushing; the calling thread keeps denormals (scipy's cKDTree recursed without
    end under the mode) except inside ``denormals_flushed``. A parallel product splits between both."""
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    pool_zeroed, caller_kept, inside_kept, after_zeroed = (int(v) for v in run.stdout.split()[-4:])
    assert pool_zeroed > 0 and caller_kept > 0
    assert inside_kept == 0 and after_zeroed == 0
