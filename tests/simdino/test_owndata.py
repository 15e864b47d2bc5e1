"""v1 on a researcher's own data (`simdino/main_dino.py`): unlabeled folders and lists, starting from given
weights, the effective rank, the batch-size guard of the coding rate and the k-NN monitor (tiny ViT, real
Fashion-MNIST images)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simdino import main_dino
from simdinov2.checkpoint import safe_torch_load

TINY = [
    "--arch", "vit_tiny", "--patch_size", "4", "--depth", "2", "--global_crops_size", "28", "--local_crops_size", "12",
    "--local_crops_number", "2", "--compile", "false", "--use_fp16", "false", "--num_workers", "0",
    "--warmup_epochs", "0", "--hidden_dim", "64", "--z_dim", "32", "--batch_size_per_gpu", "4",
]  # fmt: skip
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_main(data: Path, out: Path, *extra: str, epochs: int = 1) -> None:
    argv = [*TINY, "--data_path", str(data), "--output_dir", str(out), "--epochs", str(epochs), *extra]
    main_dino.main(main_dino.get_args_parser().parse_args(argv))


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_metrics.json").read_text().splitlines()]


def backbone(path: Path, key: str) -> dict[str, torch.Tensor]:
    state = safe_torch_load(path)[key]
    return {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}


@pytest.fixture(scope="module")
def flat_folder(tiny_imagefolder, tmp_path_factory) -> Path:
    """8 real images in one folder, no classes, with a non-image file beside them."""
    root = tmp_path_factory.mktemp("own_images")
    for i, image in enumerate(sorted((Path(tiny_imagefolder) / "train").rglob("*.png"))[:8]):
        shutil.copy(image, root / f"photo_{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def unlabeled_run(flat_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unlabeled_run")
    run_main(flat_folder, out)
    return out


def test_trains_on_a_folder_without_classes(unlabeled_run):
    assert (unlabeled_run / "checkpoint.pth").is_file()
    assert [r["iteration"] for r in records(unlabeled_run)] == [0, 1]  # 8 images / batch 4
    assert "skipped 1 files that are not images" in (unlabeled_run / "output.log").read_text()


def test_trains_on_a_text_list(flat_folder, tmp_path):
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    relative = os.path.relpath(flat_folder, listing.parent)  # entries are relative to the list's folder
    listing.write_text("".join(f"{relative}/photo_{i}.png\n" for i in range(4)))
    run_main(listing, tmp_path / "out")
    assert [r["iteration"] for r in records(tmp_path / "out")] == [0]  # 4 images / batch 4


def test_pretrained_weights_start_both_backbones_and_lr_zero_keeps_them(flat_folder, unlabeled_run, tmp_path):
    given = backbone(unlabeled_run / "checkpoint.pth", "teacher")
    out = tmp_path / "from_given"
    run_main(flat_folder, out, "--pretrained_weights", str(unlabeled_run / "checkpoint.pth"), "--lr", "0",
             "--min_lr", "0", "--seed", "7")  # fmt: skip
    saved = backbone(out / "checkpoint.pth", "student")
    assert saved.keys() == given.keys()
    for name, value in given.items():
        assert torch.equal(saved[name], value), name
    # the heads start fresh: not the given run's
    head = {
        k: v for k, v in safe_torch_load(out / "checkpoint.pth")["student"].items() if k.startswith("head.")
    }
    old_head = {
        k: v
        for k, v in safe_torch_load(unlabeled_run / "checkpoint.pth")["student"].items()
        if k.startswith("head.")
    }
    assert any(not torch.equal(head[k], old_head[k]) for k in head)
    assert "backbones start from" in (out / "output.log").read_text()

    # a resumable checkpoint.pth wins over --pretrained_weights
    run_main(flat_folder, out, "--pretrained_weights", str(unlabeled_run / "checkpoint.pth"), "--lr", "0",
             "--min_lr", "0", epochs=2)  # fmt: skip
    assert "exists and the run resumes from it" in (out / "output.log").read_text()


def test_pretrained_weights_are_resized_to_other_crops_and_patches(flat_folder, unlabeled_run, tmp_path):
    out = tmp_path / "resized"
    run_main(flat_folder, out, "--pretrained_weights", str(unlabeled_run / "checkpoint.pth"),
             "--checkpoint_key", "student", "--global_crops_size", "32", "--patch_size", "8")  # fmt: skip
    saved = backbone(out / "checkpoint.pth", "student")
    assert saved["pos_embed"].shape == (1, 1 + 4 * 4, 192)
    assert saved["patch_embed.proj.weight"].shape[-1] == 8


def test_effective_rank_is_logged_and_small_batches_are_warned(unlabeled_run):
    rows = records(unlabeled_run)
    assert all(1.0 <= r["effective_rank"] <= 8 for r in rows)  # 2 global views x 4 images
    assert all(1.0 <= r["effective_rank_head"] <= 8 for r in rows)
    log = (unlabeled_run / "output.log").read_text()
    assert (
        "effective_rank:"
        in [line for line in log.splitlines() if "Epoch: [0/1]" in line and "eta" in line][0]
    )
    guard = [line for line in log.splitlines() if "rank-deficient" in line]
    assert (
        len(guard) == 1
        and "--reduce_cov 1" in guard[0]
        and "4 images per process < feature dimension 32" in guard[0]
    )


def test_no_batch_warning_with_reduce_cov(flat_folder, tmp_path):
    run_main(flat_folder, tmp_path / "o", "--reduce_cov", "1")
    assert "rank-deficient" not in (tmp_path / "o" / "output.log").read_text()


@pytest.mark.slow
@pytest.mark.distributed
def test_knn_monitor_in_two_processes(flat_folder, tiny_imagefolder, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "simdino.main_dino", *TINY,
           "--data_path", str(flat_folder), "--output_dir", str(out), "--epochs", "2",
           "--knn_monitor_path", str(tiny_imagefolder), "--knn_monitor_freq", "1"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    epochs = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert all(0 <= e["knn_monitor_top1"] <= 100 for e in epochs)
    knn_rows = [r for r in records(out) if "knn_monitor_top1" in r]
    assert [r["iteration"] for r in knn_rows] == [0, 1]  # 8 images / (4 x 2 processes): 1 iteration an epoch
    log = (out / "output.log").read_text()
    assert "120 train / 30 val images" in log and "s per 1,000 images" in log
    # the sharded monitor equals the same k-NN of the saved teacher in one process
    from simdino.train.multicrop import build_student_teacher
    from simdinov2.eval.knn_monitor import KnnMonitor

    args = safe_torch_load(out / "checkpoint.pth")["args"]
    _, teacher = build_student_teacher(args)
    teacher.load_state_dict(safe_torch_load(out / "checkpoint.pth")["teacher"])
    result = KnnMonitor(tiny_imagefolder, args.global_crops_size, batch_size=16)(teacher.backbone)
    assert result["knn_monitor_top1"] == pytest.approx(epochs[-1]["knn_monitor_top1"], abs=1e-6)
