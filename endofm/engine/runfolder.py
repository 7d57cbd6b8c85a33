"""The run folder of a distributed run: one folder on storage every process sees, checked at start.

Rank 0 writes a fresh token into the folder and sends it to every process, which reads it back from its own
view of ``run.out_dir``: a process that finds no token or another one (a folder on a node's local disk, or
another run's) stops the run with one message on every process instead of a hang. Rank 0 then decides whether
the run starts or resumes, for all: with ``--resume``, or when an elastic agent restarted the workers
(``torchrun --max-restarts``) and the folder holds a run of the same config.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from endofm.engine.distributed import DistributedContext, all_gather_objects, broadcast_object
from endofm.engine.state import load_training_state
from endofm.errors import EndoFMError, TrainingError
from endofm.io import atomic_write_text

TOKEN_FILE = ".endofm-run-token"
"""Written by rank 0 at every start; read back by the other processes."""


def restarted_by_agent() -> bool:
    """Whether ``torchrun``'s elastic agent restarted this worker after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def check_shared(out_dir: Path, context: DistributedContext) -> None:
    """Raise :class:`TrainingError` on every process unless each one sees rank 0's ``out_dir``."""
    if not context.distributed:
        return
    token = None
    if context.is_main:
        token = uuid.uuid4().hex
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / TOKEN_FILE, token + "\n")
    token = broadcast_object(token)
    path = out_dir / TOKEN_FILE
    seen = path.read_text().strip() if path.is_file() else None
    problem = None if seen == token else "does not exist there" if seen is None else "holds another run's token"
    problems = [(rank, p) for rank, p in enumerate(all_gather_objects(problem)) if p]
    if problems:
        rank, why = problems[0]
        raise TrainingError(
            f"process {rank} cannot see rank 0's run folder {out_dir.resolve()} ({out_dir / TOKEN_FILE} {why}): "
            "run.out_dir must be one folder on storage shared by every node (NFS, Lustre, ...), the same path "
            "on each")


def decide_resume(out_dir: Path, context: DistributedContext, resume: bool, config: dict[str, Any]) -> bool:
    """Whether the run continues from ``out_dir``'s ``last.pt``, decided by rank 0 for every process;
    raises :class:`TrainingError` (on every process) when the folder holds a run that may not be continued."""
    decision: tuple[bool, str | None] = (resume, None)
    if context.is_main:
        last = out_dir / "checkpoints" / "last.pt"
        if restarted_by_agent() and not last.exists():  # failed before its first checkpoint: start over cleanly
            decision = (True, None)
        elif last.exists() and not resume:
            if restarted_by_agent() and _same_config(last, config):
                decision = (True, None)
            else:
                decision = (False, f"{out_dir} already holds a run: pass --resume to continue it, or another "
                                   "run.out_dir")
    resume, error = broadcast_object(decision)
    if error:
        raise TrainingError(error)
    return resume


def _same_config(last: Path, config: dict[str, Any]) -> bool:
    """Whether the checkpoint was written by a run of this config."""
    try:
        saved = load_training_state(last).get("config")
    except (OSError, RuntimeError, EndoFMError):
        return False
    return saved == config if isinstance(saved, dict) else False
