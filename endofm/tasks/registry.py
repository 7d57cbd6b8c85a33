"""The fine-tuning tasks by name: the one list that the CLI, evaluation, prediction,
:func:`~endofm.tasks.loading.load_finetuned`, ``endofm reproduce`` and the demo read
(:class:`~endofm.tasks.base.Task`).

A new task is a module declaring ``TASK = Task(...)`` and one entry here.
"""

from __future__ import annotations

from endofm.tasks import classify, detect, segment
from endofm.tasks.base import Task

TASKS: dict[str, Task] = {task.name: task for task in (classify.TASK, segment.TASK, detect.TASK)}
