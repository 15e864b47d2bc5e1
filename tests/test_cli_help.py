"""Every command-line program answers --help (self-documenting flags, no crash in the help text)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROGRAMS = [
    ("simdino", ["main_dino.py"]),
    ("simdino", ["eval_knn.py"]),
    ("simdino", ["eval_linear.py"]),
    ("simdino", ["visualize_attention.py"]),
    ("simdino", ["video_generation.py"]),
    ("simdino", ["run_with_submitit.py"]),
    (".", ["prepare.py"]),
    (".", ["simdinov2/train/train.py"]),
    (".", ["simdinov2/eval/knn.py"]),
    (".", ["simdinov2/eval/linear.py"]),
    (".", ["simdinov2/eval/log_regression.py"]),
    (".", ["simdinov2/eval/finetuning.py"]),
    (".", ["simdinov2/run/train/train.py"]),
    (".", ["simdinov2/run/eval/knn.py"]),
    (".", ["simdinov2/run/eval/linear.py"]),
    (".", ["simdinov2/run/eval/log_regression.py"]),
    (".", ["simdinov2/run/eval/finetuning.py"]),
    (".", ["-m", "simdinov2.export"]),
    (".", ["-m", "simdinov2.tools.plot_log"]),
    (".", ["-m", "simdinov2.tools.pca_features"]),
]


@pytest.mark.parametrize("cwd,argv", PROGRAMS, ids=[" ".join(a) for _, a in PROGRAMS])
def test_help(cwd, argv):
    proc = subprocess.run(
        [sys.executable, *argv, "--help"], cwd=ROOT / cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
