"""The self-distillation loss of the recipe: cross-entropy between centred, sharpened teacher outputs on the
global views and student outputs on every other view."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from endofm.engine.distributed import all_reduce_sum, world_size


class DINOLoss(nn.Module):
    """Cross-view ("global to local") and cross-rate ("global to global", the dynamic-motion term) loss.

    Outputs are stacked view after view: ``student [V * B, K]`` for ``V`` views, ``teacher [G * B, K]``
    for the ``G`` global views (the first ``G`` student views). One cross-entropy term per pair
    (teacher view ``i``, student view ``v != i``), averaged. The centre is a running mean of the teacher
    outputs over all processes; softmax and centring run in fp32 whatever the autocast dtype.

    Example:
        >>> loss_fn = DINOLoss(out_dim=16, num_views=4)
        >>> loss = loss_fn(torch.randn(4 * 3, 16), torch.randn(2 * 3, 16), teacher_temp=0.04)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        out_dim: int,
        num_views: int,
        num_global_views: int = 2,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.num_views = num_views
        self.num_global_views = num_global_views
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probabilities(self, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Centred, sharpened teacher distribution (fp32)."""
        return F.softmax((teacher_output.float() - self.center) / teacher_temp, dim=-1)

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        student_logp = F.log_softmax(student_output.float() / self.student_temp, dim=-1).chunk(self.num_views)
        teacher_p = self.teacher_probabilities(teacher_output, teacher_temp).detach().chunk(self.num_global_views)
        total, terms = student_output.new_zeros((), dtype=torch.float32), 0
        for i, target in enumerate(teacher_p):
            for v, logp in enumerate(student_logp):
                if v == i:
                    continue
                total = total + torch.sum(-target * logp, dim=-1).mean()
                terms += 1
        self.update_center(teacher_output)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """EMA of the batch mean of teacher outputs, summed over every process."""
        batch_sum = all_reduce_sum(teacher_output.float().sum(dim=0, keepdim=True))
        batch_center = batch_sum / (len(teacher_output) * world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
