"""`simdinov2.eval.backbone`: every eval program builds the backbone from the checkpoint itself.

The cross-tree commands of issue 13: a v1 `checkpoint.pth` evaluated by the v2 k-NN and a v2
`teacher_checkpoint.pth` (registers, LayerScale, chunked blocks) by v1 `eval_knn.py`, without
architecture flags; flags that contradict the weights are refused in one line naming the flag.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simdinov2.checkpoint import CheckpointError
from simdinov2.eval.backbone import (
    build_eval_backbone,
    read_checkpoint,
    refuse_contradiction,
    training_crop_size,
)
from simdinov2.models import build_vit

REPO = Path(__file__).resolve().parents[2]


def write_v1_checkpoint(path: Path, depth: int = 6, img_size: int = 28) -> Path:
    """main_dino.py's layout (vit_tiny/4 with --depth 6, as the demo trains): student behind `module.`,
    teacher keyed backbone.* / head.*, and the run's args."""
    torch.manual_seed(0)
    backbone = build_vit("vit_tiny", patch_size=4, v1=True, img_size=img_size, depth=depth)
    teacher = {f"backbone.{k}": v.clone() for k, v in backbone.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.randn(16, backbone.embed_dim)
    args = argparse.Namespace(arch="vit_tiny", patch_size=4, depth=depth, global_crops_size=img_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "student": {f"module.{k}": v for k, v in teacher.items()},
            "teacher": teacher,
            "optimizer": {},
            "epoch": 1,
            "args": args,
            "dino_loss": {},
        },
        path,
    )
    return path


def write_v2_snapshot(path: Path) -> Path:
    """A v2 teacher snapshot of simdino_config.yaml's ViT (4 registers, LayerScale, 4 chunks), vit_tiny/4."""
    from simdinov2.configs import get_cfg
    from simdinov2.models import build_model

    cfg = get_cfg(
        REPO / "simdinov2/configs/simdino_config.yaml",
        ["student.arch=vit_tiny", "student.patch_size=4", "crops.global_crops_size=28"],
    )
    torch.manual_seed(0)
    teacher, _ = build_model(cfg.student, only_teacher=True, img_size=28)
    state = {f"backbone.{k}": v for k, v in teacher.state_dict().items()}
    state["dino_head.mlp.0.weight"] = torch.randn(32, teacher.embed_dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"teacher": state}, path)
    return path


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, *cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_build_from_checkpoint_reads_the_architecture(tmp_path: Path) -> None:
    checkpoint = read_checkpoint(str(write_v1_checkpoint(tmp_path / "v1" / "checkpoint.pth")))
    model, config = build_eval_backbone(checkpoint, "teacher", "v1")
    assert (config["arch"], config["depth"], config["patch_size"]) == ("vit_tiny", 6, 4)
    assert (
        len(model.blocks) == 6 and not model.training and not any(p.requires_grad for p in model.parameters())
    )
    assert training_crop_size(checkpoint) == 28

    snapshot = read_checkpoint(str(write_v2_snapshot(tmp_path / "v2" / "teacher_checkpoint.pth")))
    model, config = build_eval_backbone(snapshot, "teacher", "v2")
    assert (config["num_register_tokens"], bool(config["init_values"]), config["block_chunks"]) == (
        4,
        True,
        4,
    )
    assert model.num_register_tokens == 4
    assert training_crop_size(snapshot) is None  # v2 snapshots store no args: the config says the crop

    with pytest.raises(
        CheckpointError,
        match=r"--arch vit_small contradicts the checkpoint v2, which holds "
        r"vit_tiny/4 \(embed 192\): drop --arch .* or pass --arch vit_tiny",
    ):
        refuse_contradiction(config, {"embed_dim": 384}, "--arch vit_small", "--arch vit_tiny", "v2")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_v1_checkpoint_by_v2_knn(tmp_path: Path, tiny_imagefolder: Path) -> None:
    """v1 checkpoint.pth through the v2 k-NN: without a config (crop from the checkpoint's args) and with
    the repository's SimDINOv2 config (another ViT layout: one log line, the weights win)."""
    weights = write_v1_checkpoint(tmp_path / "v1run" / "checkpoint.pth")
    data = ["--train-dataset", f"ImageFolder:root={tiny_imagefolder}/train",
            "--val-dataset", f"ImageFolder:root={tiny_imagefolder}/val", "--nb_knn", "10", "--num-workers", "0"]  # fmt: skip
    proc = run(
        [
            "simdinov2/eval/knn.py",
            "--pretrained-weights",
            str(weights),
            "--output-dir",
            str(tmp_path / "a"),
            *data,
        ],
        REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "a" / "results_eval_knn.json").read_text().splitlines()[0])
    assert record["image_size"] == 28 and 0.0 <= record["top1"] <= 100.0
    assert "vit_tiny/4 (embed 192, depth 6, 0 registers, no LayerScale" in proc.stdout + proc.stderr

    proc = run(["simdinov2/eval/knn.py", "--config-file", "simdinov2/configs/simdino_config.yaml",
                "--pretrained-weights", str(weights), "--output-dir", str(tmp_path / "b"), "--image-size", "28",
                *data], REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the checkpoint's architecture is evaluated" in proc.stdout + proc.stderr

    proc = run(["simdinov2/eval/knn.py", "--pretrained-weights", str(weights), "--output-dir", str(tmp_path / "c"),
                *data, "--opts", "student.patch_size=16"], REPO)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("knn.py: error: --opts student.patch_size=16 contradicts the checkpoint")
    )
    assert "pass --opts student.patch_size=4" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_v2_snapshot_by_v1_eval_knn(tmp_path: Path, tiny_imagefolder: Path) -> None:
    """v2 teacher_checkpoint.pth through v1 eval_knn.py (run from simdino/) with no architecture flags;
    a contradicting --patch_size is one line naming the flag."""
    weights = write_v2_snapshot(tmp_path / "v2run" / "eval" / "training_9" / "teacher_checkpoint.pth")
    common = ["--pretrained_weights", str(weights), "--data_path", str(tiny_imagefolder), "--img_size", "28",
              "--nb_knn", "10", "--use_cuda", "false", "--num_workers", "0"]  # fmt: skip
    proc = run(["eval_knn.py", *common], REPO / "simdino")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "10-NN classifier result: Top1:" in proc.stdout
    record = json.loads((weights.parent / "knn_results.json").read_text().splitlines()[0])
    assert (record["arch"], record["patch_size"]) == ("vit_tiny", 4)

    proc = run(["eval_knn.py", *common, "--patch_size", "16"], REPO / "simdino")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("eval_knn.py: error: --patch_size 16 contradicts the checkpoint")
        and "pass --patch_size 4" in last
    )


@pytest.mark.slow
def test_v1_eval_reads_crop_and_depth_from_the_training_checkpoint(
    tmp_path: Path, tiny_imagefolder: Path
) -> None:
    """No --img_size / --arch: the 28 px crop and the 6-block depth of the run, not 224 and 12 blocks;
    --arch vit_tiny agrees with a 6-block vit_tiny (an arch names the width)."""
    weights = write_v1_checkpoint(tmp_path / "run" / "checkpoint.pth")
    proc = run(["eval_knn.py", "--pretrained_weights", str(weights), "--data_path", str(tiny_imagefolder),
                "--arch", "vit_tiny", "--nb_knn", "10", "--use_cuda", "false", "--num_workers", "0"], REPO / "simdino")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((weights.parent / "knn_results.json").read_text().splitlines()[0])
    assert record["img_size"] == 28
    assert "evaluation crop 28 px (the training crop stored in the checkpoint" in proc.stdout + proc.stderr
