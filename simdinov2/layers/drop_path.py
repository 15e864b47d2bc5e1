"""Stochastic depth (DropPath): drop a residual branch for whole samples during training.

Used by `Block` when the drop rate is small (<= 0.1); larger rates use the cheaper DINOv2 batch-subset
variant implemented in `block.py`.
"""

from __future__ import annotations

from torch import Tensor, nn


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Zero the residual `x` for a random subset of samples and rescale the rest by 1/keep_prob.

    The rescaling keeps the expected value of the branch unchanged, so eval mode needs no correction.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    # One Bernoulli draw per sample, broadcast over every other dimension.
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = x.new_empty(mask_shape).bernoulli_(keep_prob)
    if keep_prob > 0.0:
        keep.div_(keep_prob)
    return x * keep


class DropPath(nn.Module):
    """Module wrapper of `drop_path`; identity in eval mode or with `drop_prob=0`."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


__all__ = ["DropPath", "drop_path"]
