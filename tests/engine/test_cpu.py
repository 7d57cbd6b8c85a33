"""CPU settings of the command: denormals flushed in torch's thread pool and inside the trainer's steps (kept on the
calling thread), freed memory kept for reuse."""

from __future__ import annotations

import platform
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


CHURN = """
import resource, sys, torch
if sys.argv[1] == "command":
    from endofm.cli.main import main
    main([])
def churn():
    blocks = [torch.ones(2 << 20) for _ in range(6)]  # 6 x 8 MiB, freed together
    del blocks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_the_command_keeps_freed_memory_for_reuse() -> None:
    """Tensors freed and allocated again cost fresh, zero-filled pages (page faults) under glibc's defaults and
    almost none once the command has applied :func:`keep_freed_memory` (at most one 8 MiB block placed on pages
    the heap had not touched yet)."""
    faults = {}
    for mode in ("plain", "command"):
        run = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
        faults[mode] = int(run.stdout.split()[-1])
    assert faults["plain"] > 5 * 2048  # at least a quarter of the 48 MiB is faulted in again per round
    assert faults["command"] < 5 * 2048 / 2  # under half a block per round
    assert faults["command"] * 5 < faults["plain"]
