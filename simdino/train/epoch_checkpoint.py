"""v1's per-epoch checkpoint files, as upstream DINO writes and resumes them.

Owns `save_epoch` (after every epoch, on the main process: `checkpoint.pth`, every `saveckp_freq` epochs
`checkpoint{epoch:04}.pth`, one JSON line in `log.txt`) and `restart_from_checkpoint` (every piece of
state back from `checkpoint.pth`: student, teacher, optimizer, loss (DINO's center), fp16 scaler, the
time-budget clock; refusing a checkpoint of another arch / patch / depth / objective with one line).
Checkpoint keys are upstream's: student, teacher, optimizer, epoch, args, dino_loss (+ fp16_scaler, and
train_seconds / iterations with a time budget), and log_stats: the epoch's `log.txt` line.

A stop signal (`simdinov2.train.interrupt`) within an epoch writes `checkpoint.pth` of the iteration reached
(`save_mid_epoch`: the epoch itself, `epoch_step` = its iterations done, the epoch's metric sums and every
rank's random state); resuming replays the loading of those iterations' batches (no training) and the
random states, so the rest of the epoch is the uninterrupted run's (`MidEpoch`, `resumed_batches`).

The end of an epoch is one recoverable unit: a run killed after `checkpoint.pth` was renamed but before
the rest was written gets, on resume, the `log.txt` line (replayed from `log_stats`) and the periodic
checkpoint of that epoch, loses the temporaries of writes cut short and the `training_metrics.json` rows
of the epoch it re-runs (no duplicates): its files end as an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from simdinov2 import distributed
from simdinov2.checkpoint import atomic_torch_save, safe_torch_load, strip_wrapper_prefixes, sweep_temporaries
from simdinov2.checkpoint.dcp import rng_state, set_rng_state
from simdinov2.errors import UserError
from simdinov2.logging import append_json_lines, resume_json_lines
from simdinov2.logging.helpers import metrics_row_due

logger = logging.getLogger("simdinov2")

# Flags whose change makes a checkpoint another model: resuming across them is refused.
_MODEL_FLAGS = ("arch", "patch_size", "depth", "use_simdino")


def save_epoch(
    output_dir: Path, epoch: int, state: dict[str, Any], log_stats: dict[str, Any], saveckp_freq: int
) -> None:
    """Write the end of `epoch` (call on the main process only): `checkpoint.pth`, the periodic copy,
    then the `log.txt` line. Checkpoints are written atomically (a crash leaves the previous one) and
    keep the log line, which `complete_epoch_end` writes if a kill came first."""
    state = {**state, "log_stats": log_stats}
    atomic_torch_save(state, output_dir / "checkpoint.pth")
    if _periodic_due(epoch, saveckp_freq):
        atomic_torch_save(state, _periodic_path(output_dir, epoch))
    append_json_lines(output_dir / "log.txt", [log_stats])


def _periodic_due(epoch: int, saveckp_freq: int) -> bool:
    return bool(saveckp_freq) and epoch % saveckp_freq == 0


def _periodic_path(output_dir: Path, epoch: int) -> Path:
    return output_dir / f"checkpoint{epoch:04}.pth"


def complete_epoch_end(
    output_dir: Path, ckpt: dict[str, Any] | None, saveckp_freq: int, niter_per_epoch: int, print_freq: int = 10,
    total_iterations: int = 0,
) -> None:  # fmt: skip
    """On resume (main process), write what the end of the checkpointed epoch left unwritten when the run
    was killed: the periodic checkpoint and the `log.txt` line; remove temporaries of cut-short writes
    and the `training_metrics.json` rows of the iterations about to be trained again (and the row a stop
    signal wrote for its last iteration when it was not due)."""
    for stale in sweep_temporaries(output_dir):
        logger.info("removed %s, left by a write that was cut short", stale)
    start_epoch = int(ckpt.get("epoch", 0)) if ckpt is not None else 0  # no checkpoint: the files start over
    step = int(ckpt.get("epoch_step", 0)) if ckpt is not None else 0
    last = start_epoch - 1
    periodic_missing = (
        last >= 0 and _periodic_due(last, saveckp_freq) and not _periodic_path(output_dir, last).is_file()
    )
    if ckpt is not None and periodic_missing and not step:
        atomic_torch_save(ckpt, _periodic_path(output_dir, last))
        logger.info("wrote %s, which the interrupted run did not", _periodic_path(output_dir, last))
    resume_json_lines(output_dir / "log.txt", "epoch", start_epoch, (ckpt or {}).get("log_stats"))
    if niter_per_epoch or ckpt is None:
        first = start_epoch * niter_per_epoch + step
        if step and not metrics_row_due(first - 1, print_freq, total_iterations):
            first -= 1
        resume_json_lines(output_dir / "training_metrics.json", "iteration", first)


@dataclass
class MidEpoch:
    """Where a stop signal ended training within an epoch: its iterations done (`step`), the epoch's metric
    sums so far (`meters`: name -> [total, count], over all processes) and each rank's random state."""

    step: int
    meters: dict[str, list[float]]
    rng: list[dict[str, Any]]


def save_mid_epoch(
    path: Path, state: dict[str, Any], step: int, meters: dict[str, list[float]], iterations: int
) -> None:
    """Every rank: `checkpoint.pth` of a run stopped after `step` iterations of the epoch `state` names
    (`epoch_state(args, epoch - 1, ...)`: its `epoch` is the epoch to finish); the main process writes it."""
    rng = [rng_state()]
    if distributed.is_enabled() and distributed.get_world_size() > 1:
        rng = [None] * distributed.get_world_size()
        dist.all_gather_object(rng, rng_state())
    if distributed.is_main_process():
        state = {**state, "epoch_step": step, "epoch_meters": meters, "rng": rng, "iterations": iterations}
        atomic_torch_save(state, path)


def resumed_batches(data_loader: Any, resume: MidEpoch | None) -> Any:
    """The epoch's batches from `resume.step` on (all of them without `resume`). The skipped batches are
    loaded again, not trained on: the loader workers' random streams then continue as in the uninterrupted
    run; then this process's random state becomes the one saved at the stop."""
    if resume is None:
        return data_loader
    return _Remaining(data_loader, resume)


class _Remaining:
    def __init__(self, data_loader: Any, resume: MidEpoch) -> None:
        self.length = len(data_loader) - resume.step
        self.iterator: Iterator[Any] = iter(data_loader)  # draws the workers' base seed as the first run did
        for _ in range(resume.step):
            next(self.iterator)
        if len(resume.rng) == distributed.get_world_size():
            set_rng_state(resume.rng[distributed.get_rank()])
        else:
            logger.warning(
                "resumed on %d processes, stopped on %d: the random streams start afresh",
                distributed.get_world_size(),
                len(resume.rng),
            )

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        return self.iterator


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


# What every checkpoint of this trainer holds (a v2 snapshot, a classifier or another program's file lacks some).
_REQUIRED_KEYS = ("student", "teacher", "optimizer", "epoch")


def _load(path: Path) -> dict[str, Any]:
    try:
        ckpt = safe_torch_load(str(path))
    except (ValueError, OSError, RuntimeError, EOFError) as e:
        detail = " ".join(str(e).split())[:300]
        raise UserError(f"cannot resume from {path}: {detail}; remove it or use another --output_dir") from e
    missing = [key for key in _REQUIRED_KEYS if key not in ckpt] if isinstance(ckpt, dict) else None
    if missing is None or missing:
        what = f"a {type(ckpt).__name__}" if missing is None else f"a dict without {', '.join(missing)}"
        raise UserError(
            f"cannot resume from {path}: it is {what}, not a main_dino.py checkpoint (student, teacher, "
            "optimizer, epoch); remove it or use another --output_dir"
        )
    return ckpt


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
    niter_per_epoch: int = 0,
) -> tuple[int, MidEpoch | None]:  # fmt: skip
    """Resume every piece of state from `path`; return the epoch to start from (0 without a checkpoint) and,
    after a stop signal within it, where in it (`MidEpoch`). The main process completes the checkpointed
    epoch's files (`complete_epoch_end`)."""
    if path.exists() and not path.is_file():
        raise UserError(
            f"cannot resume from {path}: it is a folder, not a checkpoint file; remove it or use "
            "another --output_dir"
        )
    if not path.is_file():
        if distributed.is_main_process():
            complete_epoch_end(path.parent, None, args.saveckp_freq, 0)
        return 0, None
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
    mid_epoch = (
        MidEpoch(int(ckpt["epoch_step"]), ckpt["epoch_meters"], ckpt["rng"])
        if ckpt.get("epoch_step")
        else None
    )
    within = f", iteration {mid_epoch.step} of it" if mid_epoch else ""
    logger.info(f"Found checkpoint at {path}: resuming from epoch {start_epoch}{within}")
    if distributed.is_main_process():
        complete_epoch_end(
            path.parent, ckpt, args.saveckp_freq, clock.niter_per_epoch if clock is not None else 0,
            total_iterations=clock.total_iterations if clock is not None else 0,
        )  # fmt: skip
    return start_epoch, mid_epoch
