"""Pre-norm transformer block (`norm1, attn, ls1, norm2, mlp, ls2`) and `BlockChunk`.

Stochastic depth follows DINOv2: with a drop rate above 0.1 the residual branch is computed on a
random subset of the batch only (the others skip it) and rescaled by batch/subset, which saves compute;
with smaller rates a per-sample `DropPath` is used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .attention import Attention
from .drop_path import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp


def add_residual_on_batch_subset(
    x: Tensor, residual_fn: Callable[[Tensor], Tensor], drop_ratio: float
) -> Tensor:
    """x + residual_fn(x) for a random subset of max(int(B·(1-drop)), 1) samples.

    The branch output is scaled by B/subset so its expectation over the batch is unchanged (the
    unbiasedness argument of stochastic depth, applied per batch instead of per sample).
    """
    batch = x.shape[0]
    kept = max(int(batch * (1.0 - drop_ratio)), 1)
    kept_idx = torch.randperm(batch, device=x.device)[:kept]
    residual = residual_fn(x[kept_idx])
    return torch.index_add(x, 0, kept_idx, residual.to(x.dtype), alpha=batch / kept)


class Block(nn.Module):
    """x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))), with optional stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        attn_class: Callable[..., nn.Module] = Attention,
        ffn_layer: Callable[..., nn.Module] = Mlp,
        qknorm: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_class(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            qknorm=qknorm,
        )
        # LayerScale only when init_values is a positive number (None or 0 = off, as in DINOv2).
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

        self.norm2 = norm_layer(dim)
        self.mlp = ffn_layer(
            in_features=dim,
            hidden_features=int(dim * mlp_ratio),
            act_layer=act_layer,
            drop=drop,
            bias=ffn_bias,
        )
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

        self.sample_drop_ratio = float(drop_path)

    def _attn_residual(self, x: Tensor) -> Tensor:
        return self.ls1(self.attn(self.norm1(x)))

    def _ffn_residual(self, x: Tensor) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.sample_drop_ratio > 0.1:
            x = add_residual_on_batch_subset(x, self._attn_residual, self.sample_drop_ratio)
            x = add_residual_on_batch_subset(x, self._ffn_residual, self.sample_drop_ratio)
        elif self.training and self.sample_drop_ratio > 0.0:
            x = x + self.drop_path1(self._attn_residual(x))
            x = x + self.drop_path2(self._ffn_residual(x))
        else:
            x = x + self._attn_residual(x)
            x = x + self._ffn_residual(x)
        return x


class BlockChunk(nn.ModuleList):
    """A run of consecutive blocks (for FSDP-style wrapping).

    DINOv2 pads each chunk with `nn.Identity()` in front so the real blocks keep their GLOBAL index:
    chunk c of size s holds `blocks.c.{c*s} .. blocks.c.{c*s+s-1}`; the padding has no parameters.
    """

    def forward(self, x: Tensor) -> Tensor:
        for block in self:
            x = block(x)
        return x


__all__ = ["Block", "BlockChunk", "add_residual_on_batch_subset"]
