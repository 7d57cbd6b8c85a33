"""Process-group set-up for one process or many (``torchrun``), on CPU (gloo) or GPUs (NCCL)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from endofm.errors import InputError


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run: ``rank`` of ``world_size``, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> this process's GPU when there is one, else the CPU; anything else as given, if this
    machine has it (else an :class:`~endofm.errors.InputError` naming the device and the way out)."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:0, auto)") from error
    if resolved.type == "cuda":
        if resolved.index is None:
            resolved = torch.device(f"cuda:{local_rank}")
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: no CUDA GPU is available here; use --device cpu (or auto)")
        if resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r}: MPS is not available here; use --device cpu")
    return resolved


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, or run alone.

    The backend is NCCL when this process drives a GPU, gloo otherwise. A collective that waits more than
    ``timeout_s`` seconds for a peer (stalled, killed, never started) fails with an error instead of hanging.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place; a no-op when running alone."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over all processes, in place; a no-op when running alone."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (``[value]`` when running alone)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every process (``value`` itself when running alone)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every process, as DDP sends them before each
    training forward: after the last step each process holds the statistics of its own batches, and a model
    evaluated in shards must be one model, the one rank 0 saves."""
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def global_sum(local: torch.Tensor) -> torch.Tensor:
    """The sum of ``local`` over all processes, differentiable in this process's share (the others' shares are
    constants): a loss term of the whole global batch, such as a soft Dice over every process's pixels."""
    if world_size() == 1:
        return local
    others = all_reduce_sum(local.detach().clone()) - local.detach()
    return local + others


def shared_loss(loss: torch.Tensor) -> torch.Tensor:
    """A loss that every process computes alike from :func:`global_sum` terms, with its gradient scaled by the
    number of processes (its value unchanged): DDP's average of the processes' gradients is then the gradient
    of the one loss, as one process would compute it."""
    count = world_size()
    return loss if count == 1 else loss + (count - 1) * (loss - loss.detach())


def mean_count(count: torch.Tensor) -> float:
    """A count (the positives of a detection loss) summed over the processes and divided by their number, at
    least 1: the divisor of the original's losses (``reduce_sum(n) / num_gpus``), 1 process's count alone."""
    total = all_reduce_sum(count.detach().float().clone())
    return max(float(total) / world_size(), 1.0)


def shard(count: int) -> range:
    """This process's share of ``count`` evaluation samples: every ``world_size``-th, from its rank."""
    if world_size() == 1:
        return range(count)
    return range(dist.get_rank(), count, dist.get_world_size())


def gather_shards(items: list[Any]) -> list[Any]:
    """The per-sample results of every process's :func:`shard`, gathered in the samples' order."""
    if world_size() == 1:
        return items
    parts = all_gather_objects(items)
    return [part[i] for i in range(max(len(p) for p in parts)) for part in parts if i < len(part)]


def world_size() -> int:
    """Number of processes in the run (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every process; a no-op when running alone."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
