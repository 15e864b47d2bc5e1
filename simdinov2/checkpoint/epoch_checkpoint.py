"""v1's per-epoch checkpoint files, as upstream DINO writes and resumes them.

Owns `save_epoch` (after every epoch, on the main process: `checkpoint.pth`, every `saveckp_freq` epochs
`checkpoint{epoch:04}.pth`, one JSON line in `log.txt`) and `restart_from_checkpoint` (every piece of
state back from `checkpoint.pth`: student, teacher, optimizer, loss (DINO's center), fp16 scaler, the
time-budget clock; refusing a checkpoint of another arch / patch / depth / objective with one line).
Checkpoint keys are upstream's: student, teacher, optimizer, epoch, args, dino_loss (+ fp16_scaler, and
train_seconds / iterations with a time budget).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simdinov2.checkpoint import atomic_torch_save, safe_torch_load, strip_wrapper_prefixes
from simdinov2.errors import UserError

logger = logging.getLogger("simdinov2")

# Flags whose change makes a checkpoint another model: resuming across them is refused.
_MODEL_FLAGS = ("arch", "patch_size", "depth", "use_simdino")


def save_epoch(
    output_dir: Path, epoch: int, state: dict[str, Any], log_stats: dict[str, Any], saveckp_freq: int
) -> None:
    """Write the end of `epoch` (call on the main process only): `checkpoint.pth`, the periodic copy,
    then the `log.txt` line. Checkpoints are written atomically (a crash leaves the previous one)."""
    atomic_torch_save(state, output_dir / "checkpoint.pth")
    if saveckp_freq and epoch % saveckp_freq == 0:
        atomic_torch_save(state, output_dir / f"checkpoint{epoch:04}.pth")
    with (output_dir / "log.txt").open("a") as f:
        f.write(json.dumps(log_stats) + "\n")


def epoch_state(
    args: argparse.Namespace, epoch: int, student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module, scaler: torch.amp.GradScaler | None, clock: Any,
) -> dict[str, Any]:  # fmt: skip
    """The checkpoint dict after `epoch` (upstream's keys)."""
    state = {
        "student": student.state_dict(),
        "teacher": teacher.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch + 1,
        "args": args,
        "dino_loss": loss_fn.state_dict(),
        **clock.state_dict(),
    }
    if scaler is not None:
        state["fp16_scaler"] = scaler.state_dict()
    return state


def _load(path: Path) -> dict[str, Any]:
    try:
        return safe_torch_load(str(path))
    except (ValueError, OSError, RuntimeError, EOFError) as e:
        detail = " ".join(str(e).split())[:300]
        raise UserError(f"cannot resume from {path}: {detail}; remove it or use another --output_dir") from e


def _check_same_model(path: Path, ckpt: dict[str, Any], args: argparse.Namespace) -> None:
    previous = ckpt.get("args")
    previous = vars(previous) if isinstance(previous, argparse.Namespace) else (previous or {})
    for key in _MODEL_FLAGS:
        if key in previous and previous[key] != getattr(args, key):
            raise UserError(
                f"cannot resume from {path}: it was trained with --{key} {previous[key]} but this run uses "
                f"--{key} {getattr(args, key)}; use the same setting or another --output_dir"
            )


def restart_from_checkpoint(
    path: Path, args: argparse.Namespace, student: nn.Module, teacher: nn.Module,
    optimizer: torch.optim.Optimizer, loss_fn: nn.Module, scaler: torch.amp.GradScaler | None, clock: Any = None,
) -> int:  # fmt: skip
    """Resume every piece of state from `path`; return the epoch to start from (0 without a checkpoint)."""
    if not path.is_file():
        return 0
    ckpt = _load(path)
    _check_same_model(path, ckpt, args)
    try:
        student.load_state_dict(strip_wrapper_prefixes(ckpt["student"]))
        teacher.load_state_dict(strip_wrapper_prefixes(ckpt["teacher"]))
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise UserError(
            f"cannot resume from {path}: its weights do not fit this model ({detail}); "
            "use the settings it was trained with or another --output_dir"
        ) from e
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("dino_loss"):
        loss_fn.load_state_dict(ckpt["dino_loss"])
    if scaler is not None and ckpt.get("fp16_scaler") is not None:
        scaler.load_state_dict(ckpt["fp16_scaler"])
    if clock is not None:
        clock.load_state_dict(ckpt)
    start_epoch = int(ckpt.get("epoch", 0))
    logger.info(f"Found checkpoint at {path}: resuming from epoch {start_epoch}")
    return start_epoch
