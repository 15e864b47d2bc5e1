"""Atomic checkpoint writes for both trees: a reader sees the old file or the new one, never a part.

Owns `atomic_torch_save` / `atomic_write_text` (write a temporary next to the target, fsync, rename over
it), their file mode (the umask is honoured, as with `torch.save` or `open`), and the disk-full report
shared with the DCP saver (`disk_full_error`): one line naming the path and the space needed, with the
temporary removed and the previous file left as it was.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from simdinov2.errors import DiskFullError, exception_chain

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# The name of `_new_temporary`'s files: `.<target name>.<8 hex digits>.tmp`.
_TEMPORARY_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
# Room for the zip directory and pickled structure around the tensor bytes of a torch.save file.
_SAVE_OVERHEAD_BYTES = 1 << 16


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` comes from "no space left on device" / "disk quota exceeded" (see `exception_chain`)."""
    for current in exception_chain(exc):
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(current) or "Disk quota exceeded" in str(current):
            return True
    return False


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested structure of dicts / lists / tuples (the bulk of a checkpoint)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(value) for value in obj)
    return 0


def _mib(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


def disk_full_error(path: str | os.PathLike, needed_bytes: int) -> DiskFullError:
    """The one-line report of a save that ran out of space at `path` (needing about `needed_bytes`)."""
    path = Path(path)
    folder = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    return DiskFullError(
        f"no space left on device while saving {path}: it needs about {_mib(needed_bytes)} free, "
        f"{_mib(free)} is free there; free some space (or point the output folder elsewhere) and run again "
        "(the previous checkpoint is intact)"
    )


@contextmanager
def _new_temporary(path: Path, mode: str) -> Iterator[tuple[IO[Any], Path]]:
    """An open temporary file next to `path`, created with mode 0o666 minus the umask, removed on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # matches _TEMPORARY_NAME
        try:
            # like open(): permissions 0o666 & ~umask (tempfile.mkstemp would force 0o600)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode) as f:
            yield f, tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _commit(f: IO[Any], tmp: Path, path: Path) -> None:
    f.flush()
    os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)`, atomically: a crash or a full disk mid-write leaves the previous file intact.

    A full disk raises `DiskFullError` (one line with the space needed) after removing the temporary.
    """
    path = Path(path)
    try:
        with _new_temporary(path, "wb") as (f, tmp):
            torch.save(obj, f)
            _commit(f, tmp, path)
    except (OSError, RuntimeError) as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, tensor_bytes(obj) + _SAVE_OVERHEAD_BYTES) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temporary file + rename); a full disk raises `DiskFullError`."""
    atomic_write_bytes(path, text.encode())


def atomic_write_drawing(path: str | os.PathLike, draw: Callable[[IO[bytes]], Any]) -> Path:
    """`draw(file)` (a PIL save, `plt.imsave`, ...) into memory, then written atomically: a full disk is one
    line, never a 0-byte or cut picture. Returns the path."""
    buffer = io.BytesIO()
    draw(buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file atomically (temporary file + rename): never a 0-byte or cut file, even on a full disk,
    which raises `DiskFullError` (one line) with the temporary removed."""
    path = Path(path)
    try:
        with _new_temporary(path, "wb") as (f, tmp):
            f.write(data)
            _commit(f, tmp, path)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, len(data)) from None
        raise


def sweep_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that writes killed mid-way (`kill -9`, a node lost) left in `folder`
    (not its sub-folders); returns them. Call it when no write is under way, e.g. on resume."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _TEMPORARY_NAME.match(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


__all__ = [
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "disk_full_error",
    "is_disk_full",
    "sweep_temporaries",
    "tensor_bytes",
]
