"""LayerScale (CaiT): a learned per-channel scale on each residual branch, parameter `gamma`."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerScale(nn.Module):
    """Multiply the input by a learned vector `gamma` initialised to `init_values`.

    Parameter name `gamma` matches DINOv2 checkpoints (`blocks.*.ls1.gamma`, `ls2.gamma`).
    """

    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self.init_values = float(init_values)
        self.gamma = nn.Parameter(torch.full((dim,), self.init_values))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


__all__ = ["LayerScale"]
