"""KoLeo regulariser (DINOv2 baseline): Kozachenko-Leonenko differential-entropy estimate.

For L2-normalised CLS features it pushes every sample away from its nearest neighbour in the batch:
loss = −mean_i log(‖x_i − x_nn(i)‖ + eps). SimDINOv2 switches it off (koleo_loss_weight 0); the
coding-rate term plays its role.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["KoLeoLoss"]


class KoLeoLoss(nn.Module):
    """−mean log nearest-neighbour distance of L2-normalised features [B, D] (B ≥ 2)."""

    def forward(self, features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        if features.dim() != 2 or features.shape[0] < 2:
            raise ValueError(f"KoLeoLoss: needs features [B, D] with B >= 2, got {tuple(features.shape)}")
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = F.normalize(features.float(), dim=-1, eps=eps)
            with torch.no_grad():
                # Nearest neighbour = largest inner product among the other samples (unit vectors).
                sims = x @ x.t()
                sims.fill_diagonal_(-float("inf"))
                neighbour = sims.argmax(dim=1)
            # pairwise_distance adds eps to the difference, so the distance (and its gradient) stays
            # finite for duplicated samples.
            dist = F.pairwise_distance(x, x[neighbour], p=2, eps=eps)
            return -torch.log(dist + eps).mean()
