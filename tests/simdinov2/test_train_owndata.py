"""v2 trainer on a researcher's own data: an unlabeled folder for `train.dataset_path`, the effective rank in
the progress line and `training_metrics.json`, and the batch-size guard of the coding rate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from train_utils import SIMDINO_CONFIG, run_train

SMALL = [
    "student.arch=vit_tiny",
    "student.patch_size=4",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "crops.local_crops_number=2",
    "dino.head_hidden_dim=64",
    "dino.head_bottleneck_dim=32",
    "ibot.head_hidden_dim=64",
    "ibot.head_bottleneck_dim=32",
    "train.num_workers=0",
    "train.print_freq=1",
    "compile=false",
    "compute_precision.student.backbone.mixed_precision.param_dtype=fp32",
    "compute_precision.teacher.backbone.mixed_precision.param_dtype=fp32",
    "train.batch_size_per_gpu=4",
    "optim.epochs=1",
]


@pytest.fixture(scope="module")
def nested_unlabeled(tiny_imagefolder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 real images in nested folders that are not classes, and a non-image file."""
    root = tmp_path_factory.mktemp("own_v2")
    for i, image in enumerate(sorted((tiny_imagefolder / "train").rglob("*.png"))[:8]):
        folder = root / ("2024" if i % 2 else "2025") / "day"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / f"{i}.png")
    (root / "index.html").write_text("<html/>")
    return root


@pytest.mark.slow
def test_v2_trains_on_an_unlabeled_folder_and_logs_effective_rank(nested_unlabeled, tmp_path):
    out = tmp_path / "run"
    result = run_train(
        [
            "--config-file",
            SIMDINO_CONFIG,
            "--output-dir",
            str(out),
            f"train.dataset_path={nested_unlabeled}",
            *SMALL,
        ]
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "8 images, no labels needed" in log and "skipped 1 files that are not images" in log
    rows = [json.loads(line) for line in (out / "training_metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(1.0 <= r["effective_rank"] <= 8 and 1.0 <= r["effective_rank_head"] <= 8 for r in rows)
    assert any(
        "effective_rank:" in line for line in log.splitlines() if line.count("Training") and "eta" in line
    )
    guard = [line for line in log.splitlines() if "rank-deficient" in line]
    assert len(guard) == 1 and "dino.mcr.reduce_cov=1" in guard[0]


@pytest.mark.slow
@pytest.mark.distributed
def test_v2_knn_monitor_at_each_snapshot_in_two_processes(nested_unlabeled, tiny_imagefolder, tmp_path):
    out = tmp_path / "run"
    result = run_train(["--config-file", SIMDINO_CONFIG, "--output-dir", str(out), f"train.dataset_path={nested_unlabeled}",
                        *SMALL, "optim.epochs=2", "evaluation.eval_period_epochs=1", "train.sharding=ddp",
                        f"evaluation.knn_monitor_path={tiny_imagefolder}"], nproc=2)  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    rows = [json.loads(line) for line in (out / "training_metrics.json").read_text().splitlines()]
    knn = [r for r in rows if "knn_monitor_top1" in r]
    assert [r["iteration"] for r in knn] == [
        0,
        1,
    ]  # 8 images / (4 x 2): one iteration an epoch, a snapshot each
    assert all(0 <= r["knn_monitor_top1"] <= 100 for r in knn)
    assert (out / "eval" / "training_1" / "teacher_checkpoint.pth").is_file()
    assert "s per 1,000 images" in log
