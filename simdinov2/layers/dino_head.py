"""Projection heads of DINO (with a weight-normalised prototype layer) and SimDINO (without one).

SimDINO (paper §3, `remove_last_layer=True`) feeds the L2-normalised bottleneck features straight into
the coding-rate loss: no prototypes, no softmax, no centering. The DINO baseline appends a
weight-normalised Linear to `out_dim` prototypes whose parameters are named like the old
`torch.nn.utils.weight_norm` (`last_layer.weight_g`, `last_layer.weight_v`) so DINO/DINOv2 checkpoints
load as they are.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight = g · v / ||v|| (norm per output row): parameters `weight_g` [out, 1]
    and `weight_v` [out, in], the layout of `nn.utils.weight_norm(nn.Linear(...), dim=0)`.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        # v gets nn.Linear's default init (as DINO: weight_norm wraps a freshly built Linear); g = 1.
        weight_v = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(weight_v, a=5**0.5)
        self.weight_v = nn.Parameter(weight_v)
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))

    @property
    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Checkpoints saved with torch.nn.utils.parametrizations.weight_norm name g/v original0/original1.
        for new_name, old_name in (("weight_g", "original0"), ("weight_v", "original1")):
            old_key = f"{prefix}parametrizations.weight.{old_name}"
            if old_key in state_dict and f"{prefix}{new_name}" not in state_dict:
                state_dict[f"{prefix}{new_name}"] = state_dict.pop(old_key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


def _build_mlp(
    nlayers: int, in_dim: int, bottleneck_dim: int, hidden_dim: int, use_bn: bool, bias: bool
) -> nn.Module:
    """in -> hidden -> GELU -> (hidden -> GELU) x (nlayers-2) -> bottleneck; BatchNorm after hidden Linears.

    Sequential indices (`mlp.0`, `mlp.2`, ...) match DINO/DINOv2 head checkpoints; nlayers=1 is one Linear.
    """
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=bias)]
    if use_bn:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers.append(nn.GELU())
    for _ in range(nlayers - 2):
        layers.append(nn.Linear(hidden_dim, hidden_dim, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """MLP projection head; SimDINO (`remove_last_layer=True`) or DINO (prototype `last_layer`).

    Output: SimDINO -> [B, bottleneck_dim], unit L2 norm when `normalize`; DINO -> [B, out_dim] prototype
    scores of the normalised bottleneck. `last_layer` is None in SimDINO mode; in DINO mode the trainer
    cancels its gradients during the first epoch(s).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        normalize: bool = True,
        remove_last_layer: bool = False,
        norm_last_layer: bool = True,
        mlp_bias: bool = True,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"head nlayers must be >= 1 (got {nlayers})")
        self.in_dim = in_dim
        self.out_dim = bottleneck_dim if remove_last_layer else out_dim
        self.normalize = normalize
        self.remove_last_layer = remove_last_layer
        self.mlp = _build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim, use_bn, mlp_bias)
        self.apply(self._init_weights)
        self.last_layer: WeightNormLinear | None
        if remove_last_layer:
            self.last_layer = None
        else:
            self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
            # DINO: with norm_last_layer the prototype norms stay fixed at 1 (g frozen), a collapse guard.
            self.last_layer.weight_g.requires_grad = not norm_last_layer

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)
        if self.normalize:
            # fp16 cannot represent 1e-12; DINOv2 uses 1e-6 there.
            eps = 1e-6 if x.dtype == torch.float16 else 1e-12
            x = F.normalize(x, dim=-1, p=2, eps=eps)
        if self.last_layer is not None:
            x = self.last_layer(x)
        return x


__all__ = ["DINOHead", "WeightNormLinear"]
