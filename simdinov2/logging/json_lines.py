"""The one writer of the JSON-lines records of every program of both trees: `log.txt` (v1 training and
linear probe), `training_metrics.json` (both trainers), `results_eval_*.json` (v2 evaluations).

Owns how a record is added (`append_json_lines`: whole lines in one write, flushed and synced; a full
disk is one `DiskFullError` line, and the file is cut back to its previous end so no half line stays)
and how a resumed program makes the file that of an uninterrupted run (`resume_json_lines`: the rows of
the steps it is about to run again, and a line cut short by a kill, are dropped; the row of the last
checkpointed step is replayed if the kill came before it was written; rewritten atomically).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from simdinov2.io.atomic import atomic_write_text, disk_full_error, is_disk_full, sweep_temporaries


def append_json_lines(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per record to `path` (created if missing) in one write. Call on the main
    process. A full disk raises `DiskFullError` (one line) with the file as it was before."""
    path = Path(path)
    text = "".join(json.dumps(record) + "\n" for record in records)
    if not text:
        return
    with open(path, "a") as f:
        end = f.tell()
        try:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            _cut_back(f, end)
            raise disk_full_error(path, len(text.encode())) from None


def _cut_back(f: Any, end: int) -> None:
    """Drop what a failed write left after `end` (a half record); the file keeps its whole lines."""
    with contextlib.suppress(OSError):  # a resume drops a cut line anyway
        f.truncate(end)


def resume_json_lines(
    path: str | os.PathLike, key: str, first: int, replay: dict[str, Any] | None = None
) -> None:
    """Make the JSON-lines log `path` that of a run resuming at `key` == `first`, so that it ends as an
    uninterrupted run's would: rows from `first` on (written after the checkpoint resumed from; the
    resumed run writes them again) and a line cut short by a kill are dropped, and `replay` (the row of
    the last checkpointed step, which the checkpoint keeps because the kill may have come before it was
    written) is appended if its row is missing. `first` = 0: a run with no checkpoint starts its file
    over. Rewritten atomically, and only when something changes. Call on the main process."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    kept, present = [], set()
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # cut short by the kill
        position = row.get(key) if isinstance(row, dict) else None
        if isinstance(position, (int, float)) and position >= first:
            continue
        kept.append(line)
        present.add(position)
    if replay is not None and replay.get(key) not in present:
        kept.append(json.dumps(replay))
    new_text = "".join(line + "\n" for line in kept)
    if new_text != text:
        atomic_write_text(path, new_text)


def resume_records(folder: str | os.PathLike, name: str, key: str, first: int) -> None:
    """On resume (main process) of a program that checkpoints at `key` == `first` - 1: remove the
    temporaries of writes a kill cut short in `folder`, and the rows of `folder/name` from `first` on."""
    sweep_temporaries(folder)
    resume_json_lines(Path(folder) / name, key, first)


__all__ = ["append_json_lines", "resume_json_lines", "resume_records"]
