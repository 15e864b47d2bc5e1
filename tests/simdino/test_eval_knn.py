"""v1 `simdino/eval_knn.py`: the README / issue command on a synthetic v1 checkpoint, with and without
--dump_features / --load_features, a 2-process torchrun, and bad input (one line, exit code != 0)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simdinov2.models import build_vit

REPO = Path(__file__).resolve().parents[2]
SIMDINO = REPO / "simdino"
RESULT_LINE = re.compile(r"^(\d+)-NN classifier result: Top1: ([0-9.]+), Top5: ([0-9.]+)$", re.M)


def make_v1_checkpoint(
    path: Path, arch: str = "vit_tiny", patch_size: int = 4, img_size: int = 28, seed: int = 0
) -> Path:
    """A checkpoint laid out like main_dino.py's: student (behind DDP's `module.`) and teacher state dicts
    keyed backbone.* / head.*, plus optimizer, epoch, args and dino_loss."""
    torch.manual_seed(seed)
    backbone = build_vit(arch, patch_size=patch_size, v1=True, img_size=img_size)
    head = {
        "head.mlp.0.weight": torch.randn(64, backbone.embed_dim),
        "head.mlp.0.bias": torch.zeros(64),
        "head.mlp.2.weight": torch.randn(32, 64),
        "head.mlp.2.bias": torch.zeros(32),
    }
    teacher = {f"backbone.{k}": v.clone() for k, v in backbone.state_dict().items()} | head
    student = {f"module.{k}": v.clone() for k, v in teacher.items()}
    torch.save(
        {
            "student": student,
            "teacher": teacher,
            "optimizer": {},
            "epoch": 1,
            "args": argparse.Namespace(arch=arch, patch_size=patch_size, global_crops_size=img_size),
            "dino_loss": {},
        },
        path,
    )
    return path


def run_script(
    script: str, *args: str, launcher: list[str] | None = None, timeout: int = 180
) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = (launcher or [sys.executable]) + [script, *args]
    return subprocess.run(cmd, cwd=SIMDINO, env=env, capture_output=True, text=True, timeout=timeout)


def parse_results(stdout: str) -> dict[int, tuple[float, float]]:
    return {int(k): (float(t1), float(t5)) for k, t1, t5 in RESULT_LINE.findall(stdout)}


@pytest.fixture(scope="module")
def v1_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_v1_checkpoint(tmp_path_factory.mktemp("v1run") / "checkpoint.pth")


ISSUE_COMMAND = ["--arch", "vit_tiny", "--patch_size", "4", "--img_size", "28", "--nb_knn", "10", "20",
                 "--use_cuda", "false", "--num_workers", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def single_run(v1_checkpoint: Path, tiny_imagefolder: Path) -> subprocess.CompletedProcess:
    """The issue's command verbatim: one process, no --dump_features / --load_features."""
    proc = run_script(
        "eval_knn.py",
        *ISSUE_COMMAND,
        "--pretrained_weights",
        str(v1_checkpoint),
        "--data_path",
        str(tiny_imagefolder),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def torchrun_dump(v1_checkpoint: Path, tiny_imagefolder: Path, tmp_path_factory: pytest.TempPathFactory):
    """2 processes (gloo) with --dump_features."""
    out = tmp_path_factory.mktemp("knn2")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = run_script(
        "eval_knn.py", *ISSUE_COMMAND, "--pretrained_weights", str(v1_checkpoint),
        "--data_path", str(tiny_imagefolder), "--batch_size_per_gpu", "32", "--dump_features", str(out / "dump"),
        "--output_dir", str(out), launcher=torchrun,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out / "dump"


@pytest.mark.slow
def test_issue_command_without_dumps(v1_checkpoint: Path, tiny_imagefolder: Path, single_run) -> None:
    """Upstream crashed after printing unless dump/load was given; here it prints DINO's lines, exits 0
    and appends a JSON record next to the checkpoint."""
    results = parse_results(single_run.stdout)
    assert sorted(results) == [10, 20]
    for top1, top5 in results.values():
        assert 0.0 <= top1 <= top5 <= 100.0
    lines = (v1_checkpoint.parent / "knn_results.json").read_text().splitlines()
    record = json.loads(lines[-1])
    assert record["arch"] == "vit_tiny" and record["img_size"] == 28
    assert {k: (v["top1"], v["top5"]) for k, v in record["results"].items()} == {
        str(k): v for k, v in results.items()
    }
    assert record["n_test"] == sum(1 for _ in (tiny_imagefolder / "val").rglob("*.png"))


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_dump_and_load_features(
    tiny_imagefolder: Path, single_run, torchrun_dump, tmp_path: Path
) -> None:
    """2-process extraction gathers every rank's rows back into dataset order: same results as one
    process; the dump holds normalised features with the ImageFolder labels in order; the shared core on
    the dump gives the printed numbers; --load_features reproduces them."""
    from simdinov2.data import ImageFolderDataset
    from simdinov2.eval.knn import knn_classify

    proc, dump = torchrun_dump
    printed = parse_results(proc.stdout)
    assert len(RESULT_LINE.findall(proc.stdout)) == 2  # printed by the main process only
    assert printed == parse_results(single_run.stdout)
    train_features, train_labels = torch.load(dump / "trainfeat.pth"), torch.load(dump / "trainlabels.pth")
    test_features, test_labels = torch.load(dump / "testfeat.pth"), torch.load(dump / "testlabels.pth")
    for split, labels in (("train", train_labels), ("val", test_labels)):
        expected = torch.as_tensor(ImageFolderDataset(str(tiny_imagefolder / split)).get_targets()).long()
        assert torch.equal(labels, expected)
    assert torch.allclose(train_features.norm(dim=1), torch.ones(len(train_labels)), atol=1e-5)
    assert not torch.allclose(train_features[0], train_features[-1])
    expected = knn_classify(train_features, train_labels, test_features, test_labels, [10, 20], 0.07)
    for k, (top1, top5) in expected.items():
        assert printed[k] == pytest.approx((top1, top5), abs=1e-9)

    # --use_cuda true: the GPU when there is one, else the CPU with one log line saying so
    loaded = run_script("eval_knn.py", "--load_features", str(dump), "--nb_knn", "10", "20", "--use_cuda", "true",
                        "--output_dir", str(tmp_path))  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert parse_results(loaded.stdout) == printed
    assert json.loads((tmp_path / "knn_results.json").read_text())["load_features"] == str(dump)
    if not torch.cuda.is_available():
        assert (loaded.stdout + loaded.stderr).count("CUDA is not available") == 1


def _knn_args(*extra: str) -> argparse.Namespace:
    from simdino.eval_knn import get_args_parser

    common = ["--arch", "vit_tiny", "--patch_size", "4", "--img_size", "28", "--use_cuda", "false",
              "--num_workers", "0", "--nb_knn", "10"]  # fmt: skip
    return get_args_parser().parse_args(common + list(extra))


def test_bad_inputs_raise_clear_errors(v1_checkpoint: Path, tiny_imagefolder: Path, tmp_path: Path) -> None:
    from simdino.eval_knn import main

    with pytest.raises(FileNotFoundError, match="--data_path .*nowhere does not exist"):
        main(_knn_args("--pretrained_weights", str(v1_checkpoint), "--data_path", str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no train/ folder"):
        main(_knn_args("--pretrained_weights", str(v1_checkpoint), "--data_path", str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="--pretrained_weights is required"):
        main(_knn_args("--data_path", str(tiny_imagefolder)))
    with pytest.raises(FileNotFoundError, match="trainfeat.pth"):
        main(_knn_args("--load_features", str(tmp_path)))
    with pytest.raises(ValueError, match="--temperature"):
        main(_knn_args("--load_features", str(tmp_path), "--temperature", "0"))


@pytest.mark.slow
def test_checkpoint_of_another_arch_fails_with_one_line(tiny_imagefolder: Path, tmp_path: Path) -> None:
    other_arch = make_v1_checkpoint(tmp_path / "small.pth", arch="vit_small")
    proc = run_script("eval_knn.py", "--arch", "vit_tiny", "--patch_size", "4", "--img_size", "28",
                      "--use_cuda", "false", "--num_workers", "0", "--pretrained_weights", str(other_arch),
                      "--data_path", str(tiny_imagefolder))  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("eval_knn.py: error: --arch vit_tiny contradicts the checkpoint")
        and "pass --arch vit_small" in last
    )


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_default_workers_are_capped_on_a_small_machine(
    v1_checkpoint: Path, tiny_imagefolder: Path, tmp_path: Path
) -> None:
    """The README command keeps the default --num_workers 10; on a 1-core allotment the loaders use 1
    worker, say so once, and torch does not warn about too many workers."""
    one_core = {min(os.sched_getaffinity(0))}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "eval_knn.py", "--img_size", "28", "--nb_knn", "10", "--use_cuda", "false",
         "--pretrained_weights", str(v1_checkpoint), "--data_path", str(tiny_imagefolder), "--output_dir",
         str(tmp_path)],
        cwd=SIMDINO, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: os.sched_setaffinity(0, one_core),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert output.count("num_workers 10 capped at 1: the CPU cores available to this process") == 1
    assert "worker processes in total" not in output
    assert parse_results(proc.stdout)
