"""The teacher as an exponential moving average of the student."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def update_ema(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter.

    Example:
        >>> teacher, student = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> update_ema(teacher, student, momentum=0.0)
        >>> bool(torch.equal(teacher.weight, student.weight))
        True
    """
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)
