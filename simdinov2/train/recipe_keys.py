"""Trainer-level keys of the upstream SimDINOv2 config, as small pure functions the training loop calls.

Each function owns one key (docs/DESIGN.md, "Upstream v2 config keys"):
- `optim.opt` + `optim.kwargs`: `build_optimizer_by_name` (timm's optimizer factory: adamw, sgd, lars, lamb...);
- `train.OFFICIAL_EPOCH_LENGTH`: `epoch_length`;
- `optim.clip_grad_end`: `clip_grad_schedule`;
- `evaluation.eval_period_iterations`: `snapshot_period`;
- `student.freeze_backbone_epochs`: `backbone_frozen`;
- `ignore_nan`: `NonFiniteGuard` (skip the step, count it, stop after a limit);
- `compile`: `compile_enabled` (honoured on CUDA; one log line elsewhere).
`optim.peak_epochs` is `peak_iters` of `simdinov2.utils.schedules.cosine_schedule`; `train.actions` lives with
the other config code in `simdinov2.configs.actions`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from timm.optim import create_optimizer_v2, list_optimizers

from simdinov2.errors import NonFiniteLossError, UserError
from simdinov2.utils.schedules import CosineScheduler

logger = logging.getLogger("simdinov2")

__all__ = [
    "NonFiniteGuard",
    "backbone_frozen",
    "build_optimizer_by_name",
    "clip_grad_schedule",
    "compile_enabled",
    "epoch_length",
    "optimizer_kwargs",
    "snapshot_period",
]


def optimizer_kwargs(kwargs: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    """`optim.kwargs` as plain Python: lists become tuples (`betas: [0.9, 0.999]` -> (0.9, 0.999)) and a
    null value means "not given" (`optim.kwargs.betas=null` for an optimizer without betas, e.g. sgd)."""
    if kwargs is None:
        return {}
    plain = OmegaConf.to_container(kwargs, resolve=True) if isinstance(kwargs, DictConfig) else dict(kwargs)
    return {
        k: tuple(v) if isinstance(v, (list, ListConfig)) else v for k, v in plain.items() if v is not None
    }


def build_optimizer_by_name(
    opt: str, param_groups: Iterable[dict], kwargs: Mapping[str, Any] | DictConfig | None = None
) -> torch.optim.Optimizer:
    """The optimizer `opt` (any name of timm's `create_optimizer_v2`) over `param_groups`.

    The learning rate and weight decay start at 0: the per-iteration schedules set them in every group.
    An unknown name or a keyword the optimizer does not take is one UserError line."""
    name = str(opt).lower()
    known = list_optimizers()
    if name not in known:
        close = [n for n in ("adamw", "sgd", "lars", "lamb", "adam", "momentum") if n in known]
        raise UserError(f"optim.opt={opt!r} is not an optimizer timm knows; e.g. {', '.join(close)}")
    try:
        return create_optimizer_v2(
            list(param_groups), opt=name, lr=0.0, weight_decay=0.0, **optimizer_kwargs(kwargs)
        )
    except TypeError as exc:
        raise UserError(
            f"optim.kwargs do not fit optim.opt={opt!r} ({exc}); set the ones it does not take to null, "
            "e.g. optim.kwargs.betas=null"
        ) from None


def epoch_length(n_images: int, global_batch: int, official_epoch_length: int = -1) -> int:
    """Iterations per epoch: `official_epoch_length` when > 0 (DINOv2's fixed 1250), else one pass over the
    dataset, `n_images // global_batch`."""
    if int(official_epoch_length) > 0:
        return int(official_epoch_length)
    return int(n_images) // int(global_batch)


def clip_grad_schedule(clip_grad: float, clip_grad_end: float, total_iters: int) -> CosineScheduler:
    """Gradient-clipping threshold per iteration: constant `clip_grad`, or a cosine from `clip_grad` to
    `clip_grad_end` over the run when `clip_grad_end > 0` (upstream's rule; -1 = constant)."""
    end = float(clip_grad_end) if float(clip_grad_end) > 0 else float(clip_grad)
    return CosineScheduler(float(clip_grad), end, int(total_iters))


def snapshot_period(eval_period_epochs: int, eval_period_iterations: int, epoch_len: int) -> int:
    """Iterations between teacher snapshots: `eval_period_iterations` when > 0, else epochs x epoch length
    (0 = never)."""
    if int(eval_period_iterations) > 0:
        return int(eval_period_iterations)
    return max(int(eval_period_epochs), 0) * int(epoch_len)


def backbone_frozen(iteration: int, epoch_len: int, freeze_backbone_epochs: int) -> bool:
    """Whether the student backbone is frozen at `iteration` (its first `freeze_backbone_epochs` epochs)."""
    return int(iteration) < int(freeze_backbone_epochs) * int(epoch_len)


def compile_enabled(requested: bool, device: torch.device) -> bool:
    """`compile=true` is honoured on CUDA; elsewhere it is skipped with one log line (measured slower on
    the CPU, benchmarks/RESULTS.md)."""
    if requested and device.type != "cuda":
        logger.info("compile=true is honoured on CUDA only: running eagerly on %s", device)
    return bool(requested) and device.type == "cuda"


class NonFiniteGuard:
    """`ignore_nan`: decide what a non-finite loss does.

    `ignore_nan=False`: `skip` says no (training stops, weights untouched: `train_step` raises before the
    backward). `True`: the step is skipped (`skip` returns True), counted in `skipped`, and training stops
    once `max_consecutive` steps in a row were skipped (a run that only produces NaNs is not training)."""

    def __init__(self, ignore_nan: bool, max_consecutive: int = 100) -> None:
        self.ignore_nan = bool(ignore_nan)
        self.max_consecutive = max(int(max_consecutive), 1)
        self.skipped = 0
        self.consecutive = 0

    def passed(self) -> None:
        """A finite step: the run of skipped steps is over."""
        self.consecutive = 0

    def skip(self, error: NonFiniteLossError, iteration: int) -> bool:
        """True when the step that raised `error` is skipped; False when training must stop with it."""
        if not self.ignore_nan:
            return False
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{error} in {self.consecutive} steps in a row (ignore_nan=true, limit "
                f"train.max_nan_steps={self.max_consecutive})"
            ) from None
        logger.warning("%s at iteration %d: step skipped (%d so far)", error, iteration, self.skipped)
        return True
