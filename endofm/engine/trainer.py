"""The one training loop of the package, shared by pretraining and fine-tuning.

A :class:`Recipe` says what is trained (network, optimiser, loss, schedules, extra state); the
:class:`Trainer` does the rest the same way for every recipe: devices and DDP, precision, a resumable data
order, atomic checkpoints with everything needed to continue exactly, a JSONL log, a progress bar, PNG
plots, and stopping cleanly on a non-finite loss.

Run folder::

    config.yaml          the resolved config (written by the caller)
    log.jsonl            one record per step and per epoch
    checkpoints/last.pt  the latest training state (epoch_NNNN.pt copies as run.keep_checkpoints and
                         run.keep_every say; see endofm.engine.retention)
    plots/*.png          curves of the logged values
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from endofm.engine.cpu import denormals_flushed, loader_workers
from endofm.engine.distributed import DistributedContext, all_gather_objects, all_reduce_sum, barrier
from endofm.engine.logging import EpochProgress, JsonlLogger, epoch_line, plot_curves, read_jsonl
from endofm.engine.retention import epoch_file, prune_epoch_files, wants_epoch_file
from endofm.engine.sampler import ShardedBatchSampler
from endofm.engine.state import capture_rng_state, load_training_state, restore_rng_state, save_training_state
from endofm.errors import ConfigError, TrainingError
from endofm.models.streams import keyed_rows, sample_keys

PLOT_INTERVAL_S = 60.0
"""The curves are redrawn at the first epoch end this many seconds after the last drawing, and at the end
(drawing them takes about a second: too much after every epoch of a short run)."""


@dataclass
class RunConfig:
    """How a run is driven, whatever it trains."""

    out_dir: str = "runs/pretrain"
    epochs: int = 30
    batch_size: int = 12
    """Global batch size: split evenly over the processes of a distributed run."""
    num_workers: int = 4
    device: str = "auto"
    precision: str = "auto"
    """``auto`` (bf16 autocast on GPU, fp32 on CPU), ``fp32``, ``bf16``, or ``fp16`` (autocast with a gradient
    scaler, as the original pretraining's ``--use_fp16``)."""
    seed: int = 0
    checkpoint_every: int = 0
    """Also write ``last.pt`` every this many steps (0: at epoch ends only)."""
    keep_checkpoints: int = 0
    """Epoch-end training states kept as ``checkpoints/epoch_NNNN.pt`` beside ``last.pt``: the latest this many
    (0: none, -1: every epoch's). The selected model (``model/``, ``teacher/``) is written whatever this says."""
    keep_every: int = 0
    """Also keep the epoch-end state of every epoch that is a multiple of this (0: none; the original
    pretraining's ``--saveckp_freq``)."""
    max_steps: int | None = None
    """Stop after this many steps in all (a short run; the schedules still span ``epochs``)."""
    drop_last: bool = True
    """Drop each epoch's last, incomplete batch (every step has the full batch); ``false`` trains it as a
    smaller batch, as the original's PolypDiag fine-tuning (one process only)."""
    epoch_steps: int | None = None
    """End every epoch after at most this many steps (a quick check of a whole protocol, epoch-end evaluation
    included; the schedules span the shortened epochs). Default: the whole dataset."""
    progress: bool = True
    dist_timeout: float = 1800.0
    """Seconds a distributed run waits for a stalled or lost process before it stops with an error."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"run.epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"run.batch_size must be at least 1, got {self.batch_size}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"run.precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.epoch_steps is not None and self.epoch_steps < 1:
            raise ConfigError(f"run.epoch_steps must be at least 1, got {self.epoch_steps}")
        if self.num_workers < 0 or self.checkpoint_every < 0 or self.keep_every < 0:
            raise ConfigError("run.num_workers, run.checkpoint_every and run.keep_every must not be negative")
        if self.keep_checkpoints < -1:
            raise ConfigError(f"run.keep_checkpoints must be -1 (all), 0 or more, got {self.keep_checkpoints}")
        if self.dist_timeout <= 0:
            raise ConfigError(f"run.dist_timeout must be positive (seconds), got {self.dist_timeout}")


PEER_FAILURES = ("Timed out", "timed out", "Connection closed by peer", "Connection reset by peer",
                 "operation timeout")
"""Words of the backends' errors when another process stalled or died (gloo raises plain RuntimeErrors)."""

LossPart = Callable[[], tuple[torch.Tensor, dict[str, float]]]
"""One part of a batch's loss (:meth:`Recipe.loss_parts`): returns the part and values to log."""


class Recipe(ABC):
    """What a run trains. ``network`` is the trainable module (wrapped in DDP by the trainer)."""

    network: nn.Module
    plot_keys: tuple[str, ...] = ("loss", "lr")
    unused_parameters: bool = False
    """Some parameters get no gradient in a step (DDP's ``find_unused_parameters``)."""

    @abstractmethod
    def configure(self, steps_per_epoch: int, epochs: int) -> torch.optim.Optimizer:
        """Build the schedules for this many steps and return the optimiser."""

    @abstractmethod
    def compute_loss(self, network: nn.Module, batch: Any, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward a batch; return the loss and values to log."""

    def loss_parts(self, network: nn.Module, batch: Any, epoch: int) -> list[LossPart]:
        """The loss of a batch as parts that sum to it, each computed only after the previous one's backward,
        so that one part's activations are held at a time; by default one part, :meth:`compute_loss`.
        The logged values of the parts are summed."""
        return [partial(self.compute_loss, network, batch, epoch)]

    def before_step(self, step: int, epoch: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Set the schedules' values for this step; return them for the log."""
        return {}

    def after_backward(self, epoch: int) -> None:
        """Adjust gradients (clipping, freezing) before the optimiser step."""

    def after_step(self, step: int) -> None:
        """Work after the optimiser step (the teacher's moving average)."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Evaluate at the end of an epoch; return values to log."""
        return {}

    def before_finish(self) -> None:
        """Work of every process before :meth:`finish` (a sharded evaluation of the final model)."""

    def finish(self, out_dir: Path) -> dict[str, str]:
        """Write the run's products (exports) on the main process; return what was written."""
        return {}

    def batch_size(self, batch: Any) -> int:
        """Samples in this process's batch (for throughput)."""
        return len(batch)

    def skipped(self, batch: Any) -> list[str]:
        """Samples of the batch that were replaced because they could not be read."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """State beyond the network and optimiser (the teacher, the loss centre)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for fp32."""
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class Trainer:
    """Runs a :class:`Recipe` over a dataset; see the module docstring for what it writes."""

    def __init__(
        self,
        recipe: Recipe,
        dataset: Dataset,
        collate_fn: Any,
        run: RunConfig,
        context: DistributedContext,
        config_dict: dict[str, Any] | None = None,
    ) -> None:
        self.recipe, self.dataset, self.collate_fn = recipe, dataset, collate_fn
        self.run, self.context = run, context
        self.config_dict = config_dict or {}
        self.out_dir = Path(run.out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.logger = JsonlLogger(self.out_dir / "log.jsonl", enabled=context.is_main)
        self.sampler = ShardedBatchSampler(
            len(dataset), run.batch_size, context.rank, context.world_size, seed=run.seed, drop_last=run.drop_last
        )
        self.steps_per_epoch = min(self.sampler.steps, run.epoch_steps or len(dataset))
        self.dtype = autocast_dtype(run.precision, context.device)
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=self.dtype == torch.float16)
        """Scales fp16 losses so small gradients survive; skips a step whose gradients overflowed."""
        self._plotted_at, self._plotted_step = time.perf_counter(), -1
        self._epoch_losses: list[float] = []
        """The losses of the current epoch's steps so far (saved with a mid-epoch checkpoint: a resumed
        epoch's mean covers all its steps)."""

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    def _save(self, optimizer: torch.optim.Optimizer, epoch: int, next_step: int, global_step: int,
              epoch_end: bool = False) -> None:
        rng = all_gather_objects(capture_rng_state())  # every process's, restored to each on resume
        if self.context.is_main:
            state = {
                "network": self.recipe.network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "recipe": self.recipe.state_dict(),
                "epoch": epoch,
                "next_step": next_step,
                "global_step": global_step,
                "rng": rng,
                "epoch_losses": [] if epoch_end else list(self._epoch_losses),
                "config": self.config_dict,
                "world_size": self.context.world_size,
            }
            save_training_state(self.last_checkpoint, state)
            if epoch_end:
                keep = self.run.keep_checkpoints, self.run.keep_every
                if wants_epoch_file(epoch, *keep):
                    save_training_state(epoch_file(self.checkpoint_dir, epoch), state)
                prune_epoch_files(self.checkpoint_dir, *keep)
        barrier()

    def _resume(self, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
        if not self.last_checkpoint.exists():  # stopped before its first checkpoint: nothing to continue
            if self.context.is_main:
                tqdm.write(f"no checkpoint yet at {self.last_checkpoint}: starting the run from the beginning")
            self.logger.truncate_after(0)
            return 0, 0
        state = load_training_state(self.last_checkpoint)
        saved = state.get("config", {})
        for section, key in (("run", "batch_size"), ("run", "epochs"), ("run", "seed")):
            old, new = saved.get(section, {}).get(key), self.config_dict.get(section, {}).get(key)
            if old is not None and old != new:
                raise TrainingError(f"cannot resume: {section}.{key} was {old} in the checkpoint, now {new}")
        self.recipe.network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.recipe.load_state_dict(state["recipe"])
        rng = state["rng"]  # one per process (a single one in checkpoints of earlier versions)
        if isinstance(rng, list):
            rng = rng[self.context.rank] if len(rng) == self.context.world_size else rng[0]
        restore_rng_state(rng)
        self._epoch_losses = list(state.get("epoch_losses", []))
        self.logger.truncate_after(state["global_step"])
        if self.context.is_main:
            tqdm.write(f"resuming at epoch {state['epoch'] + 1}, step {state['next_step'] + 1} (step "
                       f"{state['global_step'] + 1} of the run) from {self.last_checkpoint}")
        return state["epoch"], state["next_step"]

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end (or ``max_steps``); returns the last epoch's logged values and the exports."""
        return self._peers_answer(self._fit, resume)

    def _fit(self, resume: bool) -> dict[str, Any]:
        optimizer = self.recipe.configure(self.steps_per_epoch, self.run.epochs)
        start_epoch, start_step = self._resume(optimizer) if resume else (0, 0)
        network = self.recipe.network
        if self.context.distributed:
            device_ids = [self.context.device.index] if self.context.device.type == "cuda" else None
            if device_ids:  # batch norm over the global batch, as one GPU (torch syncs it on GPUs only)
                network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
            network = DistributedDataParallel(network, device_ids=device_ids,
                                              find_unused_parameters=self.recipe.unused_parameters)
        global_step = start_epoch * self.steps_per_epoch + start_step
        summary: dict[str, Any] = {}
        for epoch in range(start_epoch, self.run.epochs):
            if self.run.max_steps is not None and global_step >= self.run.max_steps:
                break
            epoch_stats = self._train_epoch(network, optimizer, epoch, start_step, global_step)
            global_step = epoch_stats.pop("global_step")
            finished = epoch_stats.pop("finished")
            start_step = 0
            if not finished:
                break
            summary = {"event": "epoch", "epoch": epoch, **epoch_stats, **self.recipe.on_epoch_end(epoch)}
            self.logger.log(summary)
            if self.context.is_main:
                tqdm.write(epoch_line(epoch + 1, self.run.epochs, {k: v for k, v in summary.items()
                                                                    if k not in ("event", "epoch", "skipped")}))
            self._save(optimizer, epoch + 1, 0, global_step, epoch_end=True)
            if time.perf_counter() - self._plotted_at >= PLOT_INTERVAL_S:
                self._plot(global_step)
        if self._plotted_step != global_step:
            self._plot(global_step)
        self.recipe.before_finish()
        exports = self.recipe.finish(self.out_dir) if self.context.is_main else {}
        barrier()
        return {**summary, "exports": exports, "global_step": global_step}

    def _peers_answer(self, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)``; a collective that failed because another process stalled or died becomes one
        :class:`TrainingError` naming ``run.dist_timeout`` and the checkpoint to resume from."""
        try:
            return work(*args)
        except RuntimeError as error:  # gloo and NCCL report a lost or silent peer as a RuntimeError
            if not (self.context.distributed and (isinstance(error, torch.distributed.DistError) or any(
                    marker in str(error) for marker in PEER_FAILURES))):
                raise
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TrainingError(
                f"process {self.context.rank}: another process of the run stopped answering (run.dist_timeout="
                f"{self.run.dist_timeout:g} s): {reason}. {self.last_checkpoint} holds the last checkpoint: --resume "
                "continues from it (a restart by torchrun --max-restarts does so by itself)") from error

    def _train_epoch(self, network: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, start_step: int,
                     global_step: int) -> dict[str, Any]:
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_step)
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=loader_workers(self.run.num_workers),
            collate_fn=self.collate_fn,
            pin_memory=self.context.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.run.seed + epoch),
        )
        network.train()
        losses, skipped = self._epoch_losses if start_step else [], []
        self._epoch_losses = losses
        progress = EpochProgress(self.steps_per_epoch - start_step, f"epoch {epoch + 1}/{self.run.epochs}",
                                 enabled=self.run.progress and self.context.is_main)
        finished = True
        tick = time.perf_counter()
        for offset, batch in enumerate(loader):
            step_in_epoch = start_step + offset
            scheduled = self.recipe.before_step(global_step, epoch, optimizer)
            keys = sample_keys(self.run.seed, epoch, self.sampler.indices(step_in_epoch))
            with denormals_flushed(), keyed_rows(keys):
                loss_value, values = self._step(network, optimizer, batch, epoch, step_in_epoch, global_step)
            skipped += self.recipe.skipped(batch)
            global_step += 1
            now = time.perf_counter()
            clips_per_s = self.recipe.batch_size(batch) * self.context.world_size / max(now - tick, 1e-9)
            tick = now
            losses.append(loss_value)
            record = {"step": global_step, "epoch": epoch, "loss": loss_value, **scheduled, **values,
                      "clips_per_s": clips_per_s}
            if self.context.device.type == "cuda":
                record["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.context.device) / 2**30
            self.logger.log(record)
            progress.update(loss=loss_value, lr=scheduled.get("lr", 0.0), clips_s=clips_per_s)
            at_limit = self.run.max_steps is not None and global_step >= self.run.max_steps
            if at_limit or (self.run.checkpoint_every and global_step % self.run.checkpoint_every == 0):
                self._save(optimizer, epoch, step_in_epoch + 1, global_step)
            if at_limit:
                finished = step_in_epoch + 1 == self.steps_per_epoch
                break
            if step_in_epoch + 1 == self.steps_per_epoch:  # run.epoch_steps shortens the epoch
                break
        progress.close()
        skipped_count = int(all_reduce_sum(torch.tensor(len(skipped))))
        if skipped and self.context.is_main:
            tqdm.write(f"epoch {epoch + 1}: {skipped_count} unreadable clip(s) replaced, e.g. {skipped[0]}")
        mean_loss = sum(losses) / len(losses) if losses else float("nan")
        self._epoch_losses = []
        return {"mean_loss": mean_loss, "skipped": skipped_count, "global_step": global_step, "finished": finished}

    def _step(self, network: nn.Module, optimizer: torch.optim.Optimizer, batch: Any, epoch: int,
              step_in_epoch: int, global_step: int) -> tuple[float, dict[str, float]]:
        """Forward and backward of each loss part, loss check, optimiser step; returns the loss and logged values.

        In a distributed run the gradients are averaged over the processes once, in the last part's backward.
        """
        autocast = partial(torch.autocast, self.context.device.type, dtype=self.dtype or torch.float32,
                           enabled=self.dtype is not None)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            parts = self.recipe.loss_parts(network, batch, epoch)
        total = torch.zeros((), device=self.context.device)
        values: dict[str, float] = {}
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            with nullcontext() if last or not isinstance(network, DistributedDataParallel) else network.no_sync():
                with autocast():
                    loss, part_values = part()
                self.scaler.scale(loss).backward()
            total += loss.detach().float()
            for key, value in part_values.items():
                values[key] = values.get(key, 0.0) + value
        loss_value = float(all_reduce_sum(total)) / self.context.world_size
        if values:  # the logged values of the whole batch: each process's share, averaged
            names = sorted(values)
            means = all_reduce_sum(torch.tensor([values[k] for k in names], dtype=torch.float64,
                                                device=self.context.device)) / self.context.world_size
            values = dict(zip(names, means.tolist(), strict=True))
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"the loss became {loss_value} at epoch {epoch + 1}, step {step_in_epoch + 1}; stopped without "
                f"saving, so {self.last_checkpoint} still holds the last good state. Lower the learning rate, "
                "use run.precision=fp32, or check the data."
            )
        self.scaler.unscale_(optimizer)  # clipping sees the true gradients
        self.recipe.after_backward(epoch)
        self.scaler.step(optimizer)  # skipped by the fp16 scaler when a gradient overflowed
        self.scaler.update()
        self.recipe.after_step(global_step)
        return loss_value, values

    def _plot(self, global_step: int) -> None:
        self._plotted_at, self._plotted_step = time.perf_counter(), global_step
        if self.context.is_main and self.logger.path.exists():
            records = [r for r in read_jsonl(self.logger.path) if "step" in r]
            plot_curves(records, self.recipe.plot_keys, self.out_dir / "plots")
