"""Masked-patch (iBOT) losses of the v2 tree.

- `CosinePatchLoss`: SimDINOv2's replacement of iBOT's cross-entropy — negative cosine between
  teacher and student features of the masked patches (the paper's SimDINOv2 patch objective), no centering or prototypes.
- `iBOTPatchLoss`: DINOv2's baseline (teacher softmax with centering or Sinkhorn-Knopp, student
  log-softmax), kept for the paper's comparisons.

Both follow DINOv2's `forward_masked(student_masked, teacher_masked, student_masks_flat,
n_masked_patches=None, masks_weight=None)` calling convention: the masked tokens of all global crops
are flattened into [M, p]; each masked patch counts 1/(#masked patches of its image) and the sum
is divided by the number of global crops in the batch, so that every image weighs the same.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from simdinov2.distributed import all_reduce_sum_with_grad
from simdinov2.loss.dino_clstoken_loss import sinkhorn_knopp

__all__ = ["CosinePatchLoss", "iBOTPatchLoss", "masked_patch_weights"]


def masked_patch_weights(student_masks_flat: torch.Tensor) -> torch.Tensor:
    """1/(#masked patches of its image) for every masked patch, in `student_masks_flat[mask]` order.

    `student_masks_flat` is [n_images, n_patches] bool (True = masked). Returns [M] float32.
    """
    if student_masks_flat.dim() != 2:
        raise ValueError(
            f"student_masks_flat must be [n_global_crops*B, n_patches], got {tuple(student_masks_flat.shape)}"
        )
    masks = student_masks_flat.bool()
    per_image = 1.0 / masks.sum(dim=-1).clamp(min=1).float()
    return per_image.unsqueeze(-1).expand_as(masks)[masks]


def _weighted_masked_mean(
    per_patch: torch.Tensor,
    student_masks_flat: torch.Tensor,
    n_masked_patches: int | None,
    masks_weight: torch.Tensor | None,
) -> torch.Tensor:
    """Σ_patches weight·value / n_images (the per-image average, averaged over the images)."""
    if masks_weight is None:
        masks_weight = masked_patch_weights(student_masks_flat)
    if n_masked_patches is not None:
        # The trainer may pad the masked tokens to a fixed upper bound; only the first ones are real.
        per_patch = per_patch[:n_masked_patches]
        masks_weight = masks_weight[:n_masked_patches]
    if per_patch.shape[0] != masks_weight.shape[0]:
        raise ValueError(
            f"{per_patch.shape[0]} masked patch tokens but {masks_weight.shape[0]} mask weights; "
            "pass n_masked_patches when the tokens are padded, or the matching masks_weight"
        )
    return (per_patch * masks_weight.to(per_patch.dtype)).sum() / student_masks_flat.shape[0]


class CosinePatchLoss(nn.Module):
    """−(per-image mean cosine between teacher and student masked patch features), image-averaged."""

    def forward(
        self,
        student_patch_tokens_masked: torch.Tensor,
        teacher_patch_tokens_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: int | None = None,
        masks_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if student_patch_tokens_masked.shape != teacher_patch_tokens_masked.shape:
            raise ValueError(
                f"CosinePatchLoss: student masked tokens {tuple(student_patch_tokens_masked.shape)} and teacher "
                f"masked tokens {tuple(teacher_patch_tokens_masked.shape)} must have the same shape [M, p]"
            )
        with torch.autocast(device_type=student_patch_tokens_masked.device.type, enabled=False):
            s = F.normalize(student_patch_tokens_masked.float(), dim=-1)
            t = F.normalize(teacher_patch_tokens_masked.detach().float(), dim=-1)
            cos = (s * t).sum(dim=-1)
            return -_weighted_masked_mean(cos, student_masks_flat, n_masked_patches, masks_weight)

    # DINOv2's meta-arch calls the masked variant by this name.
    forward_masked = forward


class iBOTPatchLoss(nn.Module):
    """iBOT's masked-patch cross-entropy with a centred (or Sinkhorn-Knopp) teacher (DINOv2 baseline)."""

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.patch_out_dim = patch_out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        # [1, D] broadcasts against both [M, D] masked tokens and [B, N, D] full token maps.
        self.register_buffer("center", torch.zeros(1, patch_out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        return F.softmax((teacher_patch_tokens.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: torch.Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: torch.Tensor | None = None,
        n_iterations: int = 3,
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets for masked teacher tokens [M, K]; the sample count is summed over ranks."""
        if n_masked_patches_tensor is None:
            n_masked_patches_tensor = torch.tensor(
                float(teacher_output.shape[0]), device=teacher_output.device
            )
        total = all_reduce_sum_with_grad(n_masked_patches_tensor.float().clone())
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations, total)

    @staticmethod
    def _cross_entropy(student: torch.Tensor, teacher: torch.Tensor, student_temp: float) -> torch.Tensor:
        return (teacher.float() * F.log_softmax(student.float() / student_temp, dim=-1)).sum(dim=-1)

    def forward(
        self,
        student_patch_tokens: torch.Tensor,
        teacher_patch_tokens: torch.Tensor,
        student_masks_flat: torch.Tensor,
    ) -> torch.Tensor:
        """Full token maps [B, N, D]: per-image mean over masked patches, averaged over images."""
        per_patch = self._cross_entropy(student_patch_tokens, teacher_patch_tokens, self.student_temp)
        masks = student_masks_flat.float()
        per_image = (per_patch * masks).sum(dim=-1) / masks.sum(dim=-1).clamp(min=1.0)
        return -per_image.mean()

    def forward_masked(
        self,
        student_patch_tokens_masked: torch.Tensor,
        teacher_patch_tokens_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: int | None = None,
        masks_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        per_patch = self._cross_entropy(
            student_patch_tokens_masked, teacher_patch_tokens_masked, self.student_temp
        )
        return -_weighted_masked_mean(per_patch, student_masks_flat, n_masked_patches, masks_weight)

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: torch.Tensor) -> None:
        """EMA of the mean teacher token over all tokens of all processes."""
        flat = teacher_patch_tokens.detach().float().reshape(-1, self.patch_out_dim)
        total = all_reduce_sum_with_grad(flat.sum(dim=0, keepdim=True))
        count = all_reduce_sum_with_grad(torch.tensor(float(flat.shape[0]), device=flat.device))
        batch_center = total / count.clamp(min=1.0)
        self.center.mul_(self.center_momentum).add_(batch_center * (1.0 - self.center_momentum))
