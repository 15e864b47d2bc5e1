"""Training pieces shared by the v1 trainer and the v2 trainer (`simdinov2/train`):
parameter groups (DINO's two groups; DINOv2's layer-wise lr decay groups), LARS, gradient clipping,
last-layer freezing and the EMA teacher update (precision lives in `simdinov2.precision`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import torch
from torch import nn

logger = logging.getLogger("simdinov2")


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups as in DINO: weights decay, biases and 1-D parameters (norms, tokens' gains) do not."""
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or param.ndim <= 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


_TOKEN_NAMES = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")
_CHUNKED_BLOCK = re.compile(r"(?:^|\.)blocks\.\d+\.(\d+)\.")
_FLAT_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _block_index(name: str, chunked: bool) -> int | None:
    match = (_CHUNKED_BLOCK if chunked else _FLAT_BLOCK).search(name)
    return int(match.group(1)) if match else None


def layerwise_param_groups(
    model: nn.Module, lr_decay_rate: float = 1.0, patch_embed_lr_mult: float = 1.0
) -> list[dict]:
    """DINOv2's per-parameter groups of one student module (backbone or head), before fusing.

    Layer-wise lr decay (BEiT / DINOv2): block i of an n-block ViT gets lr × decay^(n − i), the patch
    embedding and the tokens (layer 0) decay^(n + 1), the final norm and the heads 1; the patch
    embedding's lr is further multiplied by `patch_embed_lr_mult`. Biases, norms and LayerScale gammas
    get no weight decay. The prototype layer is flagged `is_last_layer` (its lr follows a schedule that
    is 0 during the first epoch(s)). Names of DDP-wrapped modules lose their `module.` prefix.
    """
    inner = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    chunked = bool(getattr(inner, "chunked_blocks", False))
    named = [(n.removeprefix("module."), p) for n, p in model.named_parameters()]
    indices = [i for i in (_block_index(n, chunked) for n, _ in named) if i is not None]
    n_blocks = max(indices) + 1 if indices else 0
    groups = []
    for name, param in named:
        if not param.requires_grad:
            continue
        layer_id = n_blocks + 1  # final norm, heads: no decay
        if n_blocks > 0:
            block = _block_index(name, chunked)
            if name.split(".")[0] in _TOKEN_NAMES:
                layer_id = 0
            elif block is not None:
                layer_id = block + 1
        lr_multiplier = lr_decay_rate ** (n_blocks + 1 - layer_id)
        if "patch_embed" in name:
            lr_multiplier *= patch_embed_lr_mult
        no_decay = name.endswith(".bias") or "norm" in name or "gamma" in name
        groups.append(
            {
                "params": param,
                "name": name,
                "is_last_layer": "last_layer" in name,
                "lr_multiplier": lr_multiplier,
                "wd_multiplier": 0.0 if no_decay else 1.0,
            }
        )
    return groups


def fuse_param_groups(groups: list[dict]) -> list[dict]:
    """Merge per-parameter groups with equal (lr_multiplier, wd_multiplier, is_last_layer): fewer,
    larger groups make the optimizer's multi-tensor kernels effective."""
    fused: dict[tuple, dict] = {}
    for g in groups:
        key = (g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"])
        if key not in fused:
            fused[key] = {
                "params": [],
                "lr_multiplier": g["lr_multiplier"],
                "wd_multiplier": g["wd_multiplier"],
                "is_last_layer": g["is_last_layer"],
            }
        fused[key]["params"].append(g["params"])
    return list(fused.values())


def apply_optim_schedule(
    optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float
) -> None:
    """Set every group's lr and weight decay from the schedules and its multipliers (v2 groups)."""
    for group in optimizer.param_groups:
        base = last_layer_lr if group.get("is_last_layer", False) else lr
        group["lr"] = base * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = wd * group.get("wd_multiplier", 1.0)


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (SGD + momentum with a per-tensor trust ratio).

    Biases and 1-D parameters are excluded from weight decay and from the trust ratio, as in DINO."""

    def __init__(
        self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001
    ):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=group["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(
                        param_norm > 0.0,
                        torch.where(update_norm > 0, group["eta"] * param_norm / update_norm, one),
                        one,
                    )
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(dp)
                p.add_(mu, alpha=-group["lr"])
        return loss


def build_optimizer(
    name: str, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.Optimizer:
    """`adamw` | `sgd` | `lars` with DINO's settings (lr and wd are set by the schedules every step)."""
    name = name.lower()
    if name == "adamw":
        # Fused (one kernel for the whole update) where every parameter is a plain floating tensor: on
        # this project's 2-core CPU the optimizer step is ~5x faster than foreach, which on the CPU is a
        # per-tensor loop (benchmarks/RESULTS.md §3). FSDP2 shards (DTensor) keep the foreach path.
        params = [p for g in groups for p in g["params"]]
        fused = bool(params) and all(_fusable(p) for p in params)
        return torch.optim.AdamW(
            groups, betas=tuple(betas), **({"fused": True} if fused else {"foreach": True})
        )
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=0.9, foreach=True)
    if name == "lars":
        return LARS(groups)
    raise ValueError(f"unknown optimizer {name!r}: choose adamw, sgd or lars")


def _fusable(param: torch.Tensor) -> bool:
    """Whether torch's fused AdamW takes this parameter: a plain (non-DTensor) float tensor on CPU/CUDA."""
    return (
        type(param) in (torch.Tensor, nn.Parameter)
        and param.device.type in ("cpu", "cuda")
        and param.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    )


def clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """DINO's per-parameter clipping: each tensor's gradient norm is capped at `clip`; returns the norms.

    Multi-tensor kernels and one host sync instead of one norm, comparison and sync per parameter
    (1.1-1.5x faster on this CPU, more under load or on CUDA: benchmarks/RESULTS.md §3); same rule:
    coefficient clip / (norm + 1e-6), applied only where it is < 1."""
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if not grads:
        return []
    if not all(type(g) is torch.Tensor for g in grads):  # DTensor shards: the per-tensor path
        return _clip_gradients_per_tensor(grads, clip)
    norms = torch.stack(torch._foreach_norm(grads, 2.0))
    coefs = (clip / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(coefs.unbind()))
    return norms.tolist()


def _clip_gradients_per_tensor(grads: list[torch.Tensor], clip: float) -> list[float]:
    norms = []
    for grad in grads:
        norm = grad.norm(2)
        norms.append(float(norm))
        coef = clip / (norm + 1e-6)
        if coef < 1:
            grad.mul_(coef)
    return norms


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Zero the prototype layer's gradients during the first `freeze_last_layer` epochs (DINO)."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


@torch.no_grad()
def ema_update(
    teacher_params: Iterable[torch.Tensor], student_params: Iterable[torch.Tensor], momentum: float
) -> None:
    """teacher ← m·teacher + (1−m)·student, as one multi-tensor lerp.

    Works on plain tensors and on FSDP2 DTensor shards alike (pointwise on matching shards)."""
    t = [p.detach() for p in teacher_params]
    s = [p.detach() for p in student_params]
    if len(t) != len(s):
        raise ValueError(f"teacher has {len(t)} parameters but student has {len(s)}: they must match")
    if not t:
        return
    torch._foreach_lerp_(t, s, 1.0 - momentum)
