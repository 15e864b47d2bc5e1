"""The training core shared by both trees: user errors and the one CLI wrapper (one line, every rank
stops), errors agreed between ranks, wandb's offline default, the schedule clock, the one `train_step`
and the raw per-iteration metrics; and the 2-process runs that must end promptly when a rank fails."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from simdinov2 import cli, distributed
from simdinov2.errors import MissingFileError, NonFiniteLossError, PeerFailedError, UserError
from simdinov2.logging import MetricLogger
from simdinov2.trackers import wandb_has_credentials, wandb_mode
from simdinov2.train.clock import TrainingClock

REPO = Path(__file__).resolve().parents[2]
SIMDINO_DIR = REPO / "simdino"


# ------------------------------------------------------------------------------------------ user errors
def test_user_errors_are_one_line_and_bugs_keep_their_traceback():
    def fails(error: Exception):
        raise error

    with pytest.raises(SystemExit) as exc:
        cli.run_cli("prog.py", fails, UserError("bad --flag 3: use 4\nsecond line"))
    assert exc.value.code == "prog.py: error: bad --flag 3: use 4"
    with pytest.raises(SystemExit) as exc:
        cli.run_cli("", fails, MissingFileError("no such file x"))
    assert exc.value.code == "error: no such file x"
    # A built-in ValueError / KeyError is a bug: it propagates with its traceback.
    with pytest.raises(ValueError, match="a bug"):
        cli.run_cli("prog.py", fails, ValueError("a bug"))
    with pytest.raises(KeyError):
        cli.run_cli("prog.py", fails, KeyError("k"))
    # A quiet error (another rank reports it) exits 1 without a message.
    with pytest.raises(SystemExit) as exc:
        cli.run_cli("prog.py", fails, PeerFailedError("starting"))
    assert exc.value.code == 1
    assert cli.run_cli("prog.py", lambda x: x + 1, 41) == 42


def test_user_error_kinds_stay_what_library_callers_catch():
    assert isinstance(UserError("x"), ValueError)
    assert isinstance(MissingFileError("x"), FileNotFoundError) and isinstance(
        MissingFileError("x"), UserError
    )
    assert isinstance(NonFiniteLossError("x"), FloatingPointError) and isinstance(
        NonFiniteLossError("x"), UserError
    )


def test_errors_before_the_process_group_are_reported_by_the_first_rank_only(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exc:
        cli.run_cli("prog.py", lambda: (_ for _ in ()).throw(UserError("bad flag")))
    assert exc.value.code == 1  # rank 0 says it; the others exit quietly with the same status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agree_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    distributed.init_distributed("cpu")
    outcome = {}
    for failing in ([0], [1], [0, 1], []):
        try:
            with cli.agree_on_errors("testing"):
                if rank in failing:
                    raise UserError(f"bad thing on rank {rank}")
            outcome[str(failing)] = "ok"
        except UserError as e:
            outcome[str(failing)] = [type(e).__name__, e.report]
    distributed.destroy()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(outcome))


@pytest.mark.distributed
def test_a_failure_on_one_rank_fails_every_rank_with_one_reporter(tmp_path):
    mp.spawn(_agree_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["[0]"] == ["UserError", True] and r1["[0]"] == ["PeerFailedError", False]
    assert r0["[1]"] == ["PeerFailedError", False] and r1["[1]"] == ["UserError", True]
    assert r0["[0, 1]"] == ["UserError", True] and r1["[0, 1]"] == ["UserError", False]  # one line in all
    assert r0["[]"] == r1["[]"] == "ok"


# ------------------------------------------------------------------------------------------------ wandb
def test_wandb_is_offline_without_an_api_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert not wandb_has_credentials() and wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert wandb_has_credentials() and wandb_mode() is None  # `wandb login` was run: wandb's own mode
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "abc123")
    assert wandb_mode() is None
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode() is None  # the user's explicit choice is honoured


def _torchrun_main_dino(
    data: Path, out: Path, home: Path, extra_env: dict[str, str]
) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HOME=str(home), WANDB_SILENT="true", **extra_env)
    env.pop("NETRC", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        "main_dino.py", "--arch", "vit_tiny", "--patch_size", "4", "--depth", "2", "--global_crops_size", "28",
        "--local_crops_size", "12", "--local_crops_number", "1", "--batch_size_per_gpu", "4", "--epochs", "1",
        "--warmup_epochs", "0", "--compile", "false", "--use_fp16", "false", "--num_workers", "0",
        "--hidden_dim", "64", "--z_dim", "32", "--data_path", str(data), "--output_dir", str(out), "--track_wandb",
    ]  # fmt: skip
    start = time.monotonic()
    # A hang (a rank waiting forever in a collective) ends in TimeoutExpired.
    proc = subprocess.run(cmd, cwd=SIMDINO_DIR, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - start


def prompt_limit() -> float:
    """60 s on an idle machine (two processes start, import torch, fail or train one tiny epoch), scaled by
    the load of a shared CI machine."""
    return 60.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


@pytest.fixture
def small_data(tiny_imagefolder, tmp_path) -> Path:
    root = tmp_path / "data"
    for class_dir in sorted(p for p in (Path(tiny_imagefolder) / "train").iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:3]:
            (root / class_dir.name / image.name).symlink_to(image)
    return root


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_with_wandb_and_no_login_train_offline(small_data, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    proc, seconds = _torchrun_main_dino(small_data, out, tmp_path, {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seconds < prompt_limit()
    assert "logging offline" in (out / "output.log").read_text()
    assert list((out / "wandb").glob("offline-run-*"))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_with_wandb_online_and_no_login_stop_with_one_line(small_data, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    # Online forced without a key: wandb.init fails on rank 0 only; rank 1 must not wait forever.
    proc, seconds = _torchrun_main_dino(small_data, out, tmp_path, {"WANDB_MODE": "online"})
    assert proc.returncode != 0 and seconds < prompt_limit(), proc.stderr[-3000:]
    ours = [ln for ln in proc.stderr.splitlines() if "main_dino.py: error" in ln]
    assert len(ours) == 1 and "--track_wandb" in ours[0], proc.stderr[-3000:]
    # No traceback from our ranks (torchrun itself reports the failed child with its own traceback).
    our_frames = [
        ln
        for ln in proc.stderr.splitlines()
        if ln.strip().startswith('File "') and ("simdinov2" in ln or "main_dino" in ln)
    ]
    assert not our_frames, proc.stderr[-3000:]
    assert not (out / "checkpoint.pth").exists()


# ------------------------------------------------------------------------------------ clock and metrics
def test_clock_eta_covers_the_whole_run(monkeypatch):
    ticks = iter([0.0, 10.0, 10.0])
    monkeypatch.setattr(TrainingClock, "now", staticmethod(lambda: next(ticks)))
    clock = TrainingClock(0.0, total_iterations=100, niter_per_epoch=10)
    clock.iterations = 20  # resumed after 20 iterations
    clock.start()
    clock.iterations += 5  # 5 iterations in 10 s here: 2 s each, 75 left
    assert clock.seconds_left(25, clock.elapsed()) == pytest.approx(150.0)
    budget = TrainingClock(60.0, total_iterations=100, niter_per_epoch=10)
    assert budget.seconds_left(3, 45.0) == 15.0


def test_training_metrics_store_the_value_of_each_iteration(tmp_path):
    out = tmp_path / "training_metrics.json"
    logger = MetricLogger(output_file=out)
    for i in logger.log_every(range(5), 1, "t", images_per_iteration=8):
        logger.update(lr=float(i), loss=10.0 - i)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["lr"] for r in records] == [0.0, 1.0, 2.0, 3.0, 4.0]  # not a window median
    assert [r["loss"] for r in records] == [10.0, 9.0, 8.0, 7.0, 6.0]


def test_one_train_step_drives_both_trees_and_the_benchmark():
    from benchmarks import train_step as bench
    from simdino.train import dino_loop
    from simdinov2.train import train as v2_train
    from simdinov2.train.step import train_step

    assert dino_loop.train_step is train_step and v2_train.train_step is train_step
    assert bench.train_step is train_step


def test_progress_shows_iteration_throughput_and_the_run_eta(caplog):
    logger = MetricLogger()
    with caplog.at_level("INFO", logger="simdinov2"):
        for _ in logger.log_every(
            range(3), 1, "Epoch: [1/4]", n_iterations=12, start_iteration=3, images_per_iteration=64
        ):
            logger.update(loss=1.0, lr=0.5)
    line = next(r.getMessage() for r in caplog.records if "[ 3/12]" in r.getMessage())
    assert "eta:" in line and "img/s:" in line and "loss:" in line and "lr:" in line


def test_v1_warns_when_warmup_covers_the_whole_run(caplog):
    from simdino import main_dino

    args = main_dino.get_args_parser().parse_args(
        ["--epochs", "2", "--arch", "vit_tiny", "--compile", "false"]
    )
    with caplog.at_level("WARNING", logger="simdinov2"):
        main_dino.validate_args(args)  # default --warmup_epochs 10
    warnings = [r.getMessage() for r in caplog.records if "warmup_epochs" in r.getMessage()]
    assert len(warnings) == 1 and "--warmup_epochs 10 >= --epochs 2" in warnings[0]
    caplog.clear()
    args.epochs = 20
    with caplog.at_level("WARNING", logger="simdinov2"):
        main_dino.validate_args(args)
    assert not [r for r in caplog.records if "warmup_epochs" in r.getMessage()]


@pytest.mark.slow
def test_v2_trains_for_its_time_budget_and_ends_with_checkpoint_and_snapshot(tmp_path, monkeypatch):
    """`train.time_budget`: a fake clock (one second per reading) makes the stop iteration exact."""
    import argparse

    from golden_data import write_golden_imagefolder
    from train_utils import SIMDINO_CONFIG, TINY_OVERRIDES, fp32_overrides

    from simdinov2.train import train as v2_train

    ticks = iter(range(10**6))
    monkeypatch.setattr(TrainingClock, "now", staticmethod(lambda: float(next(ticks))))
    data = write_golden_imagefolder(tmp_path / "data")
    args = argparse.Namespace(
        config_file=SIMDINO_CONFIG,
        output_dir=str(tmp_path / "run"),
        no_resume=False,
        eval_only=False,
        opts=[
            *TINY_OVERRIDES,
            *fp32_overrides(),
            f"train.dataset_path={data}",
            "train.batch_size_per_gpu=8",
            "train.device=cpu",
            "compile=false",
            "optim.epochs=100",
            "train.time_budget=5",
        ],
    )
    result = v2_train.main(args)
    # start() reads the clock at 0, then once before each iteration: 1, 2, 3, 4 s run, 5 s stops (the 5th).
    assert result["iteration"] == 3 and result["train_seconds"] == pytest.approx(5.0)
    run = tmp_path / "run"
    assert (run / "eval" / "training_3" / "teacher_checkpoint.pth").is_file()
    assert (run / "ckpt" / "checkpoint_00000003").is_dir()
    records = [json.loads(line) for line in (run / "training_metrics.json").read_text().splitlines()]
    # Iteration 0 ran at 1/5 of the budget (past the warm-up), iteration 3 at 4/5: the lr annealed as the
    # budget's fraction, not the 4 of 400 nominal iterations; the record ends with the last iteration.
    assert [r["iteration"] for r in records] == [0, 3]
    assert records[-1]["lr"] < 0.2 * records[0]["lr"]
