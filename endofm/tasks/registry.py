"""The fine-tuning tasks by name: the one list that the CLI, evaluation, prediction,
:func:`~endofm.tasks.loading.load_finetuned`, ``endofm reproduce``, the synthetic corpus and the demo read
(:class:`~endofm.tasks.base.Task`).

A task module registers its task with :func:`register_task` (``TASK = register_task(Task(...))``); importing
:mod:`endofm.tasks` imports the shipped task modules, so :data:`TASKS` lists them in that order (classify,
segment, detect) whichever module is imported first.
"""

from __future__ import annotations

from endofm.tasks.base import Task

TASKS: dict[str, Task] = {}
"""Every registered task, by :attr:`Task.name <endofm.tasks.base.Task.name>`, in registration order."""


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` and return it; a second task of the same name is refused (``ValueError``),
    so that no task silently replaces another."""
    if task.name in TASKS:
        raise ValueError(f"a task named {task.name!r} is already registered")
    TASKS[task.name] = task
    return task
