"""Resuming a v2 run completes the iteration its last checkpoint was saved at.

A run killed after `ckpt/checkpoint_<it>/` was renamed into place, but before the rest of that
iteration's outputs were written, resumes at `it + 1`: without this module the teacher snapshot
`eval/training_<it>/teacher_checkpoint.pth` (when it was due) and the `training_metrics.json` row of `it`
(written after the iteration's save) would never be produced. `complete_iteration_end` writes them on
resume (the row from `trainer_state.json`, which keeps the iteration's metrics), removes the rows of the
iterations about to be trained again (no duplicates) and the temporaries of writes cut short.
Owns the teacher snapshots' place (`teacher_snapshot_path`) and period (`snapshot_due`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from simdinov2 import distributed
from simdinov2.checkpoint import Checkpointer, save_teacher_snapshot, sweep_temporaries
from simdinov2.logging import resume_json_lines
from simdinov2.logging.helpers import metrics_row_due
from simdinov2.train.clock import TrainingClock
from simdinov2.train.recipe_keys import snapshot_period

logger = logging.getLogger("simdinov2")


def teacher_snapshot_path(output_dir: str | Path, iteration: int) -> Path:
    return Path(output_dir) / "eval" / f"training_{iteration}" / "teacher_checkpoint.pth"


def snapshot_due(iteration: int, eval_period: int) -> bool:
    """Whether the teacher snapshot is written after `iteration` (every `eval_period` iterations, 0: never)."""
    return eval_period > 0 and (iteration + 1) % eval_period == 0


def _sweep(output_dir: Path, checkpointer: Checkpointer) -> None:
    stale = checkpointer.sweep_temporaries()
    for folder in (output_dir, checkpointer.root, *sorted((output_dir / "eval").glob("training_*"))):
        stale += sweep_temporaries(folder)
    for path in stale:
        logger.info("removed %s, left by a write that was cut short", path)


def complete_iteration_end(
    cfg: DictConfig, model: Any, checkpointer: Checkpointer, latest: Path | None, clock: TrainingClock
) -> None:
    """After resuming from `latest` (the model holds its weights; every rank calls this): write what the
    end of its iteration left unwritten, sweep temporaries, drop the metric rows trained again."""
    output_dir = Path(cfg.train.output_dir)
    if distributed.is_main_process():
        _sweep(output_dir, checkpointer)
    if latest is None:  # killed before its first checkpoint: the run starts over, so does its file
        if distributed.is_main_process():
            resume_json_lines(output_dir / "training_metrics.json", "iteration", 0)
        return
    state = Checkpointer.read_trainer_state(latest)
    last = int(state["iteration"])
    # The end of a time budget is the end of the run: its row and teacher snapshot were due.
    ended_by_budget = clock.exhausted(clock.spent)
    if distributed.is_main_process():
        metrics = state.get("metrics")
        due = metrics_row_due(last, int(cfg.train.print_freq), clock.total_iterations) or ended_by_budget
        replay = {"iteration": last, **metrics} if due and metrics is not None else None
        # a row that was not due (an interrupt's last iteration) is dropped: the log ends as an uninterrupted run's
        resume_json_lines(
            output_dir / "training_metrics.json", "iteration", last + 1 if due else last, replay
        )
    eval_period = snapshot_period(
        int(cfg.evaluation.eval_period_epochs),
        int(cfg.evaluation.eval_period_iterations),
        clock.niter_per_epoch,
    )
    if snapshot_due(last, eval_period) or ended_by_budget:
        save_teacher_snapshot(
            model.teacher_for_snapshot(), teacher_snapshot_path(output_dir, last), overwrite=False
        )
