"""Random draws keyed by sample, not by process: the same run whatever the number of processes.

A training step marks the rows of its batch with 64-bit keys derived from ``(seed, epoch, sample index)``
(:func:`sample_keys`, :func:`keyed_rows`); a random draw inside the network (stochastic depth) then takes
each row's numbers from a counter-based hash of the row's key and the draw's site. A sample's numbers are
thus the same whichever process holds it, with whichever other samples, in a forward pass recomputed by
gradient checkpointing as in the first one. A module that turns a sample into several rows (views, frames)
derives the rows' keys with :func:`derive`. Outside :func:`keyed_rows` the draws use torch's generator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

_KEYS: ContextVar[np.ndarray | None] = ContextVar("endofm_row_keys", default=None)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on ``uint64`` (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_keys(seed: int, epoch: int, indices: Sequence[int]) -> np.ndarray:
    """The keys ``uint64 [B]`` of the samples ``indices`` (dataset indices) in ``epoch`` of a run seeded ``seed``."""
    base = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return _mix(np.asarray(indices, dtype=np.uint64).reshape(-1) * _GOLDEN + base)


def derive(keys: np.ndarray, *salts: int) -> np.ndarray:
    """Keys of the same rows for a sub-stream named by ``salts`` (a view, a frame, the teacher)."""
    out = np.asarray(keys, dtype=np.uint64)
    for salt in salts:
        out = _mix(out ^ _mix(np.full(out.shape, salt, dtype=np.uint64) + _GOLDEN))
    return out


def current_keys() -> np.ndarray | None:
    """The keys of the rows now being forwarded, or None outside :func:`keyed_rows`."""
    return _KEYS.get()


@contextmanager
def keyed_rows(keys: np.ndarray | None) -> Iterator[None]:
    """Forward passes inside draw row ``b``'s random numbers from ``keys[b]`` (None: torch's generator)."""
    token = _KEYS.set(None if keys is None else np.asarray(keys, dtype=np.uint64))
    try:
        yield
    finally:
        _KEYS.reset(token)


def uniform(keys: np.ndarray, site: int, count: int) -> np.ndarray:
    """``float64 [B, count]`` uniform in [0, 1): row ``b``'s ``count`` numbers at draw site ``site``."""
    counters = np.arange(count, dtype=np.uint64) + np.uint64(site) * np.uint64(1 << 32)
    bits = _mix(derive(keys, site)[:, None] + (counters[None, :] + np.uint64(1)) * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
