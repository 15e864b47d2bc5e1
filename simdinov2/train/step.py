"""The one optimisation step of both trainers: v1's student/teacher pair
and v2's meta-architecture (`simdinov2.train.ssl_meta_arch.SSLMetaArch`) run through `train_step`.

Owns `train_step` and what it needs from a model (`TrainableModel`): the schedule values of the iteration
are applied, the losses computed, checked for NaN/inf on every rank together (so every rank stops at
the same iteration, before the weights change), back-propagated (with fp16 loss scaling when a scaler
is given), the gradients clipped, the prototype layer frozen where the model asks for it, the optimizer
stepped and the teacher updated by EMA. It returns the loss parts averaged over ranks (and gradient
norms where the model reports them) for logging.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.distributed as dist

from simdinov2 import distributed
from simdinov2.errors import NonFiniteLossError
from simdinov2.train.optim import apply_optim_schedule


class TrainableModel(Protocol):
    """What `train_step` calls. Two optional hooks change the defaults (v2's rules):
    `apply_optim_schedule(optimizer, values)` (default: `optim.apply_optim_schedule` with the group
    multipliers) and `cancel_frozen_gradients(values)` (default: nothing; v2 freezes the prototypes
    through a last-layer lr of 0)."""

    def set_mcr_schedule(self, eps: float | None = None, coeff: float | None = None) -> None: ...

    def forward_losses(
        self, batch: Any, teacher_temp: float, ibot_loss_weight: float | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def clip_gradients(self, max_norm: float) -> dict[str, float]: ...

    def update_teacher(self, momentum: float) -> None: ...


def reduce_loss_dict(loss_dict: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of every loss part over processes (one all-reduce), as floats, in the dict's order."""
    if not loss_dict:
        return {}
    names = list(loss_dict)
    values = torch.stack([loss_dict[k].detach().float().reshape(()) for k in names])
    values = distributed.all_reduce_mean(values)
    return dict(zip(names, values.tolist(), strict=True))


def _losses_text(loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> str:
    items = {"loss": loss.detach(), **parts}
    return ", ".join(f"{k}={float(v):.6g}" for k, v in items.items())


def check_finite(loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
    """Raise `NonFiniteLossError` on every rank when the loss is NaN/inf on any rank (one all-reduce):
    a rank stopping alone would leave the others waiting forever in their next collective."""
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if distributed.is_enabled():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if finite.item() < 1:
        where = "" if math.isfinite(float(loss.detach())) else " on this process"
        # Every rank raises it: the main process reports, the others stop quietly.
        message = f"non-finite loss{where} ({_losses_text(loss, parts)})"
        raise NonFiniteLossError(message, report=distributed.get_rank() == 0 or bool(where))


def train_step(
    model: TrainableModel,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    values: dict[str, float],
    clip_grad: float,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One optimisation step with the schedule `values` of this iteration (`lr`, `wd`, `mom`,
    `teacher_temp`; optionally `last_layer_lr`, `ibot_loss_weight`, `mcr_eps`, `mcr_coeff` and the
    model's own keys); returns the reduced loss parts (plus gradient norms where reported).

    Raises `NonFiniteLossError` (a FloatingPointError) on every rank, before touching the weights, when
    the loss is not finite on some rank."""
    if hasattr(model, "apply_optim_schedule"):
        model.apply_optim_schedule(optimizer, values)
    else:
        apply_optim_schedule(optimizer, values["lr"], values["wd"], values.get("last_layer_lr", values["lr"]))
    model.set_mcr_schedule(values.get("mcr_eps"), values.get("mcr_coeff"))
    optimizer.zero_grad(set_to_none=True)
    try:
        loss, parts = model.forward_losses(batch, values["teacher_temp"], values.get("ibot_loss_weight"))
    except FloatingPointError:
        # The coding rate cannot be evaluated on non-finite features: a NaN loss, reported below on
        # every rank together instead of a traceback on one of them.
        loss, parts = torch.tensor(float("nan"), device=distributed.get_device()), {}
    check_finite(loss, parts)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip (and report) the true gradients
    else:
        loss.backward()
    reduced = reduce_loss_dict(parts)
    clip_grad = values.get("clip_grad", clip_grad)  # v2's `optim.clip_grad_end` schedules it
    if clip_grad > 0:
        reduced.update(model.clip_gradients(clip_grad))
    if hasattr(model, "cancel_frozen_gradients"):
        model.cancel_frozen_gradients(values)
    # Upstream DINOv2 only stepped when clip_grad > 0; clip_grad=0 means "no clipping", never "no training".
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    model.update_teacher(values["mom"])
    return reduced
