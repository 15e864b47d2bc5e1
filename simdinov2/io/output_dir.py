"""The output folder of a program: created, and proved writable before any work is done.

Below `simdinov2.logging` and `simdinov2.cli` (both use it); needs only the error types.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from simdinov2.errors import UserError

_OUTPUT_DIR_PROBLEMS = {
    errno.EEXIST: "a file is in the way",
    errno.ENOTDIR: "a file is in the way",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.EROFS: "it is on a read-only file system",
    errno.ENOENT: "it cannot be created there",
}


def make_output_dir(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """Create the output folder `path` (and its parents) and check that a file can be written in it.

    A folder that cannot be created or written is one `UserError` line naming `flag` and the reason,
    instead of the raw `OSError` of the first write (which may come after hours of work)."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = _OUTPUT_DIR_PROBLEMS.get(exc.errno or 0, exc.strerror or str(exc))
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(folder) else ""
        raise UserError(
            f"{flag} {path} cannot be used as the output folder: {reason}{where}; give a writable folder"
        ) from exc
    return folder
