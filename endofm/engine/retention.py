"""Which epoch-end training states a run keeps beside ``checkpoints/last.pt``.

A training state holds the network, the optimiser and the recipe's state (about 1 GB for a ViT-B with AdamW),
so keeping one per epoch fills a disk. ``last.pt`` (to resume) and the run's selected model (the fine-tuned
``model/``, the pretrained ``teacher/``) are always kept; ``run.keep_checkpoints`` and ``run.keep_every`` say
which ``epoch_NNNN.pt`` copies are kept as well.
"""

from __future__ import annotations

import re
from pathlib import Path

EPOCH_FILE = re.compile(r"epoch_(\d{4,})\.pt")
"""The name of an epoch-end state: ``epoch_NNNN.pt``, NNNN the epochs completed."""


def epoch_file(directory: Path, epoch: int) -> Path:
    """The path of the state saved after ``epoch`` completed epochs."""
    return directory / f"epoch_{epoch:04d}.pt"


def kept_epochs(epochs: list[int], keep_last: int, keep_every: int) -> set[int]:
    """The epochs of ``epochs`` to keep: the latest ``keep_last`` (-1: all) and every multiple of
    ``keep_every`` (0: none)."""
    if keep_last < 0:
        return set(epochs)
    latest = sorted(epochs)[len(epochs) - keep_last:] if keep_last else []
    return set(latest) | {e for e in epochs if keep_every and e % keep_every == 0}


def wants_epoch_file(epoch: int, keep_last: int, keep_every: int) -> bool:
    """Whether the state after ``epoch`` completed epochs is written as ``epoch_NNNN.pt`` at all."""
    return keep_last != 0 or bool(keep_every and epoch % keep_every == 0)


def prune_epoch_files(directory: Path, keep_last: int, keep_every: int) -> list[Path]:
    """Remove the ``epoch_NNNN.pt`` files of ``directory`` that the settings do not keep; returns those removed.
    Other files (``last.pt``, a user's own) are never touched."""
    found = {int(m.group(1)): path for path in directory.glob("epoch_*.pt")
             if (m := EPOCH_FILE.fullmatch(path.name))}
    kept = kept_epochs(list(found), keep_last, keep_every)
    removed = [path for epoch, path in sorted(found.items()) if epoch not in kept]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
