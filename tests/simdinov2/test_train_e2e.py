"""`simdinov2/train/train.py` end to end, launched as users launch it: torchrun (FSDP2 and DDP over gloo)
and plain python; resume, `--eval-only`, and the one-line errors of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from train_utils import SIMDINO_CONFIG, run_train

# Small and fast: vit_tiny/4 on 16 / 8 px crops, small heads, fp32 everywhere.
SMALL = [
    "student.arch=vit_tiny",
    "student.patch_size=4",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "crops.local_crops_number=2",
    "dino.head_hidden_dim=64",
    "dino.head_bottleneck_dim=32",
    "train.num_workers=0",
    "train.print_freq=1",
    "compile=false",
    "compute_precision.student.backbone.mixed_precision.param_dtype=fp32",
    "compute_precision.teacher.backbone.mixed_precision.param_dtype=fp32",
]


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "training_metrics.json").read_text().splitlines()]


def _last_line(result: subprocess.CompletedProcess) -> str:
    return [line for line in result.stderr.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def small_imagefolder(tiny_imagefolder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 training images (8 per class) of the session's tiny ImageFolder."""
    root = tmp_path_factory.mktemp("small_imagefolder") / "train"
    for class_dir in sorted(p for p in (tiny_imagefolder / "train").iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:8]:
            shutil.copy(image, root / class_dir.name / image.name)
    return root


def _snapshot(output_dir: Path, iteration: int) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(
        output_dir / "eval" / f"training_{iteration}" / "teacher_checkpoint.pth", weights_only=True
    )
    assert set(checkpoint) == {"teacher"}
    return checkpoint["teacher"]


# ---------------------------------------------------------------------------------------------- torchrun
@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_torchrun_fsdp_trains_writes_snapshots_and_resumes(small_imagefolder, tmp_path):
    """The README's 2-process CPU command at a smaller size (tests/test_readme_commands.py runs it as
    written): FSDP2 over gloo, a snapshot per epoch, then resumed for one more epoch."""
    output_dir = tmp_path / "run"
    command = [
        "--config-file", SIMDINO_CONFIG, "--output-dir", str(output_dir),
        f"train.dataset_path=ImageFolder:root={small_imagefolder}",
        "student.arch=vit_tiny", "student.patch_size=4", "crops.global_crops_size=16", "crops.local_crops_size=8",
        "crops.local_crops_number=2", "train.batch_size_per_gpu=4", "optim.epochs=2", "optim.warmup_epochs=1",
        "evaluation.eval_period_epochs=1", "train.num_workers=0", "compile=false",
    ]  # fmt: skip
    log = _ok(run_train(command, nproc=2))
    assert "sharding: fsdp over 2 process(es) on cpu" in log
    assert "precision: bf16 on the CPU" in log or "precision: fp32 on the CPU" in log
    # 24 images / (4 x 2) = 3 iterations per epoch: snapshots after iterations 2 and 5.
    config = (output_dir / "config.yaml").read_text()
    assert "arch: vit_tiny" in config and "use_mcr: true" in config
    for iteration in (2, 5):
        teacher = _snapshot(output_dir, iteration)
        assert {k.split(".")[0] for k in teacher} == {"backbone", "dino_head"}
        assert teacher["backbone.pos_embed"].shape == (1, 1 + 16, 192)
    assert not torch.equal(
        _snapshot(output_dir, 2)["backbone.pos_embed"], _snapshot(output_dir, 5)["backbone.pos_embed"]
    )
    assert _records(output_dir)[-1]["iteration"] == 5

    log = _ok(run_train(command[:-5] + ["optim.epochs=3"] + command[-4:], nproc=2))
    assert "continuing at iteration 6" in log
    records = _records(output_dir)
    assert [r["iteration"] for r in records][-1] == 8 and all(r["iteration"] != 0 for r in records[2:])
    assert (output_dir / "eval" / "training_8" / "teacher_checkpoint.pth").is_file()
    assert (output_dir / "ckpt" / "checkpoint_00000008" / "trainer_state.json").is_file()


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_ddp_trains(small_imagefolder, tmp_path):
    output_dir = tmp_path / "run"
    log = _ok(
        run_train(
            ["--config-file", SIMDINO_CONFIG, "--output-dir", str(output_dir), f"train.dataset_path=ImageFolder:root={small_imagefolder}",
             *SMALL, "train.batch_size_per_gpu=4", "optim.epochs=1", "evaluation.eval_period_epochs=1", "train.sharding=ddp"],
            nproc=2,
        )
    )  # fmt: skip
    assert "sharding: ddp over 2 process(es) on cpu" in log
    records = _records(output_dir)
    assert [r["iteration"] for r in records] == [0, 1, 2]  # 24 images / (4 x 2) = 3 iterations
    assert all(r["total_loss"] == r["total_loss"] for r in records)  # finite (not NaN)
    assert _snapshot(output_dir, 2)["backbone.cls_token"].shape == (1, 1, 192)


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_one_process_shards_with_fsdp(small_imagefolder, tmp_path):
    """torchrun with one process still makes a process group, so FSDP2 runs on a single rank (one GPU)."""
    output_dir = tmp_path / "run"
    log = _ok(
        run_train(
            ["--config-file", SIMDINO_CONFIG, "--output-dir", str(output_dir), f"train.dataset_path=ImageFolder:root={small_imagefolder}",
             *SMALL, "train.batch_size_per_gpu=8", "optim.epochs=1", "evaluation.eval_period_epochs=1", "train.sharding=fsdp"],
            nproc=1,
        )
    )  # fmt: skip
    assert "sharding: fsdp over 1 process(es) on cpu" in log
    assert [r["iteration"] for r in _records(output_dir)] == [0, 1, 2]  # 24 images / 8


# ---------------------------------------------------------------------------------------------- one process
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_interrupted_and_resumed_run_equals_uninterrupted_one(small_imagefolder, tmp_path):
    args = lambda out: [  # noqa: E731
        "--config-file", SIMDINO_CONFIG, "--output-dir", str(out), f"train.dataset_path=ImageFolder:root={small_imagefolder}",
        *SMALL, "train.batch_size_per_gpu=8", "optim.epochs=2", "optim.warmup_epochs=1", "evaluation.eval_period_epochs=1",
    ]  # fmt: skip
    full = tmp_path / "full"
    log = _ok(run_train(args(full)))
    assert "sharding: none over 1 process(es) on cpu" in log
    # "Interrupt" a copy after the first epoch: drop everything the second epoch wrote, then resume.
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "ckpt" / "checkpoint_00000005")
    shutil.rmtree(resumed / "eval" / "training_5")
    first_epoch = [
        line
        for line in (resumed / "training_metrics.json").read_text().splitlines()
        if json.loads(line)["iteration"] < 3
    ]
    (resumed / "training_metrics.json").write_text("\n".join(first_epoch) + "\n")
    log = _ok(run_train(args(resumed)))
    assert "continuing at iteration 3" in log

    want, got = _records(full), _records(resumed)
    assert [r["iteration"] for r in got] == [r["iteration"] for r in want] == list(range(6))
    for a, b in zip(want[3:], got[3:], strict=True):
        for key in a:
            if key.endswith("_time"):
                continue
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["iteration"], key)
    teacher_full, teacher_resumed = _snapshot(full, 5), _snapshot(resumed, 5)
    for key, value in teacher_full.items():
        torch.testing.assert_close(teacher_resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)

    # --eval-only rewrites the snapshot of the latest checkpoint, identical to the one training wrote.
    shutil.rmtree(full / "eval" / "training_5")
    _ok(run_train(["--eval-only", *args(full)]))
    for key, value in _snapshot(full, 5).items():
        assert torch.equal(value, teacher_full[key]), key

    # A checkpoint of another architecture: one clear line, no traceback.
    result = run_train(["--eval-only", *args(full), "student.arch=vit_small"])
    assert result.returncode == 1
    assert "does not match this model" in _last_line(result) and "Traceback" not in result.stderr


def _error_line_in_process(argv: list[str]) -> str:
    """`train.py ARGV` run in this process (the command's own entry point): the one line it exits with."""
    from simdinov2.train import train

    with pytest.raises(SystemExit) as exit_info:
        train.run_cli(argv)
    line = exit_info.value.code
    assert isinstance(line, str) and "\n" not in line, line  # printed alone on stderr, exit status 1
    return line


def test_dataset_smaller_than_one_global_batch_is_one_clear_line(small_imagefolder, tmp_path):
    line = _error_line_in_process(
        [
            "--config-file",
            SIMDINO_CONFIG,
            "--output-dir",
            str(tmp_path),
            f"train.dataset_path=ImageFolder:root={small_imagefolder}",
            *SMALL,
            "train.batch_size_per_gpu=64",
        ]
    )
    assert "24 images, fewer than one global batch" in line and "train.batch_size_per_gpu" in line


def test_unknown_config_key_is_one_clear_line(tmp_path):
    line = _error_line_in_process(
        ["--config-file", SIMDINO_CONFIG, "--output-dir", str(tmp_path), "optim.epoch=3"]
    )
    assert "unknown config key 'optim.epoch'" in line and "optim.epochs" in line
