"""The coding-rate (MCR) objective of SimDINO / SimDINOv2, shared by both trees.

This module owns the one implementation of
- `coding_rate`: R(Z) = ½·logdet(I + p/(m·N·eps) · ZᵀZ), the expansion term of the paper
  ("Simplifying DINO via Coding Rate Regularization", arXiv 2502.10385), and
- `MCRLoss`: loss = −coeff·comp − expa, where `comp` is the mean cosine similarity between teacher
  and student views (compression / alignment) and `expa` is the averaged, γ-scaled coding rate of
  the two global views (expansion, the anti-collapse term that replaces DINO's centering,
  sharpening and prototype layer).

The exact formulas (and the upstream conventions we keep, such as the world size `N` entering the
scale even without a covariance all-reduce) are those of the paper (arXiv 2502.10385: the coding rate and the SimDINO objective) and of
upstream SimDINO's `MCRLoss`. Whatever the input dtype
or autocast state, the cosines are computed in float32 and the coding rate in float64 (see
`coding_rate` for why), and the loss is returned in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
import torch.nn as nn
import torch.nn.functional as F

from simdinov2.distributed import all_reduce_sum_with_grad, get_world_size

__all__ = ["MCRLoss", "coding_rate"]

# Number of teacher (global) views the objective is defined for: the expansion term averages the
# coding rate of exactly the two global views, and the compression term skips their diagonal pairs.
N_GLOBAL_VIEWS = 2

ViewsLike = torch.Tensor | Sequence[torch.Tensor]


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 for half/bf16/float32 inputs, float64 when any input is float64 (gradcheck)."""
    out = torch.float32
    for dt in dtypes:
        out = torch.promote_types(out, dt)
    return out


def _no_autocast(device: torch.device) -> AbstractContextManager:
    # Autocast would run the matmuls (ZᵀZ, cosine) in bf16/fp16 even on float32 inputs.
    return torch.autocast(device_type=device.type, enabled=False)


def _half_logdet_spd(mat: torch.Tensor) -> torch.Tensor:
    """½·logdet of a batch of SPD matrices [..., p, p] through a Cholesky factor L (= Σ log diag L).

    Called on I + α·C (C positive semi-definite, eigenvalues ≥ 1 in exact arithmetic) in float64.
    `cholesky_ex` reports failure instead of raising; only if rounding still makes a pivot
    non-positive (α·‖C‖ ≳ 1e14, i.e. absurdly small eps) we add the smallest diagonal jitter, in
    multiples of the float64 rounding level of the largest diagonal entry, that lets it succeed.
    Checking `info` synchronises with the device once per call: negligible next to a training step.
    """
    chol, info = torch.linalg.cholesky_ex(mat)
    if bool((info != 0).any()):
        eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)
        rounding = mat.detach().diagonal(dim1=-2, dim2=-1).amax() * torch.finfo(mat.dtype).eps * mat.shape[-1]
        for power in range(12):
            chol, info = torch.linalg.cholesky_ex(mat + rounding * (10.0**power) * eye)
            if not bool((info != 0).any()):
                break
        else:
            raise FloatingPointError(
                "coding rate: Cholesky factorisation of I + αZᵀZ failed; the features are probably "
                "not finite (check the model output for NaN/inf)"
            )
    return chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def coding_rate(z: torch.Tensor, eps: float, world_size: int = 1, reduce_cov: bool = False) -> torch.Tensor:
    """Coding rate R(Z) = ½·logdet(I + p/(m·N·eps) · ZᵀZ) of features `z` [..., m, p].

    Leading dimensions are batch dimensions (one rate each). `world_size` is N in the scale; with
    `reduce_cov=True` the p×p covariances ZᵀZ are summed over all processes (autograd-aware
    all-reduce) before the logdet, so that every rank computes the rate of the global batch of N·m
    samples. Returns the rate(s) in float32 (float64 for float64 input). No γ factor: `MCRLoss`
    applies it.

    Precision: the covariance and its factorisation are computed in float64 on purpose. The
    identity in I + α·C is what keeps the matrix well conditioned, but in float32 the rounding
    error of C itself is ≈ 1e-7·‖C‖, so once α·‖C‖ ≳ 1e6 (collapsed features: C ≈ m·uuᵀ and
    α·‖C‖ = p/eps) the computed C is no longer positive semi-definite to within 1/α: float32
    Cholesky then fails or silently returns a wrong logdet, and neither a jitter nor a float64
    retry of the already-rounded float32 matrix can restore the lost identity. A float64 ZᵀZ keeps
    the error ≈ 1e-16·α·‖C‖ — exact for every eps a user would set — and costs nothing for the
    p ≤ 1024 heads used here (a p×p matmul and Cholesky per view); the all-reduce of
    `reduce_cov=1` moves p²·8 bytes per view.
    """
    if not eps > 0:
        raise ValueError(f"coding rate: eps must be > 0 (got {eps})")
    if z.dim() < 2:
        raise ValueError(f"coding rate: expected features of shape [..., m, p], got {tuple(z.shape)}")
    m, p = z.shape[-2], z.shape[-1]
    out_dtype = _compute_dtype(z.dtype)
    with _no_autocast(z.device):
        z64 = z.to(torch.float64)
        cov = z64.mT @ z64  # [..., p, p]
        if reduce_cov:
            cov = all_reduce_sum_with_grad(cov)
        alpha = p / (m * world_size * eps)
        eye = torch.eye(p, dtype=cov.dtype, device=cov.device)
        return _half_logdet_spd(eye + alpha * cov).to(out_dtype)


def _as_views(views: ViewsLike, name: str) -> torch.Tensor:
    """Accept a list of [m, p] tensors or a stacked [V, m, p] tensor; return [V, m, p]."""
    if isinstance(views, torch.Tensor):
        if views.dim() != 3:
            raise ValueError(
                f"MCRLoss: {name} must be a list of [m, p] tensors or a stacked [V, m, p] tensor, "
                f"got a tensor of shape {tuple(views.shape)} (split a flat [V*m, p] output with .chunk(V))"
            )
        return views
    if not isinstance(views, Sequence) or len(views) == 0:
        raise ValueError(f"MCRLoss: {name} must be a non-empty list of [m, p] tensors or a [V, m, p] tensor")
    first = views[0]
    for idx, view in enumerate(views):
        if not isinstance(view, torch.Tensor) or view.dim() != 2:
            shape = tuple(view.shape) if isinstance(view, torch.Tensor) else type(view).__name__
            raise ValueError(f"MCRLoss: {name}[{idx}] must be a [m, p] tensor, got {shape}")
        if view.shape != first.shape:
            raise ValueError(
                f"MCRLoss: {name}[{idx}] has shape {tuple(view.shape)} but {name}[0] has "
                f"{tuple(first.shape)}; all views need the same batch size and feature dimension"
            )
    return torch.stack(list(views))


class MCRLoss(nn.Module):
    """SimDINO's coding-rate loss: −coeff·comp − expa (the paper's SimDINO objective; upstream's `MCRLoss`).

    Args:
        eps: the coding-precision ε² in the scale p/(m·N·eps); smaller means a stronger expansion.
        coeff: weight of the compression (alignment) term.
        expa_type: 0 = coding rate of the student global views; 1 = of (student + teacher)/2 per
            global view (default of both released configs).
        reduce_cov: 1 = sum the covariances over processes so the rate is that of the global batch.

    `eps` and `coeff` are plain float attributes: a schedule may overwrite them every iteration.

    Call `loss, parts = mcr(student_views, teacher_views)` with the student's views (2 globals first,
    then locals) and the teacher's 2 global views, each a list of L2-normalised [m, p] tensors or a
    stacked [V, m, p] tensor. `parts` holds detached `comp_loss`, `expa_loss`, `global_comp_loss`.
    """

    def __init__(self, eps: float = 0.5, coeff: float = 1.0, expa_type: int = 1, reduce_cov: int = 0) -> None:
        super().__init__()
        if expa_type not in (0, 1):
            raise ValueError(
                f"MCRLoss: expa_type must be 0 (student) or 1 ((student+teacher)/2), got {expa_type!r}"
            )
        if reduce_cov not in (0, 1):
            raise ValueError(
                f"MCRLoss: reduce_cov must be 0 (per-process covariance) or 1 (all-reduced), got {reduce_cov!r}"
            )
        self._check_eps(eps)
        self.eps = float(eps)
        self.coeff = float(coeff)
        self.expa_type = int(expa_type)
        self.reduce_cov = int(reduce_cov)

    @staticmethod
    def _check_eps(eps: float) -> None:
        if not eps > 0:  # also rejects NaN
            raise ValueError(
                f"MCRLoss: eps must be > 0 (got {eps}); it divides the covariance scale p/(m·N·eps)"
            )

    def extra_repr(self) -> str:
        return f"eps={self.eps}, coeff={self.coeff}, expa_type={self.expa_type}, reduce_cov={self.reduce_cov}"

    def forward(
        self, student_views: ViewsLike, teacher_views: ViewsLike
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._check_eps(self.eps)
        student = _as_views(student_views, "student_views")
        # The teacher is produced under no_grad by the trainer; detach anyway so that the
        # objective never back-propagates into the EMA teacher whatever the caller does.
        teacher = _as_views(teacher_views, "teacher_views").detach()
        n_student, n_teacher = student.shape[0], teacher.shape[0]
        if n_teacher != N_GLOBAL_VIEWS:
            raise ValueError(
                f"MCRLoss: needs exactly {N_GLOBAL_VIEWS} teacher (global) views, got {n_teacher}"
            )
        if n_student < n_teacher:
            raise ValueError(
                f"MCRLoss: got {n_student} student views but {n_teacher} teacher views; the student must "
                "see the 2 global crops (first) plus any local crops"
            )
        if student.shape[1:] != teacher.shape[1:]:
            raise ValueError(
                f"MCRLoss: student views are [m, p] = {list(student.shape[1:])} but teacher views are "
                f"{list(teacher.shape[1:])}; batch size and feature dimension must match"
            )

        with _no_autocast(student.device):
            dtype = _compute_dtype(student.dtype, teacher.dtype)
            student = student.to(dtype)
            teacher = teacher.to(dtype)
            comp, global_comp = self._compression(student, teacher)
            expa = self._expansion(student[:n_teacher], teacher)
            loss = -self.coeff * comp - expa
        parts = {
            "comp_loss": comp.detach(),
            "expa_loss": expa.detach(),
            "global_comp_loss": global_comp.detach(),
        }
        return loss, parts

    @staticmethod
    def _compression(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cosine over (teacher i, student j) pairs, same-view pairs (i = j < 2) excluded."""
        n_student, n_teacher = student.shape[0], teacher.shape[0]
        s_unit = F.normalize(student, dim=-1)
        t_unit = F.normalize(teacher, dim=-1)
        # [n_teacher, n_student]: batch-mean cosine for every pair, one batched contraction.
        pair_cos = torch.einsum("imp,jmp->ij", t_unit, s_unit) / student.shape[1]
        not_same_view = ~torch.eye(n_teacher, n_student, dtype=torch.bool, device=student.device)
        pair_cos = pair_cos * not_same_view
        comp = pair_cos.sum() / (n_teacher * n_student - min(n_teacher, n_student))
        global_comp = pair_cos[:, :n_teacher].sum() / (n_teacher * n_teacher - n_teacher)
        return comp, global_comp

    def _expansion(self, student_globals: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """γ · mean over the 2 global views of the coding rate."""
        z = student_globals if self.expa_type == 0 else 0.5 * (student_globals + teacher)
        m, p = z.shape[-2], z.shape[-1]
        # Upstream convention kept on purpose (upstream SimDINO's MCRLoss does the same): the world size N enters the scale
        # p/(m·N·eps) and γ even when reduce_cov=0 and each rank only sees its own m samples. With
        # reduce_cov=1, m·N is the global batch and the result is that of a single process holding
        # all N·m samples.
        world = get_world_size()
        rates = coding_rate(z, self.eps, world_size=world, reduce_cov=bool(self.reduce_cov))
        gamma = (p + world * m) / (p * world * m)
        return gamma * rates.mean()
