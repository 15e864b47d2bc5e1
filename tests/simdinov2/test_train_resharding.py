"""v2 training across process layouts on gloo: a run saved by 4 processes resumed by 2 (DCP resharding,
sampler position and schedules continue), and a 2-"node" torchrun on localhost (c10d rendezvous, two
launcher processes)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_utils import REPO_ROOT, SIMDINO_CONFIG, TRAIN_SCRIPT, free_port, run_train

from simdinov2.data import InfiniteSampler

# vit_tiny/4 on 16 / 8 px crops, small heads: the smallest run that exercises everything.
TINY = [
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
]
GLOBAL_BATCH = 8
SCHEDULED = ("lr", "wd", "mom", "last_layer_lr")


@pytest.fixture(scope="module")
def images_24(tiny_imagefolder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images: 3 iterations of a global batch of 8 per epoch, on 4 processes x 2 or 2 x 4."""
    root = tmp_path_factory.mktemp("images_24") / "train"
    for class_dir in sorted(p for p in (tiny_imagefolder / "train").iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:8]:
            shutil.copy(image, root / class_dir.name / image.name)
    return root


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "training_metrics.json").read_text().splitlines()]


def _snapshot(output_dir: Path, iteration: int) -> dict[str, torch.Tensor]:
    path = output_dir / "eval" / f"training_{iteration}" / "teacher_checkpoint.pth"
    return torch.load(path, weights_only=True)["teacher"]


def test_sampler_position_is_the_same_global_stream_for_any_process_count():
    """What a resumed run reads next does not depend on how many processes wrote the checkpoint: with the
    same global batch, iteration t covers the same images on 4 x 2 as on 2 x 4 processes."""

    def global_batches(world: int, per_rank: int, first_iteration: int, n_iterations: int) -> list[set[int]]:
        streams = [
            iter(InfiniteSampler(24, seed=3, start=rank, step=world, advance=first_iteration * per_rank))
            for rank in range(world)
        ]
        per_rank_batches = [
            [list(itertools.islice(s, per_rank)) for _ in range(n_iterations)] for s in streams
        ]
        return [set().union(*(batches[t] for batches in per_rank_batches)) for t in range(n_iterations)]

    uninterrupted = global_batches(world=4, per_rank=2, first_iteration=0, n_iterations=9)
    resumed = global_batches(world=2, per_rank=4, first_iteration=3, n_iterations=6)
    assert resumed == uninterrupted[3:]
    assert all(len(batch) == GLOBAL_BATCH for batch in uninterrupted)
    assert set().union(*uninterrupted[3:6]) == set(range(24))  # epoch 1: every image once


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_run_saved_by_4_processes_resumes_on_2(images_24, tmp_path):
    """DCP resharding: 4 processes train 2 epochs; a copy cut back to the end of epoch 0 resumes on 2
    processes with the same global batch. Iterations and schedules continue exactly; the teacher of a
    4-process checkpoint loads on 2 processes bit for bit."""
    args = lambda out, per_rank: [  # noqa: E731
        "--config-file", SIMDINO_CONFIG, "--output-dir", str(out), f"train.dataset_path=ImageFolder:root={images_24}",
        *TINY, f"train.batch_size_per_gpu={per_rank}", "optim.epochs=2", "optim.warmup_epochs=1",
        "evaluation.eval_period_epochs=1",
    ]  # fmt: skip
    four = tmp_path / "four"
    log = _ok(run_train(args(four, 2), nproc=4))
    assert "sharding: fsdp over 4 process(es) on cpu" in log
    want = _records(four)
    assert [r["iteration"] for r in want] == list(range(6))

    # The "interrupted" copy: what existed after epoch 0 (checkpoint 2, snapshot 2, metrics rows 0..2).
    two = tmp_path / "two"
    shutil.copytree(four, two)
    shutil.rmtree(two / "ckpt" / "checkpoint_00000005")
    shutil.rmtree(two / "eval" / "training_5")
    (two / "training_metrics.json").write_text("".join(json.dumps(r) + "\n" for r in want[:3]))

    # --eval-only on 2 processes re-writes the teacher of the 4-process checkpoint: identical tensors.
    shutil.rmtree(two / "eval" / "training_2")
    _ok(run_train(["--eval-only", *args(two, 4)], nproc=2))
    for key, value in _snapshot(four, 2).items():
        assert torch.equal(_snapshot(two, 2)[key], value), key

    log = _ok(run_train(args(two, 4), nproc=2))
    assert "sharding: fsdp over 2 process(es) on cpu" in log and "continuing at iteration 3" in log
    got = _records(two)
    assert [r["iteration"] for r in got] == list(range(6))
    for a, b in zip(want[3:], got[3:], strict=True):
        for key in SCHEDULED:
            assert b[key] == pytest.approx(a[key], rel=1e-9), (a["iteration"], key)
        assert b["total_loss"] == b["total_loss"]  # finite
    lrs = [r["lr"] for r in got[3:]]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]  # cosine decay continues, not restarted
    assert (two / "eval" / "training_5" / "teacher_checkpoint.pth").is_file()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_two_node_torchrun_on_localhost_trains(images_24, tmp_path):
    """`torchrun --nnodes 2` twice on this machine (one process each), c10d rendezvous: 2 ranks train."""
    out = tmp_path / "run"
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONFAULTHANDLER="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "simdino-two-nodes",
        str(TRAIN_SCRIPT), "--config-file", SIMDINO_CONFIG, "--output-dir", str(out),
        f"train.dataset_path=ImageFolder:root={images_24}", *TINY, "train.batch_size_per_gpu=4", "optim.epochs=1",
        "evaluation.eval_period_epochs=1",
    ]  # fmt: skip
    nodes = [
        subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    try:
        logs = [node.communicate(timeout=480)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, log in zip(nodes, logs, strict=True):
        assert node.returncode == 0, log[-3000:]
    assert any("sharding: fsdp over 2 process(es) on cpu" in log for log in logs)
    records = _records(out)
    assert [r["iteration"] for r in records] == [0, 1, 2]  # 24 images / (4 x 2 nodes)
    assert (out / "eval" / "training_2" / "teacher_checkpoint.pth").is_file()
