"""Batches of sample indices that are the same whatever the number of processes, and resumable."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from endofm.errors import InputError


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches of a seeded per-epoch permutation, each split across processes.

    Global batch ``s`` of an epoch is ``perm[s * B:(s + 1) * B]``; process ``r`` of ``W`` takes its rows
    ``r, r + W, ...``. So one process with batch ``B`` sees exactly what ``W`` processes with ``B / W`` each
    see together, and ``start_step`` skips the batches a resumed run has already done. The incomplete final
    batch is dropped, or with ``drop_last=False`` (one process) yielded as a smaller batch.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if global_batch_size < 1 or global_batch_size % world_size:
            raise InputError(
                f"global batch size {global_batch_size} must be a positive multiple of the {world_size} processes"
            )
        if not drop_last and world_size > 1:
            raise InputError("keeping the last, smaller batch (drop_last false) needs one process: it cannot be "
                             f"split evenly over {world_size}")
        if global_batch_size > num_samples:
            raise InputError(f"batch size {global_batch_size} is larger than the dataset ({num_samples} samples)")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0
        self.start_step = 0
        self._cached: tuple[int, list[int]] = (-1, [])

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's permutation and the first global batch to yield."""
        self.epoch, self.start_step = epoch, start_step

    @property
    def steps(self) -> int:
        """Global batches of an epoch."""
        whole, rest = divmod(self.num_samples, self.global_batch_size)
        return whole + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return self.steps - self.start_step

    def _order(self) -> list[int]:
        """The epoch's sample order (computed once per epoch)."""
        if self._cached[0] != self.epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
                order = torch.randperm(self.num_samples, generator=generator).tolist()
            else:
                order = list(range(self.num_samples))
            self._cached = (self.epoch, order)
        return self._cached[1]

    def indices(self, step: int) -> list[int]:
        """This process's samples of global batch ``step`` of the current epoch (what :meth:`__iter__` yields)."""
        batch = self._order()[step * self.global_batch_size : (step + 1) * self.global_batch_size]
        return batch[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        for step in range(self.start_step, self.steps):
            batch = order[step * self.global_batch_size : (step + 1) * self.global_batch_size]
            yield batch[self.rank :: self.world_size]
