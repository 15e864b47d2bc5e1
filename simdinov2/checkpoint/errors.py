"""The checkpoint package's user errors: each message is one line naming the file, the problem and the fix.

They derive from the project's `UserError` (reported without a traceback) and from the built-in type
older callers catch (`ValueError`, `FileNotFoundError`).
"""

from __future__ import annotations

from simdinov2.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used as asked: refused (pickled code), corrupt, or of another model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist, or a checkpoint folder is incomplete."""


__all__ = ["CheckpointError", "CheckpointNotFoundError"]
