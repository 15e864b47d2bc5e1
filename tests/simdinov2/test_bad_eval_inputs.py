"""Ordinary mistakes given to the evaluation programs: one line each (before: tracebacks), and the lines
that used to mislead."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from simdino import eval_knn as v1_knn
from simdino import visualize_attention
from simdinov2.configs import default_config
from simdinov2.data.loaders import parse_dataset_str
from simdinov2.errors import UserError
from simdinov2.eval import knn
from simdinov2.eval.setup import eval_image_size


def _cut_features(tmp_path: Path) -> Path:
    folder = tmp_path / "features"
    folder.mkdir()
    for name, tensor in zip(
        v1_knn.FEATURE_FILES,
        (torch.randn(8, 4), torch.randn(4, 4), torch.zeros(8), torch.zeros(4)),
        strict=True,
    ):
        torch.save(tensor, folder / name)
    data = (folder / "trainfeat.pth").read_bytes()
    (folder / "trainfeat.pth").write_bytes(data[: len(data) // 2])
    return folder


CASES = {
    "eval_knn.py --batch_size_per_gpu 0": (
        lambda tmp: v1_knn.cli(["--batch_size_per_gpu", "0", "--output_dir", str(tmp / "o")]),
        "--batch_size_per_gpu 0 is invalid: it must be >= 1",
    ),
    "knn.py --batch-size 0": (
        lambda tmp: knn.cli(
            ["--batch-size", "0", "--pretrained-weights", str(tmp / "w.pth"), "--output-dir", str(tmp / "o")]
        ),
        "--batch-size 0 is invalid: it must be >= 1",
    ),
    "visualize_attention.py --image_size 0": (
        lambda tmp: visualize_attention.main(["--image_size", "0", "--output_dir", str(tmp / "o")]),
        "--image_size 0 is not a size",
    ),
    "visualize_attention.py --threshold 2": (  # before: accepted silently
        lambda tmp: visualize_attention.main(["--threshold", "2", "--output_dir", str(tmp / "o")]),
        "--threshold 2.0 is not a fraction of the attention mass: give a value in [0, 1]",
    ),
    "eval_knn.py --load_features (a cut file)": (
        lambda tmp: v1_knn.cli(["--load_features", str(_cut_features(tmp)), "--output_dir", str(tmp / "o")]),
        "trainfeat.pth is corrupt or cut short",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_eval_input_is_one_line(case, tmp_path):
    run, words = CASES[case]
    with pytest.raises(SystemExit) as exc:
        run(tmp_path)
    message = str(exc.value.code)
    assert exc.value.code not in (0, None) and "\n" not in message and words in message, message


def test_a_missing_dataset_folder_says_so_not_unknown_dataset():
    with pytest.raises(UserError) as exc:
        parse_dataset_str("/nonexistent")
    assert "dataset folder /nonexistent does not exist" in str(exc.value) and "unknown dataset" not in str(
        exc.value
    )


def test_evaluation_resolution_is_said_with_its_reason(caplog):
    """Before: a 28-px model evaluated at 224 px (43 s a batch) without a word."""
    with caplog.at_level(logging.INFO, logger="simdinov2"):
        assert eval_image_size(None, default_config()) == 224
    assert "evaluating at 224 px" in caplog.text and "no --config-file was given" in caplog.text
    assert "--image-size" in caplog.text
