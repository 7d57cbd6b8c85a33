"""CPU runtime settings: denormals flushed in torch's compute, and freed memory kept for reuse.

They change the whole process, so library calls never apply them on their own: the ``endofm`` command applies
them first thing, and a Python program opts in with ``endofm.apply_cpu_settings()``. Only
:func:`denormals_flushed`, which the trainer wraps around its steps, changes a mode, on the calling thread, and
restores it when the step ends.

Denormal floats: flushed to zero in torch's compute, kept everywhere else.

As training goes on, GELU tails and sharp softmaxes fill gradients with denormals (magnitudes below
1.2e-38), which x86 cores handle in microcode, several times slower (``benchmarks/denormals.py`` measures one
matrix product). The flush mode is
per thread, and threads take the mode of the thread that starts them. So torch's thread pool is started
with it (:func:`start_thread_pool_flushing_denormals`), and the calling thread flushes only inside
:func:`denormals_flushed` blocks, the trainer's steps: other numerical code is not built for the mode
(scipy's ``cKDTree`` recursed without end building a tree of a segmentation surface under it).

Freed memory: glibc's ``malloc`` gives large freed blocks back to the system (``munmap``, heap trimming), so
the next tensor of that size is mapped afresh and the kernel zero-fills it page by page as it is first
written. A transformer allocates and frees the same activation sizes in every block and every step:
:func:`keep_freed_memory` makes ``malloc`` keep them (the effect of ``LD_PRELOAD`` of jemalloc or tcmalloc,
which PyTorch's CPU tuning guide recommends, without a preload). ``benchmarks/model_speed.py`` measures it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

MALLOC_SETTINGS = {-3: 32 << 20, -1: (1 << 31) - 1, -2: 64 << 20}
"""glibc ``mallopt`` settings of :func:`keep_freed_memory`: ``M_MMAP_THRESHOLD`` 32 MiB (its largest: blocks
up to it come from the heap, larger ones are still mapped), ``M_TRIM_THRESHOLD`` 2 GiB (never trim the heap
below that) and ``M_TOP_PAD`` 64 MiB (grow it in large steps)."""
POOL_START_SIZE = 512
"""Side of the square matrices whose addition and product make torch and its BLAS start their CPU threads."""


def start_thread_pool_flushing_denormals() -> bool:
    """Start torch's CPU thread pool with denormals flushed in its threads, leaving the calling thread as it
    was; returns whether the CPU supports the mode. Only a pool not started yet is affected, so call it before
    any other torch work (the ``endofm`` command does)."""
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


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed blocks of up to 32 MiB for reuse instead of returning them to the
    system, so repeated activations cost no page faults; returns False (and changes nothing) where the C
    library is not glibc. The process's resident memory then stays near its peak."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return False
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())


def apply_cpu_settings() -> None:
    """The process settings of the ``endofm`` command, for a Python program to opt in (first thing):
    :func:`start_thread_pool_flushing_denormals` and :func:`keep_freed_memory`.

    Example:
        >>> import endofm
        >>> endofm.apply_cpu_settings()  # doctest: +SKIP
    """
    start_thread_pool_flushing_denormals()
    keep_freed_memory()


_WORKER_CAPS_SAID: set[tuple[int, int]] = set()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    sched_getaffinity = getattr(os, "sched_getaffinity", None)
    return len(sched_getaffinity(0)) if sched_getaffinity else os.cpu_count() or 1


def loader_workers(requested: int, setting: str = "run.num_workers") -> int:
    """``requested`` DataLoader processes, at most one per usable core (more only slow the run down and make
    PyTorch warn on every loader); the first time a request is cut, it is said once."""
    cores = usable_cores()
    if requested <= cores:
        return requested
    if (requested, cores) not in _WORKER_CAPS_SAID:
        _WORKER_CAPS_SAID.add((requested, cores))
        print(f"{setting}={requested} but this process may use {cores} CPU core(s): using {cores} loader "
              "process(es)", file=sys.stderr, flush=True)
    return cores
