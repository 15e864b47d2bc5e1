"""The one command-line wrapper of every program in both trees, and errors agreed between ranks.

Owns:
- `run_cli(prog, main, *args)`: runs `main`, turns a `simdinov2.errors.UserError` into one line on stderr
  and exit status 1 (on every rank; one rank speaks), and on any failure leaves the process group
  without a barrier, so that `torchrun` / SLURM end the other ranks instead of a hang.
- `agree_on_errors(what)`: a set-up block whose failure on any rank fails every rank, so that no rank goes
  on into the next collective and waits there forever (e.g. a tracker that fails to start on rank 0).
- `HelpFormatter` (from `simdinov2.help_format`, which imports no torch): every program's `--help`.
- `make_output_dir(path, flag)`, handed on from `simdinov2.io.output_dir` (where `logging` takes it too):
  every program's output folder, created and checked writable, or one `UserError` line naming the flag.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from simdinov2 import distributed
from simdinov2.errors import PeerFailedError, TrainingInterrupted, UserError
from simdinov2.help_format import HelpFormatter
from simdinov2.io.output_dir import make_output_dir as make_output_dir  # handed on beside run_cli

__all__ = ["HelpFormatter", "agree_on_errors", "error_line", "make_output_dir", "run_cli"]


class agree_on_errors:  # noqa: N801 - used as a context manager, like contextlib's
    """`with agree_on_errors("starting the trackers"): ...` on every rank: if the block fails on any rank,
    it fails on every rank (one small all-gather at the end of the block, nothing when single-process).

    The lowest failing rank re-raises its own error and reports it; every other rank raises a quiet
    error (`report=False`), so the run ends with one line, whichever ranks failed."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> agree_on_errors:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if not distributed.is_enabled() or distributed.get_world_size() == 1:
            return False
        if exc is not None and not isinstance(exc, Exception):
            return False  # KeyboardInterrupt, SystemExit: nothing to agree on
        failed = torch.tensor([1.0 if exc is not None else 0.0], device=distributed.get_device())
        flags = [torch.zeros_like(failed) for _ in range(distributed.get_world_size())]
        dist.all_gather(flags, failed)
        failing = [rank for rank, flag in enumerate(flags) if flag.item() > 0]
        if not failing:
            return False
        if exc is None:
            raise PeerFailedError(self.what)
        if isinstance(exc, UserError):
            exc.report = distributed.get_rank() == failing[0]
        return False  # re-raise this rank's own error (a bug keeps its traceback)


def _launch_rank() -> int:
    """This process's rank, also before the process group exists (torchrun / SLURM set it)."""
    if distributed.is_enabled():
        return distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def error_line(prog: str, error: UserError) -> str:
    """The one line a user error prints: `prog: error: message` (`error: message` without a `prog`),
    from the first line of the message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    rank = _launch_rank()
    return f"{f'{prog}: ' if prog else ''}error{f' (rank {rank})' if rank > 0 else ''}: {text}"


def _reports(error: UserError) -> bool:
    # Before the process group exists an error can only come from the flags and the files, the same on
    # every rank: the first rank says it.
    if not distributed.is_enabled() and _launch_rank() > 0:
        return False
    return error.report


# How gloo / NCCL report a collective whose peer process ended (its own error is reported by that rank).
_PEER_GONE = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|NCCL communicator was aborted"
)


def _peer_gone(error: BaseException) -> bool:
    """Whether `error` is a collective broken by another rank's exit, in a job of several processes."""
    if not distributed.is_enabled() or distributed.get_world_size() < 2:
        return False
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # the error and its causes
        if _PEER_GONE.search(str(current)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def run_cli(prog: str, main: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `main(*args, **kwargs)` as a command-line program and return its result.

    A `UserError` ends the program with one line on stderr (`SystemExit(line)`, from the reporting rank
    only) and exit status 1 on every rank. Any failure leaves the process group without the closing
    barrier: the other ranks are either failing too or blocked in a collective, and `torchrun` (or SLURM)
    ends them when this process exits non-zero. A clean run tears the group down together."""
    failed = True
    try:
        result = main(*args, **kwargs)
        failed = False
        return result
    except UserError as error:
        if isinstance(error, TrainingInterrupted):  # a stop signal: one line, exit status 128 + its number
            if distributed.is_main_process():
                print(f"{f'{prog}: ' if prog else ''}{error}", file=sys.stderr, flush=True)
            raise SystemExit(error.exit_code) from None
        raise SystemExit(error_line(prog, error) if _reports(error) else 1) from None
    except Exception as error:
        if _peer_gone(error):  # the rank that failed prints the one line; this one was waiting for it
            raise SystemExit(1) from None
        raise
    finally:
        distributed.destroy(barrier=not failed)
