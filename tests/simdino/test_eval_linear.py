"""v1 `simdino/eval_linear.py`: one epoch from the command line, resume with more epochs, --evaluate, and
bad input, on a synthetic v1 checkpoint (vit_tiny/4, 28 px) and the tiny ImageFolder."""

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
MODEL_ARGS = ["--arch", "vit_tiny", "--patch_size", "4", "--img_size", "28", "--num_workers", "0",
              "--batch_size_per_gpu", "32", "--lr", "0.5"]  # fmt: skip


@pytest.fixture(scope="module")
def v1_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main_dino.py's layout, compiled student (`_orig_mod.`), teacher keyed backbone.* / head.*."""
    torch.manual_seed(0)
    backbone = build_vit("vit_tiny", patch_size=4, v1=True, img_size=28)
    teacher = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.randn(16, backbone.embed_dim)
    path = tmp_path_factory.mktemp("v1run") / "checkpoint.pth"
    torch.save(
        {
            "student": {f"_orig_mod.{k}": v for k, v in teacher.items()},
            "teacher": teacher,
            "optimizer": {},
            "epoch": 3,
            "args": argparse.Namespace(arch="vit_tiny", patch_size=4),
            "dino_loss": {},
        },
        path,
    )
    return path


def _args(*argv: str) -> argparse.Namespace:
    from simdino.eval_linear import get_args_parser

    return get_args_parser().parse_args(list(argv))


@pytest.mark.slow
def test_one_epoch_then_resume_then_evaluate(
    v1_checkpoint: Path, tiny_imagefolder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simdino.eval_linear import main

    out = tmp_path / "linear"
    common = [
        *MODEL_ARGS,
        "--pretrained_weights",
        str(v1_checkpoint),
        "--data_path",
        str(tiny_imagefolder),
        "--output_dir",
        str(out),
    ]
    # the command line, from inside simdino/
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "eval_linear.py", *common, "--epochs", "1"],
        cwd=REPO / "simdino",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Accuracy at epoch 0 of the network on the 30 test images" in proc.stdout
    # the run's size and how to shorten it, said at the start
    assert "linear probe: 1 epochs x 4 iterations" in proc.stdout + proc.stderr
    assert "shorten with fewer --epochs" in proc.stdout + proc.stderr
    # and, timed on its 2nd iteration, how long the rest takes
    assert re.search(r"linear probe: [0-9.]+ s per iteration, about 0:00:\d\d for the 2 iterations left",
                     proc.stdout + proc.stderr)  # fmt: skip
    checkpoint = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert set(checkpoint) == {"epoch", "state_dict", "optimizer", "scheduler", "best_acc"}
    assert checkpoint["epoch"] == 1
    # the dataset's 3 class folders (no --num_labels), 4 last CLS tokens, no avgpool
    assert checkpoint["state_dict"]["linear.weight"].shape == (3, 4 * 192)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # atomic writes leave no temp file
    first = json.loads((out / "log.txt").read_text())
    assert set(first) == {"train_loss", "train_lr", "epoch", "test_acc1", "test_acc5", "test_loss"}
    assert first["epoch"] == 0 and first["train_lr"] == pytest.approx(0.5 * 32 / 256)  # lr x batch / 256

    # rerun with --epochs 2: resumes after epoch 0, the cosine follows the new length (half-way at epoch 1)
    best = main(_args(*common, "--epochs", "2"))
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    assert lines[1]["train_lr"] == pytest.approx(0.5 * 32 / 256 * 0.5)
    assert not torch.equal(
        torch.load(out / "checkpoint.pth.tar", weights_only=True)["state_dict"]["linear.weight"],
        checkpoint["state_dict"]["linear.weight"],
    )
    assert best == pytest.approx(max(line["test_acc1"] for line in lines))
    captured = capsys.readouterr().out
    assert "Accuracy at epoch 1 of the network" in captured and "Accuracy at epoch 0" not in captured

    # --evaluate: the trained classifier of output_dir, same numbers as the last validation
    accuracy = main(_args(*common, "--evaluate"))
    assert accuracy == pytest.approx(lines[1]["test_acc1"])
    assert f"Accuracy of the network on the 30 test images: {accuracy:.1f}%" in capsys.readouterr().out


def test_bad_inputs(v1_checkpoint: Path, tiny_imagefolder: Path, tmp_path: Path) -> None:
    from simdino.eval_linear import main

    common = [*MODEL_ARGS, "--pretrained_weights", str(v1_checkpoint)]
    with pytest.raises(FileNotFoundError, match="--evaluate needs a trained classifier"):
        main(
            _args(*common, "--data_path", str(tiny_imagefolder), "--output_dir", str(tmp_path), "--evaluate")
        )
    with pytest.raises(FileNotFoundError, match="--data_path"):
        main(_args(*common, "--data_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path)))
    with pytest.raises(ValueError, match="--n_last_blocks 13 exceeds"):
        main(_args(*common, "--data_path", str(tiny_imagefolder), "--n_last_blocks", "13"))
    with pytest.raises(ValueError, match="--epochs"):
        main(_args(*common, "--data_path", str(tiny_imagefolder), "--epochs", "0"))
    # a classifier of another shape in output_dir: one line naming the flags to check
    torch.save(
        {
            "epoch": 1,
            "state_dict": {"module.linear.weight": torch.zeros(5, 192), "module.linear.bias": torch.zeros(5)},
            "optimizer": {},
            "scheduler": {},
            "best_acc": 0.0,
        },
        tmp_path / "checkpoint.pth.tar",
    )
    with pytest.raises(ValueError, match="--num_labels"):
        main(
            _args(*common, "--data_path", str(tiny_imagefolder), "--output_dir", str(tmp_path), "--evaluate")
        )


def test_avgpool_features_in_upstream_v1_order() -> None:
    """Upstream v1 stacks CLS and mean patch token as [B, D, 2] and flattens (channel-interleaved): a
    classifier it trained must see its inputs in that order here too."""
    from simdinov2.eval.linear import LinearClassifier

    torch.manual_seed(0)
    patches, cls = torch.randn(3, 5, 8), torch.randn(3, 8)
    upstream_features = torch.cat((cls.unsqueeze(-1), patches.mean(dim=1).unsqueeze(-1)), dim=-1).reshape(
        3, -1
    )
    classifier = LinearClassifier(16, 1, True, num_classes=4, dino_v1_order=True)
    expected = torch.nn.functional.linear(upstream_features, classifier.linear.weight, classifier.linear.bias)
    torch.testing.assert_close(classifier(((patches, cls),)), expected, rtol=0, atol=0)
    # v2 (DINOv2) keeps [CLS, mean patch] concatenated.
    v2 = LinearClassifier(16, 1, True, num_classes=4)
    v2.load_state_dict(classifier.state_dict())
    assert not torch.equal(v2(((patches, cls),)), expected)


@pytest.mark.slow
def test_num_labels_mismatch_is_one_line(v1_checkpoint: Path, tiny_imagefolder: Path, tmp_path: Path) -> None:
    """`--num_labels 2` on 3 class folders used to end in `IndexError: Target 2 is out of bounds`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "eval_linear.py", *MODEL_ARGS, "--num_labels", "2", "--epochs", "1",
                           "--pretrained_weights", str(v1_checkpoint), "--data_path", str(tiny_imagefolder),
                           "--output_dir", str(tmp_path / "out")],
                          cwd=REPO / "simdino", env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    assert "--num_labels 2 does not match the 3 class folders" in lines[0]
    assert "pass --num_labels 3" in lines[0]
    assert not (tmp_path / "out" / "checkpoint.pth.tar").exists()


@pytest.mark.slow
def test_num_labels_and_output_dir_defaults(
    v1_checkpoint: Path, tiny_imagefolder: Path, tmp_path: Path
) -> None:
    """No --num_labels: the dataset's class count; no --output_dir: eval_linear/ next to the checkpoint,
    not the current directory (the repository when run from simdino/)."""
    from simdino.eval_linear import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    weights = run_dir / "checkpoint.pth"
    weights.write_bytes(v1_checkpoint.read_bytes())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        main(
            _args(
                *MODEL_ARGS,
                "--pretrained_weights",
                str(weights),
                "--data_path",
                str(tiny_imagefolder),
                "--epochs",
                "1",
            )
        )
    finally:
        os.chdir(cwd)
    out = run_dir / "eval_linear"
    checkpoint = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["state_dict"]["linear.weight"].shape[0] == 3
    assert (out / "log.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written into the working directory
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pth", "eval_linear"]
