"""v2 training on CUDA: nccl process group, FSDP2 with bf16 / fp16 mixed precision and loss scaling,
torch.compile. Skipped without CUDA (conftest adds the skip to every `gpu` test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from train_utils import REPO_ROOT, SIMDINO_CONFIG, free_port, run_train

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

GPU_ARGS = [
    "student.arch=vit_tiny",
    "student.patch_size=4",
    "crops.global_crops_size=28",
    "crops.local_crops_size=12",
    "crops.local_crops_number=2",
    "train.batch_size_per_gpu=16",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "evaluation.eval_period_epochs=1",
    "train.num_workers=2",
    "train.print_freq=1",
]


def _finite_records(output_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (output_dir / "training_metrics.json").read_text().splitlines()]
    assert records and all(r["total_loss"] == r["total_loss"] and abs(r["total_loss"]) < 1e4 for r in records)
    return records


@needs_cuda
def test_fsdp_over_nccl_with_bf16_fp16_and_compile(tiny_imagefolder, tmp_path):
    """One GPU, a 1-rank nccl group: FSDP2 with the recipe's precisions (bf16 backbone, fp16 heads and
    their loss scaling) and compiled blocks, through the real CLI entry point."""
    output_dir = tmp_path / "run"
    argv = [
        "--config-file", SIMDINO_CONFIG, "--output-dir", str(output_dir),
        f"train.dataset_path=ImageFolder:root={tiny_imagefolder / 'train'}", *GPU_ARGS,
        "train.sharding=fsdp", "compile=true",
    ]  # fmt: skip
    script = textwrap.dedent(
        f"""
        import os, torch, torch.distributed as dist
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{free_port()}", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
        from simdinov2.train.train import run_cli
        run_cli({argv!r})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    # "fsdp over 1 process" proves the trainer sharded over the script's nccl group.
    assert "sharding: fsdp over 1 process(es) on cuda" in log and "compiled" in log
    _finite_records(output_dir)
    teacher = torch.load(output_dir / "eval" / "training_5" / "teacher_checkpoint.pth", weights_only=True)[
        "teacher"
    ]
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in teacher.values())


@needs_cuda
def test_single_gpu_autocast_fp16_with_grad_scaler(tiny_imagefolder, tmp_path):
    """Plain `python train.py` on CUDA: no process group, fp16 autocast and a GradScaler."""
    output_dir = tmp_path / "run"
    result = run_train(
        [
            "--config-file",
            SIMDINO_CONFIG,
            "--output-dir",
            str(output_dir),
            f"train.dataset_path=ImageFolder:root={tiny_imagefolder / 'train'}",
            *GPU_ARGS,
            "compute_precision.student.backbone.mixed_precision.param_dtype=fp16",
        ]
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "sharding: none over 1 process(es) on cuda" in result.stdout + result.stderr
    _finite_records(output_dir)


@pytest.mark.distributed
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_two_gpus_nccl_fsdp(tiny_imagefolder, tmp_path):
    output_dir = tmp_path / "run"
    result = run_train(
        [
            "--config-file",
            SIMDINO_CONFIG,
            "--output-dir",
            str(output_dir),
            f"train.dataset_path=ImageFolder:root={tiny_imagefolder / 'train'}",
            *GPU_ARGS,
            "compile=true",
        ],
        nproc=2,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "backend nccl" in log and "sharding: fsdp over 2 process(es) on cuda" in log
    _finite_records(output_dir)
