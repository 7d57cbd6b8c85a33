"""The self-distillation loss of the recipe: cross-entropy between centred, sharpened teacher outputs on the
global views and student outputs on every other view."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from endofm.engine.distributed import all_reduce_max, all_reduce_sum, world_size

CENTERINGS = ("center", "sinkhorn")


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Soft assignments ``[B, K]`` of ``B`` samples to ``K`` prototypes with equal total mass per prototype,
    by Sinkhorn-Knopp on ``exp(logits)`` over the batch of every process (as SwAV and DINOv2 centre the
    teacher), in float64 so that sharp temperatures do not underflow. Unlike a running centre, it cannot
    let every sample fall onto one target: a batch whose outputs barely differ still gets distinct targets,
    which keeps small corpora of look-alike clips from collapsing. Rows sum to 1.

    Example:
        >>> q = sinkhorn_knopp(torch.zeros(4, 8) + torch.eye(4, 8))
        >>> q.sum(dim=1)
        tensor([1., 1., 1., 1.])
    """
    logits = logits.double()
    peak = all_reduce_max(logits.max().reshape(1))
    q = torch.exp(logits - peak).t()
    num_prototypes, batch = q.shape[0], q.shape[1] * world_size()
    tiny = torch.finfo(q.dtype).tiny
    q /= all_reduce_sum(q.sum().reshape(1))
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min(tiny)
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)
        q /= batch
    return (q * batch).t().float()


class DINOLoss(nn.Module):
    """Cross-view ("global to local") and cross-rate ("global to global", the dynamic-motion term) loss.

    Outputs are stacked view after view: ``student [V * B, K]`` for ``V`` views, ``teacher [G * B, K]``
    for the ``G`` global views (the first ``G`` student views). One cross-entropy term per pair
    (teacher view ``i``, student view ``v != i``), averaged. The centre is a running mean of the teacher
    outputs over all processes; softmax and centring run in fp32 whatever the autocast dtype.
    ``centering="sinkhorn"`` replaces the centre and softmax of the teacher by :func:`sinkhorn_knopp`
    (not in the published recipe; it keeps the small CPU recipe from collapsing).

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
        centering: str = "center",
    ) -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        self.centering = centering
        self.num_views = num_views
        self.num_global_views = num_global_views
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probabilities(self, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Centred, sharpened teacher distribution (fp32)."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_output / teacher_temp)
        return F.softmax((teacher_output.float() - self.center) / teacher_temp, dim=-1)

    @property
    def num_terms(self) -> int:
        """Cross-entropy terms of the loss: every (global view, other view) pair."""
        return self.num_global_views * (self.num_views - 1)

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        targets = self.teacher_probabilities(teacher_output, teacher_temp)
        loss = self.student_loss(student_output, range(self.num_views), targets)
        self.update_center(teacher_output)
        return loss

    def student_loss(self, student_output: torch.Tensor, views: Sequence[int], targets: torch.Tensor) -> torch.Tensor:
        """The terms of the student ``views`` (their outputs stacked view after view in ``student_output``)
        against the teacher ``targets`` (:meth:`teacher_probabilities`), divided by the number of terms of all
        views. Over a partition of the views these parts sum to the loss, so each part can be backpropagated
        on its own (``model.backward_per_group``).
        """
        student_logp = F.log_softmax(student_output.float() / self.student_temp, dim=-1).chunk(len(views))
        teacher_p = targets.detach().chunk(self.num_global_views)
        total = student_output.new_zeros((), dtype=torch.float32)
        for i, target in enumerate(teacher_p):
            for v, logp in zip(views, student_logp, strict=True):
                if v != i:
                    total = total + torch.sum(-target * logp, dim=-1).mean()
        return total / self.num_terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """EMA of the batch mean of teacher outputs, summed over every process (nothing with ``sinkhorn``
        centring, which keeps no centre)."""
        if self.centering != "center":
            return
        batch_sum = all_reduce_sum(teacher_output.float().sum(dim=0, keepdim=True))
        batch_center = batch_sum / (len(teacher_output) * world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy regulariser (as DINOv2): minus the mean log distance of each l2-normalised
    row to its nearest other row. It spreads embeddings apart, so that look-alike clips cannot all map to
    one point (not in the published recipe).

    Example:
        >>> koleo = KoLeoLoss()
        >>> spread, bunched = torch.eye(4), torch.ones(4, 4) + 0.01 * torch.eye(4)
        >>> bool(koleo(spread) < koleo(bunched))
        True
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings.float(), dim=-1, eps=self.eps)
        with torch.no_grad():
            similarity = x @ x.t()
            similarity.fill_diagonal_(-2.0)
            nearest = similarity.argmax(dim=1)
        distance = F.pairwise_distance(x, x[nearest], eps=self.eps)
        return -torch.log(distance + self.eps).mean()
