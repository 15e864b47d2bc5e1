"""SwiGLU feed-forward block (parameters `w12`, `w3`), the FFN of DINOv2's ViT-g.

`SwiGLUFFNFused` is the variant the ViT builds for `ffn_layer="swiglu"` and `"swiglufused"` (as DINOv2
does): it shrinks the hidden width to 2/3 rounded up to a multiple of 8 so the parameter count matches
an MLP of the same ratio and DINOv2 ViT-g checkpoints load. No xformers kernel is needed: the math is
the same, written in plain torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn


class SwiGLUFFN(nn.Module):
    """out = w3(silu(x W1) * (x W2)), with W1 and W2 stacked in one Linear `w12`."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] | None = None,  # unused: SiLU is part of SwiGLU
        drop: float = 0.0,  # unused, accepted so it is interchangeable with Mlp
        bias: bool = True,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.hidden_features = hidden_features
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class SwiGLUFFNFused(SwiGLUFFN):
    """SwiGLU with DINOv2's hidden width: int(hidden * 2/3) rounded up to a multiple of 8."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] | None = None,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        hidden_features = hidden_features or in_features
        hidden_features = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        super().__init__(in_features, hidden_features, out_features, act_layer, drop, bias)


__all__ = ["SwiGLUFFN", "SwiGLUFFNFused"]
