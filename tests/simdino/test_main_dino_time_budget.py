"""`main_dino.py --time_budget`: training stops at the budget, the schedules follow the elapsed fraction of
it, and a resumed run keeps its clock. A fake clock (one second per reading) makes every run exact.
Also `--depth` (a shallower ViT of the arch's width), which the CPU demo uses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simdino import main_dino
from simdino.train import dino_loop, multicrop
from simdinov2.data import samplers
from simdinov2.train.clock import TrainingClock
from simdinov2.utils.schedules import cosine_scheduler_epochs

TINY = [
    "--arch", "vit_tiny", "--patch_size", "7", "--global_crops_size", "28", "--local_crops_size", "14",
    "--local_crops_number", "1", "--compile", "false", "--use_fp16", "false", "--num_workers", "0",
    "--hidden_dim", "64", "--z_dim", "16", "--batch_size_per_gpu", "4", "--saveckp_freq", "0",
]  # fmt: skip
LR, MIN_LR, EPOCHS, WARMUP = 0.0512, 1e-4, 50, 5  # peak lr = LR * 4 / 256 = 8e-4
PER_CLASS = 3  # 9 images: 2 iterations per epoch at batch 4


@pytest.fixture(autouse=True)
def one_thread_and_fake_clock(monkeypatch):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    ticks = iter(range(10**6))
    monkeypatch.setattr(TrainingClock, "now", staticmethod(lambda: float(next(ticks))))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def train_dir(tiny_imagefolder, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("budget_train")
    for class_dir in sorted(p for p in (Path(tiny_imagefolder) / "train").iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir()
        for image in sorted(class_dir.iterdir())[:PER_CLASS]:
            (root / class_dir.name / image.name).symlink_to(image)
    return root


def train(data: Path, out: Path, budget: float) -> dict[str, float]:
    argv = [*TINY, "--data_path", str(data), "--output_dir", str(out), "--epochs", str(EPOCHS),
            "--warmup_epochs", str(WARMUP), "--lr", str(LR), "--min_lr", str(MIN_LR),
            "--time_budget", str(budget)]  # fmt: skip
    return main_dino.train_dino(main_dino.get_args_parser().parse_args(argv))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_metrics.json").read_text().splitlines()]


def test_clock_maps_elapsed_time_onto_the_schedules():
    clock = TrainingClock(100.0, total_iterations=1000, niter_per_epoch=10)
    assert clock.schedule_index(3, elapsed=0.0) == 0
    assert clock.schedule_index(3, elapsed=25.0) == 250  # a quarter of the budget: a quarter of the curves
    assert clock.schedule_index(3, elapsed=99.99) == 999
    assert clock.schedule_index(3, elapsed=500.0) == 999  # never past the end
    assert clock.schedule_epoch(0, 250) == 25
    assert not clock.exhausted(99.9) and clock.exhausted(100.0)
    no_budget = TrainingClock(0.0, total_iterations=1000, niter_per_epoch=10)
    assert no_budget.schedule_index(3, elapsed=50.0) == 3 and no_budget.schedule_epoch(7, 3) == 7
    assert not no_budget.exhausted(1e9)
    assert no_budget.state_dict() == {}  # budget-less checkpoints keep upstream's keys


@pytest.mark.slow
def test_budget_stops_training_and_anneals_the_schedules(train_dir, tmp_path):
    budget = 12.0
    summary = train(train_dir, tmp_path / "run", budget)
    # One clock reading at start, one per epoch start, one per iteration (the stopping one included):
    # the stop comes long before --epochs (100 iterations).
    assert summary["train_seconds"] >= budget
    assert 0 < summary["iterations"] < EPOCHS * 2
    assert summary["images_seen"] == summary["iterations"] * 4
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["iterations"] == summary["iterations"] and ckpt["train_seconds"] >= budget
    log = [json.loads(line) for line in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    assert len(log) == ckpt["epoch"] == summary["epochs"] < EPOCHS

    # Every logged lr is the cosine schedule read at the elapsed fraction of the budget, not at the
    # iteration: by the last iterations it has annealed towards --min_lr although only a few of the
    # 100 nominal iterations ran.
    schedule = cosine_scheduler_epochs(LR * 4 / 256, MIN_LR, EPOCHS, 2, warmup_epochs=WARMUP)
    lrs = [m["lr"] for m in metrics(tmp_path / "run")]
    peak = float(schedule.max())
    assert lrs[-1] < 0.2 * peak
    assert max(lrs) > 0.5 * peak  # the first step ran at 1/6 of the budget: just past warmup, near the peak
    iteration_indexed = [float(schedule[m["iteration"]]) for m in metrics(tmp_path / "run")]
    assert not np.allclose(lrs, iteration_indexed)


@pytest.mark.slow
def test_resume_keeps_the_clock_and_a_spent_budget_trains_no_more(train_dir, tmp_path):
    out = tmp_path / "run"
    first = train(train_dir, out, 8.0)
    again = train(train_dir, out, 8.0)  # budget already spent: nothing more
    assert again["iterations"] == first["iterations"]
    longer = train(train_dir, out, 16.0)  # a larger budget continues from the saved clock
    assert longer["iterations"] > first["iterations"]
    assert longer["train_seconds"] >= 16.0
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["iterations"] == longer["iterations"]


def test_negative_budget_is_one_line(train_dir, tmp_path):
    with pytest.raises(SystemExit, match="--time_budget must be >= 0"):
        main_dino.main(main_dino.get_args_parser().parse_args(
            [*TINY, "--data_path", str(train_dir), "--output_dir", str(tmp_path), "--time_budget", "-1"]
        ))  # fmt: skip


@pytest.mark.slow
def test_depth_builds_a_shallower_vit_of_the_arch_width_and_resume_checks_it(train_dir, tmp_path):
    from simdinov2.checkpoint import build_backbone_from_checkpoint

    args = main_dino.get_args_parser().parse_args([*TINY, "--depth", "3"])
    backbone, embed_dim = multicrop.build_backbone(args, 0.0)
    assert (len(backbone.block_list()), embed_dim, backbone.num_heads) == (3, 192, 3)
    default, _ = multicrop.build_backbone(main_dino.get_args_parser().parse_args(TINY), 0.0)
    assert len(default.block_list()) == 12  # --depth 0: vit_tiny's own

    out = tmp_path / "run"
    argv = [*TINY, "--depth", "3", "--data_path", str(train_dir), "--output_dir", str(out), "--epochs", "1"]
    main_dino.train_dino(main_dino.get_args_parser().parse_args(argv))
    teacher = build_backbone_from_checkpoint(str(out / "checkpoint.pth"), "teacher", verbose=False)
    assert len(teacher.block_list()) == 3  # the depth is read back from the weights
    with pytest.raises(SystemExit, match="trained with --depth 3 but this run uses --depth 2"):
        main_dino.main(main_dino.get_args_parser().parse_args([*argv[:-2], "--epochs", "2", "--depth", "2"]))


def test_progress_eta_is_the_budget_left_and_an_overlong_first_iteration_is_named(tmp_path, caplog):
    """A 40 s budget over 100 epochs: the ETA is what the budget leaves, not 100 epochs' worth; a first
    iteration that takes the whole budget is said in one line."""
    from simdinov2.logging import MetricLogger

    clock = TrainingClock(40.0, total_iterations=100 * 1000, niter_per_epoch=1000)
    clock.start()  # tick 0
    clock.elapsed()  # tick 1: 1 s spent
    clock.iterations += 1
    assert clock.eta(0) == 39.0 and clock.first_iteration_over_budget() is None
    logger = MetricLogger()
    # the progress line, not the 100 000-iteration estimate
    with caplog.at_level("INFO", logger="simdinov2"):
        for _ in logger.log_every(range(1), 1, "Epoch", n_iterations=clock.total_iterations, eta=clock.eta):
            logger.update(loss=1.0)
    assert "eta: 0:00:39" in caplog.text

    slow = TrainingClock(40.0, total_iterations=100, niter_per_epoch=10)
    slow.start()
    for _ in range(45):
        slow.elapsed()
    slow.iterations += 1
    assert "first iteration took 45 s" in slow.first_iteration_over_budget()


def test_v1_loader_workers_are_capped_at_the_cores(train_dir, monkeypatch, caplog):
    monkeypatch.setattr(samplers, "available_cores", lambda: 2)
    args = argparse.Namespace(seed=0, batch_size_per_gpu=2, num_workers=10)
    with caplog.at_level("INFO", logger="simdinov2"):
        loader = dino_loop.build_data_loader(
            args, dino_loop.build_dataset(str(train_dir), None), torch.device("cpu")
        )
    assert loader.num_workers == 2 and "num_workers 10 capped at 2" in caplog.text
