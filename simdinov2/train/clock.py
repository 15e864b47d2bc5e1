"""The schedule clock of both trainers: training runs by iterations, or by a wall-clock budget.

Owns `TrainingClock`: the run's wall time and iteration count (resumed parts included), where the
per-iteration schedules (lr, weight decay, teacher momentum, ...) stand, and when a time budget stops
training. v1 sets it from `--time_budget`, v2 from `train.time_budget` (0: no budget, upstream behaviour).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from simdinov2 import distributed


class TrainingClock:
    """Wall time and iterations of a run (resumed parts included) and, with a time budget, where the
    schedules stand.

    Without a budget the schedules are indexed by the global iteration, as upstream. With a budget of `B`
    seconds the index is `floor(elapsed / B * total_iterations)`: the same cosine curves, traversed in
    wall time, so warmup and annealing fit the budget on a fast or a slow (or shared, or suddenly busier)
    machine. `elapsed` is the maximum over processes (one all-reduce per iteration), so every rank sets the
    same learning rate and stops at the same iteration.
    """

    now = staticmethod(time.monotonic)  # the clock (tests replace it)

    def __init__(self, budget: float, total_iterations: int, niter_per_epoch: int) -> None:
        self.budget = float(budget)
        self.total_iterations = int(total_iterations)
        self.niter_per_epoch = int(niter_per_epoch)
        self.spent = 0.0  # seconds of training before this process started (from the checkpoint)
        self.iterations = 0  # optimisation steps of the whole run
        self.stopped = False  # set when the budget ended training early
        self._spent_before = 0.0
        self._iterations_before = 0
        self._started_at: float | None = None

    def start(self) -> None:
        self._spent_before = self.spent
        self._iterations_before = self.iterations
        self._started_at = self.now()

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent outside training (the k-NN monitor) out of the budget."""
        if self._started_at is not None:
            self._started_at += seconds

    def elapsed(self) -> float:
        """Training seconds so far on this process (`spent` at resume + time since `start`)."""
        if self._started_at is None:
            return self.spent
        self.spent = self._spent_before + self.now() - self._started_at
        return self.spent

    def synchronized_elapsed(self, device: torch.device) -> float:
        elapsed = self.elapsed()
        if self.budget and distributed.is_enabled():
            t = torch.tensor([elapsed], dtype=torch.float64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            elapsed = float(t.item())
        return elapsed

    def exhausted(self, elapsed: float) -> bool:
        return bool(self.budget) and elapsed >= self.budget

    def schedule_index(self, iteration: int, elapsed: float) -> int:
        """Index into the per-iteration schedules for the step about to run."""
        if not self.budget:
            return iteration
        return min(int(elapsed / self.budget * self.total_iterations), self.total_iterations - 1)

    def schedule_epoch(self, epoch: int, index: int) -> int:
        """Epoch of the per-epoch schedules (DINO's teacher temperature, frozen last layer)."""
        return index // self.niter_per_epoch if self.budget else epoch

    def seconds_left(self, iteration: int, elapsed: float) -> float:
        """ETA of the whole run: the budget left, or the mean time per iteration so far times the
        iterations left (`iteration` = global iterations done, resumed parts included)."""
        if self.budget:
            return max(self.budget - elapsed, 0.0)
        done_here = self.iterations - self._iterations_before
        if done_here <= 0 or self._started_at is None:
            return float("nan")
        per_iteration = (self.now() - self._started_at) / done_here
        return per_iteration * max(self.total_iterations - iteration, 0)

    def first_iteration_over_budget(self) -> str | None:
        """After this process's first iteration: a line when it alone (loader start-up and first calls
        included) took the budget, which then ends training after it; None otherwise."""
        if not self.budget or self.iterations != self._iterations_before + 1:
            return None
        took = self.spent - self._spent_before
        if self.spent < self.budget:
            return None
        return (
            f"time budget: the first iteration took {took:.0f} s (start-up included), the whole {self.budget:.0f} s "
            "budget: training stops after it; raise the time budget"
        )

    def eta(self, iteration: int) -> float:
        """ETA of the run after global `iteration` (progress lines): the budget's rest with a budget."""
        return self.seconds_left(iteration + 1, self.spent)  # no clock reading: the last iteration's

    def state_dict(self) -> dict[str, float]:
        """Checkpoint entries: only with a budget (without one, no clock entries are added to upstream's keys)."""
        return {"train_seconds": self.spent, "iterations": self.iterations} if self.budget else {}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        self.spent = float(checkpoint.get("train_seconds", 0.0))
        # Without a budget every finished epoch was a full one.
        self.iterations = int(
            checkpoint.get("iterations", int(checkpoint.get("epoch", 0)) * self.niter_per_epoch)
        )
