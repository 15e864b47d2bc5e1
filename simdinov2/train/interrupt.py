"""Clean interrupts of both trainers: SIGINT (Ctrl-C), SIGTERM and SLURM's preemption signal (SIGUSR2).

Owns `StopSignals`: while a training loop runs (`with StopSignals() as stop:`), the first of these
signals only sets a flag and logs one line; the loop asks `stop.requested(device)` after each iteration
(every rank together: one tiny all-reduce per iteration, so that all ranks stop after the same
iteration), writes the checkpoint of the iteration reached, and calls `stop.finish(...)`, which hands the
signal to the handler that was there before (submitit's requeue on SIGUSR2) and ends the program with one
line (`TrainingInterrupted`, exit status 128 + signal). Resuming then loses nothing.

A repeated signal (a terminal's Ctrl-C reaches torchrun, which forwards it to the workers again) is not a
second request; the third Ctrl-C raises KeyboardInterrupt at once (no checkpoint). torchrun gives its
workers 30 s after forwarding a signal before it kills them: an iteration plus a checkpoint must fit.
Data-loader workers ignore SIGINT (`simdinov2.data.samplers.seed_loader_worker`): the trainer stops them itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from simdinov2 import distributed
from simdinov2.errors import TrainingInterrupted

logger = logging.getLogger("simdinov2")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
_FORCE_AFTER = 3  # the third SIGINT ends the process at once


class StopSignals:
    """Context manager turning stop signals into a flag that training loops check between iterations."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.signum: int | None = None
        self.count = 0
        # where the loop stopped, for its checkpoint (v1: iterations done in the epoch, and its metric sums)
        self.position: int | None = None
        self.meters: dict[str, list[float]] = {}
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            if distributed.is_main_process():
                logger.warning(
                    "%s received: stopping after this iteration, once its checkpoint is written (resume: run the "
                    "same command again)", signal.Signals(signum).name,
                )  # fmt: skip
        elif signum == signal.SIGINT and self.count >= _FORCE_AFTER:
            self.restore()
            raise KeyboardInterrupt

    def requested(self, device: torch.device) -> bool:
        """Whether any rank got a stop signal (all ranks call this together, after the same iteration)."""
        local = self.signum is not None
        if not distributed.is_enabled() or distributed.get_world_size() == 1:
            return local
        flag = torch.tensor([float(self.signum or 0)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.signum is None and flag.item() > 0:
            self.signum = int(flag.item())
        return flag.item() > 0

    def finish(self, what: str) -> None:
        """After the checkpoint is written: let the previous handler of the signal act (submitit requeues
        the job on SIGUSR2), then end training with one line (`what` says where the checkpoint is)."""
        signum = int(self.signum or signal.SIGTERM)
        previous = self._previous.get(signum)
        distributed.barrier()  # no rank exits (and has the launcher end the others) before the checkpoint is written
        self.restore()
        if callable(previous) and previous not in (signal.default_int_handler,):
            previous(signum, None)
        raise TrainingInterrupted(f"interrupted by {signal.Signals(signum).name}: {what}", signum)
