"""simdinov2.io.atomic and the v2 saver: atomic writes, file modes that follow the umask, and a
full disk reported as one line with the previous checkpoint intact and no temporaries left."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint import filesystem as dcp_filesystem

from simdinov2.checkpoint import Checkpointer, safe_torch_load
from simdinov2.errors import DiskFullError, UserError
from simdinov2.io.atomic import atomic_torch_save, atomic_write_text

REPO = Path(__file__).resolve().parents[2]


class _FillingFile:
    """A file on a disk with `room` bytes left: the write that goes past it fails with ENOSPC."""

    def __init__(self, file, room: int):
        self._file, self._room = file, room

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= size
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _linear_checkpointer(root: Path, width: int = 4) -> Checkpointer:
    torch.manual_seed(0)
    model = nn.Linear(width, width)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()
    return Checkpointer(root, model, optimizer, max_to_keep=5)


# ---------------------------------------------------------------------------------------------- atomicity
def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pth"
    atomic_torch_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):  # a real bug keeps its own error
        atomic_torch_save({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temp file left behind


# ---------------------------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_honour_the_umask_like_torch_save(tmp_path, umask, expected):
    with _umask(umask):
        torch.save({"a": torch.ones(1)}, tmp_path / "plain.pth")
        atomic_torch_save({"a": torch.ones(1)}, tmp_path / "atomic.pth")
        atomic_write_text(tmp_path / "state.json", "{}")
        folder = _linear_checkpointer(tmp_path / "ckpt").save(1)
    assert _mode(tmp_path / "plain.pth") == expected  # the reference: what torch.save does
    assert _mode(tmp_path / "atomic.pth") == expected and _mode(tmp_path / "state.json") == expected
    for file in folder.iterdir():
        assert _mode(file) == expected, file.name


# ---------------------------------------------------------------------------------------------- disk full
def test_disk_full_during_atomic_save_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    atomic_torch_save({"w": torch.ones(8)}, path)
    before = _files(tmp_path)
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FillingFile(real_fdopen(fd, mode), room=4096))
    big = {"w": torch.zeros(1 << 16)}  # 256 KiB of tensor data
    with pytest.raises(DiskFullError) as err:
        atomic_torch_save(big, path)
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, UserError)
    assert str(path) in message and "no space left" in message and "needs about 0.3 MiB" in message
    monkeypatch.undo()
    assert _files(tmp_path) == before  # temporary removed
    assert torch.equal(safe_torch_load(path)["w"], torch.ones(8))  # previous checkpoint intact


def test_disk_full_during_a_dcp_save_removes_the_partial_checkpoint(tmp_path, monkeypatch):
    checkpointer = _linear_checkpointer(tmp_path / "ckpt", width=64)
    first = checkpointer.save(1, {"epoch_len": 1})
    before = _files(tmp_path)
    real_create_stream = dcp_filesystem.FileSystem.create_stream

    @contextlib.contextmanager
    def full_disk(self, path, mode):
        with real_create_stream(self, path, mode) as stream:
            yield _FillingFile(stream, room=1024) if "w" in mode else stream

    monkeypatch.setattr(dcp_filesystem.FileSystem, "create_stream", full_disk)
    with pytest.raises(DiskFullError) as err:
        checkpointer.save(2, {"epoch_len": 1})
    message = str(err.value)
    assert "\n" not in message and "checkpoint_00000002" in message and "needs about" in message
    monkeypatch.undo()
    assert _files(tmp_path) == before  # no .tmp_checkpoint_* left, nothing else touched
    assert [i for i, _ in checkpointer.checkpoints()] == [1]
    assert _linear_checkpointer(tmp_path / "ckpt", width=64).load(first)["iteration"] == 1


_TMPFS_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from torch import nn
    from simdinov2.checkpoint import Checkpointer, safe_torch_load
    from simdinov2.errors import DiskFullError
    from simdinov2.io.atomic import atomic_torch_save

    root = sys.argv[1]
    result = {}
    atomic_torch_save({"w": torch.ones(4)}, root + "/small.pth")
    try:
        atomic_torch_save({"w": torch.zeros(1 << 20)}, root + "/small.pth")  # 4 MiB on a 1 MiB disk
    except DiskFullError as err:
        result["v1"] = str(err)
    result["v1_intact"] = bool(torch.equal(safe_torch_load(root + "/small.pth")["w"], torch.ones(4)))
    model = nn.Linear(256, 256)  # 257 KiB of weights, 3x that with AdamW's moments
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 256)).sum().backward()
    optimizer.step()
    checkpointer = Checkpointer(root + "/ckpt", model, optimizer, max_to_keep=5)
    try:
        checkpointer.save(1)
        checkpointer.save(2)
    except DiskFullError as err:
        result["v2"] = str(err)
    result["v2_kept"] = [i for i, _ in checkpointer.checkpoints()]
    print(json.dumps(result))
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux) for a private tmpfs")
@pytest.mark.slow
def test_a_real_full_disk_on_a_small_tmpfs(tmp_path):
    """The same on a real 1 MiB file system (a tmpfs mounted in a private user + mount namespace)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    command = 'mount -t tmpfs -o size=1m tmpfs "$1" || exit 77; exec "$2" -c "$3" "$1"'
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command, "sh", str(disk), sys.executable, _TMPFS_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if run.returncode == 77 or "unshare:" in run.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert "no space left on device while saving" in result["v1"] and "small.pth" in result["v1"]
    assert result["v1_intact"]
    assert "checkpoint_00000002" in result.get("v2", "") and result["v2_kept"] == [1]
    assert not any(name.startswith(".") for name in os.listdir(disk))  # nothing on the host side either
