"""Every command-line program answers --help (self-documenting flags, no crash in the help text)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (cwd, argv, a default the help must show: upstream's values stay the defaults and --help says them)
PROGRAMS = [
    ("simdino", ["main_dino.py"], "(default: 100)"),  # --epochs
    ("simdino", ["eval_knn.py"], "(default: 0.07)"),  # --temperature
    ("simdino", ["eval_linear.py"], "(default: 100)"),  # --epochs
    ("simdino", ["visualize_attention.py"], "(default: auto)"),  # --device
    ("simdino", ["video_generation.py"], "(default: 30.0)"),  # --fps
    ("simdino", ["run_with_submitit.py"], "(default: 2800)"),  # --timeout
    (".", ["prepare.py"], None),  # two required paths, no defaults
    (".", ["simdinov2/train/train.py"], None),  # defaults live in the config files
    (".", ["simdinov2/eval/knn.py"], "(default: teacher)"),  # --checkpoint-key
    (".", ["simdinov2/eval/linear.py"], "(default: 1250)"),  # --epoch-length
    (".", ["simdinov2/eval/log_regression.py"], "(default: teacher)"),
    (".", ["simdinov2/eval/finetuning.py"], "(default: 0.8)"),  # --mixup
    (".", ["simdinov2/run/train/train.py"], "(default: 10)"),  # --cpus_per_task
    (".", ["simdinov2/run/eval/knn.py"], "(default: teacher)"),
    (".", ["simdinov2/run/eval/linear.py"], "(default: 1250)"),
    (".", ["simdinov2/run/eval/log_regression.py"], "(default: teacher)"),
    (".", ["simdinov2/run/eval/finetuning.py"], "(default: 0.8)"),
    (".", ["-m", "simdinov2.export"], None),
    (".", ["-m", "simdinov2.tools.plot_log"], None),
    (".", ["-m", "simdinov2.tools.pca_features"], "(default: auto)"),  # --device
]


@pytest.mark.parametrize("cwd,argv,default", PROGRAMS, ids=[" ".join(a) for _, a, _ in PROGRAMS])
def test_help(cwd, argv, default):
    proc = subprocess.run(
        [sys.executable, *argv, "--help"], cwd=ROOT / cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
    if default is not None:
        assert default in " ".join(proc.stdout.split()), argv
