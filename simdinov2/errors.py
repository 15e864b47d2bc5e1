"""The user-error types of both trees (the command-line wrapper that reports them is `simdinov2.cli`).

Owns:
- `UserError`: a problem the user must fix (bad path, bad flag, bad dataset, mismatched checkpoint, ...),
  raised only where the program knows the cause; its message is one line naming the problem and the fix.
  It derives from ValueError so that library callers catching ValueError keep working, but the wrapper
  `simdinov2.cli.run_cli` catches `UserError` only: a built-in ValueError or KeyError is a bug and keeps its traceback.
- `MissingFileError`: the user-error kind of a missing file or folder (also a FileNotFoundError).
- `NonFiniteLossError`: training stopped on a NaN/inf loss (on every rank together).
- `PeerFailedError`: the quiet error of a rank whose peer failed in a set-up block.
- `TrainingInterrupted`: training stopped on a signal after its checkpoint (one line, exit status 128 + signal).
- `DiskFullError`: a save ran out of space (also an OSError); `exception_chain` finds such causes inside the
  wrappers of torch.save and torch.distributed.checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator


class UserError(ValueError):
    """A problem with the user's input that the program can name together with its fix (one line)."""

    def __init__(self, message: str, report: bool = True) -> None:
        super().__init__(message)
        # False on the ranks that stay quiet because another rank reports the same failure.
        self.report = report


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (also a FileNotFoundError, for library callers)."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN/inf: training stops on every rank together, before the weights change."""


class PeerFailedError(UserError):
    """Another rank failed during a set-up block: this rank stops quietly (the failing rank reports)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"another process failed while {what}", report=False)


class TrainingInterrupted(UserError):
    """Training stopped on a stop signal after writing its checkpoint (`simdinov2.train.interrupt`)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class DiskFullError(UserError, OSError):
    """Saving a checkpoint ran out of disk space; the temporaries are gone and the previous one is intact."""


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, what it was raised from or during, and the per-rank failures a DCP CheckpointException holds.

    torch.save's zip writer wraps a failed write in a RuntimeError, and torch.distributed.checkpoint
    gathers every rank's exception into `failures` ({rank: (exception, traceback)}): the cause of a
    failed save or load is somewhere in this chain.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack += [current.__cause__, current.__context__]
        for failure in getattr(current, "failures", {}).values():
            stack.append(failure[0] if isinstance(failure, tuple) else failure)
