"""DINO's CLS-token cross-entropy loss with teacher centering / Sinkhorn-Knopp (baseline).

This is the loss SimDINO replaces; it is kept for the paper's DINO / DINOv2 comparisons and is used by
both trees: the v2 meta-arch calls `softmax_center_teacher` / `sinkhorn_knopp_teacher`, `forward` and
`update_center` separately (DINOv2 style), the v1 trainer calls `forward_v1`, which does centering,
sharpening, the loss and the centre update in one step (DINO v1 style).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from simdinov2.distributed import all_reduce_sum_with_grad, get_world_size

__all__ = ["DINOLoss"]


def sinkhorn_knopp(
    logits: torch.Tensor, temp: float, n_iterations: int, total_samples: torch.Tensor | int
) -> torch.Tensor:
    """Sinkhorn-Knopp targets for `logits` [B, K] (this rank's samples), distributed-aware.

    Alternately normalises the prototype marginals to 1/K and the sample marginals to 1/B_total
    (B_total = samples over all ranks); returns per-sample distributions (rows sum to 1), as in
    SwAV / DINOv2. Shared by the CLS-token and patch-token losses.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        # No max-shift: a per-rank shift would scale each rank's columns differently and break the
        # all-reduced marginals. DINO heads give |logits| <= ~1 (weight-normalised last layer on
        # L2-normalised input), so exp(logit/temp) stays finite for the usual temperatures.
        q = torch.exp(logits.float() / temp).t()  # [K, B]
        n_prototypes = q.shape[0]
        q = q / all_reduce_sum_with_grad(q.sum())
        for _ in range(n_iterations):
            q = q / all_reduce_sum_with_grad(q.sum(dim=1, keepdim=True))  # prototype marginals ...
            q = q / n_prototypes  # ... equal to 1/K
            q = q / q.sum(dim=0, keepdim=True)  # sample marginals (local: columns are per sample) ...
            q = q / total_samples  # ... equal to 1/B_total
        return (q * total_samples).t()


class DINOLoss(nn.Module):
    """Cross-entropy between centred, sharpened teacher softmax and student softmax (DINO)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"DINOLoss: out_dim must be >= 1 (got {out_dim})")
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def _check_dim(self, t: torch.Tensor, what: str) -> None:
        if t.shape[-1] != self.out_dim:
            raise ValueError(
                f"DINOLoss: {what} has {t.shape[-1]} prototypes but the loss was built with out_dim={self.out_dim}"
            )

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """softmax((t − center)/teacher_temp): the centred, sharpened teacher targets."""
        self._check_dim(teacher_output, "teacher_output")
        return F.softmax((teacher_output.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets (DINOv2's alternative to centering) for `teacher_output` [B, K]."""
        self._check_dim(teacher_output, "teacher_output")
        total = teacher_output.shape[0] * get_world_size()
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations, total)

    def forward(
        self,
        student_output_list: Sequence[torch.Tensor],
        teacher_out_softmaxed_centered_list: Sequence[torch.Tensor],
        skip_same_view: bool = True,
    ) -> torch.Tensor:
        """Mean over (teacher view, student view) pairs of −Σ_k t·log softmax(s/student_temp), batch-averaged.

        The student list starts with the global views in the teacher's order, then the locals; with
        `skip_same_view` (DINO v1 convention) the pairs (teacher i, student i) are skipped.
        """
        total, n_pairs = 0.0, 0
        for s_idx, student_out in enumerate(student_output_list):
            self._check_dim(student_out, f"student_output_list[{s_idx}]")
            log_probs = F.log_softmax(student_out.float() / self.student_temp, dim=-1)
            for t_idx, teacher_probs in enumerate(teacher_out_softmaxed_centered_list):
                if skip_same_view and s_idx == t_idx:
                    continue
                total = total - (teacher_probs * log_probs).sum(dim=-1).mean()
                n_pairs += 1
        if n_pairs == 0:
            raise ValueError(
                "DINOLoss: no (teacher, student) view pair to compare; pass at least one more view"
            )
        return total / n_pairs

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """EMA of the (all-process) batch mean of the teacher logits."""
        self._check_dim(teacher_output, "teacher_output")
        flat = teacher_output.detach().float().reshape(-1, self.out_dim)
        total = all_reduce_sum_with_grad(flat.sum(dim=0, keepdim=True))
        count = flat.shape[0] * get_world_size()
        batch_center = total / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1.0 - self.center_momentum))

    def forward_v1(
        self,
        student_output: torch.Tensor,
        teacher_output: torch.Tensor,
        teacher_temp: float,
        n_global: int = 2,
    ) -> torch.Tensor:
        """DINO v1 in one call: `student_output` [V·B, K] (globals first), `teacher_output` [n_global·B, K].

        Centres and sharpens the teacher, computes the loss over the cross-view pairs and updates
        the centre with this batch.
        """
        if teacher_output.shape[0] % n_global:
            raise ValueError(
                f"DINOLoss: teacher_output has {teacher_output.shape[0]} rows, not a multiple of n_global={n_global}"
            )
        batch = teacher_output.shape[0] // n_global
        if batch == 0 or student_output.shape[0] % batch:
            raise ValueError(
                f"DINOLoss: student_output has {student_output.shape[0]} rows, not a multiple of the per-view "
                f"batch {batch} (= teacher rows / {n_global})"
            )
        n_views = student_output.shape[0] // batch
        teacher_probs = self.softmax_center_teacher(teacher_output, teacher_temp).chunk(n_global)
        loss = self.forward(student_output.chunk(n_views), teacher_probs, skip_same_view=True)
        self.update_center(teacher_output)
        return loss
