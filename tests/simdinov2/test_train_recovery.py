"""A v2 run killed between its checkpoint's rename and the rest of that iteration's outputs resumes to
the files of an uninterrupted run: the teacher snapshot and metrics row of the checkpointed iteration
are written on resume, temporaries of cut-short writes are removed, no metrics row is duplicated."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from golden_data import write_golden_imagefolder
from train_utils import SIMDINO_CONFIG, fp32_overrides

from simdinov2.train import train as v2_train

# 32 images / batch 8 = 4 iterations per epoch, 2 epochs: checkpoints and snapshots after iterations 3
# and 7; metrics rows of iterations 0, 3, 6 and the last one, 7.
OVERRIDES = [
    "student.arch=vit_tiny", "student.patch_size=4", "crops.global_crops_size=28", "crops.local_crops_size=12",
    "crops.local_crops_number=2", "student.num_register_tokens=0", "dino.head_hidden_dim=64",
    "dino.head_bottleneck_dim=32", "ibot.head_hidden_dim=64", "ibot.head_bottleneck_dim=32",
    "train.num_workers=0", "train.batch_size_per_gpu=8", "train.device=cpu", "compile=false",
    "optim.epochs=2", "optim.warmup_epochs=1", "train.print_freq=3", "evaluation.eval_period_epochs=1",
]  # fmt: skip


class _Killed(BaseException):
    """`kill -9` at a chosen point: nothing after it runs (not an Exception: no handler catches it)."""


def _train(data: Path, out: Path) -> None:
    v2_train.run_cli(["--config-file", SIMDINO_CONFIG, "--output-dir", str(out),
                      *OVERRIDES, *fp32_overrides(), f"train.dataset_path={data}"])  # fmt: skip


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_metrics.json").read_text().splitlines()]


def _snapshot(out: Path, iteration: int) -> dict[str, torch.Tensor]:
    path = out / "eval" / f"training_{iteration}" / "teacher_checkpoint.pth"
    return torch.load(path, weights_only=True)["teacher"]


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, Path]:
    """(images, output folder) of an uninterrupted run, shared read-only; on one thread, as the tests' runs
    (module fixtures come before `one_thread`), so that their losses can be compared bit for bit."""
    root = tmp_path_factory.mktemp("recovery")
    data = write_golden_imagefolder(root / "train")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(data, root / "full")
    finally:
        torch.set_num_threads(previous)
    return data, root / "full"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_during_teacher_snapshot_loses_nothing_on_resume(full_run, tmp_path, monkeypatch):
    data, full = full_run
    killed = tmp_path / "killed"

    real_snapshot = v2_train.save_teacher_snapshot

    def die_while_writing(teacher, path, **kwargs):
        path = Path(path)
        if path.parent.name == "training_3":  # killed mid-write: a temporary, no snapshot
            path.parent.mkdir(parents=True)
            (path.parent / f".{path.name}.0123abcd.tmp").write_bytes(b"partial")
            raise _Killed
        return real_snapshot(teacher, path, **kwargs)

    monkeypatch.setattr(v2_train, "save_teacher_snapshot", die_while_writing)
    with pytest.raises(_Killed):
        _train(data, killed)
    monkeypatch.undo()
    assert (killed / "ckpt" / "checkpoint_00000003").is_dir()
    # Raising unwinds the progress generator, which writes the row of the last finished iteration (3,
    # whose metrics were recorded); a kill -9 runs no handler: it leaves the rows written before, and not
    # that of iteration 3 (written after the iteration's save and snapshot).
    rows = (killed / "training_metrics.json").read_text().splitlines(keepends=True)
    assert [json.loads(row)["iteration"] for row in rows] == [0, 3]
    (killed / "training_metrics.json").write_text(rows[0])
    # a DCP save cut short, and a row and half a row that iterations after the checkpoint had written
    (killed / "ckpt" / ".tmp_checkpoint_00000007").mkdir()
    with (killed / "training_metrics.json").open("a") as f:
        f.write(json.dumps({"iteration": 4, "total_loss": 0.0}) + '\n{"iteration": 5, "to')

    _train(data, killed)
    want, got = _rows(full), _rows(killed)
    assert [row["iteration"] for row in got] == [row["iteration"] for row in want] == [0, 3, 6, 7]
    for a, b in zip(want, got, strict=True):
        for key in b:
            if not key.endswith("_time"):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["iteration"], key)
    for iteration in (3, 7):
        teacher_full, teacher = _snapshot(full, iteration), _snapshot(killed, iteration)
        assert teacher.keys() == teacher_full.keys()
        for key, value in teacher_full.items():
            torch.testing.assert_close(teacher[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert not [
        p for p in killed.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp_checkpoint")
    ]

    # resuming a finished run writes nothing twice
    _train(data, killed)
    assert [row["iteration"] for row in _rows(killed)] == [0, 3, 6, 7]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_stop_signal_mid_run_checkpoints_and_resumes_exactly(full_run, tmp_path, monkeypatch, capsys, signum):
    """SIGTERM / SLURM's SIGUSR2 during iteration 5 (between the checkpoints of 3 and 7): one line, the
    checkpoint of iteration 5, and the resumed run ends bit-identical to an uninterrupted one."""
    data, full = full_run
    stopped = tmp_path / "stopped"

    real_step, calls = v2_train.train_step, []

    def step_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # iteration 5
            os.kill(os.getpid(), signum)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(v2_train, "train_step", step_then_signal)
    with pytest.raises(SystemExit) as exit_info:
        _train(data, stopped)
    monkeypatch.undo()
    assert exit_info.value.code == 128 + signum and len(calls) == 6
    lines = [line for line in capsys.readouterr().err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "checkpoint of iteration 5" in lines[0], lines
    assert (stopped / "ckpt" / "checkpoint_00000005").is_dir()
    assert signal.getsignal(signum) == signal.SIG_DFL  # handlers restored

    _train(data, stopped)
    want, got = _rows(full), _rows(stopped)
    assert [row["iteration"] for row in got] == [row["iteration"] for row in want] == [0, 3, 6, 7]
    for a, b in zip(want, got, strict=True):
        assert {k: v for k, v in a.items() if not k.endswith("_time")} == {
            k: v for k, v in b.items() if not k.endswith("_time")
        }
    teacher_full, teacher = _snapshot(full, 7), _snapshot(stopped, 7)
    for key, value in teacher_full.items():
        assert torch.equal(teacher[key], value), key


@pytest.mark.slow
def test_kill_at_the_first_checkpoint_leaves_no_duplicate_rows(full_run, tmp_path):
    """Killed while saving its first checkpoint: rows of iterations 0..3 written, no checkpoint. Before:
    the rerun appended its rows after them ([0, 3, 0, 3, 6, 7])."""
    data, full = full_run
    killed = tmp_path / "killed"
    killed.mkdir()
    rows = (full / "training_metrics.json").read_text().splitlines(keepends=True)
    (killed / "training_metrics.json").write_text(rows[0] + rows[1] + '{"iteration": 4, "to')
    (killed / "ckpt" / ".tmp_checkpoint_00000003").mkdir(parents=True)  # the save cut short
    _train(data, killed)
    assert (
        [row["iteration"] for row in _rows(killed)]
        == [row["iteration"] for row in _rows(full)]
        == [0, 3, 6, 7]
    )
    assert not (killed / "ckpt" / ".tmp_checkpoint_00000003").exists()


@pytest.mark.slow
def test_checkpoint_without_trainer_state_is_one_line_not_a_silent_restart(full_run, tmp_path):
    data, full = full_run
    out = tmp_path / "damaged"
    shutil.copytree(full, out)
    (out / "ckpt" / "checkpoint_00000007" / "trainer_state.json").unlink()
    before = sorted(p.name for p in (out / "ckpt").iterdir())
    with pytest.raises(SystemExit) as exc:
        _train(data, out)
    message = str(exc.value.code)
    assert "\n" not in message and "checkpoint_00000007 has no trainer_state.json" in message, message
    assert "remove the folder to resume from checkpoint_00000003" in message and "--no-resume" in message
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == before  # nothing overwritten
