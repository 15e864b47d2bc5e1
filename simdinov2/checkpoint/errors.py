"""The checkpoint package's user errors: each message is one line naming the file, the problem and the fix.

They derive from the project's `UserError` (reported without a traceback) and from the built-in type
older callers catch (`ValueError`, `FileNotFoundError`, `OSError`).
"""

from __future__ import annotations

from collections.abc import Iterator

from simdinov2.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used as asked: refused (pickled code), corrupt, or of another model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist, or a checkpoint folder is incomplete."""


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


__all__ = ["CheckpointError", "CheckpointNotFoundError", "DiskFullError", "exception_chain"]
