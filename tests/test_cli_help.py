"""Every command-line program answers --help (self-documenting flags, no crash in the help text).

Run in this process as `python PROGRAM --help` would run it (runpy, `__main__`, the same argv): no new
interpreter per program. That the programs start as commands is shown by tests/test_readme_commands.py."""

import contextlib
import io
import runpy
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
def test_help(cwd, argv, monkeypatch):
    monkeypatch.chdir(ROOT / cwd)
    is_module = argv[0] == "-m"
    target = argv[1] if is_module else str(ROOT / cwd / argv[0])
    monkeypatch.setattr(sys, "argv", [target, "--help"])
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exit_info:
        if is_module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target, run_name="__main__")
    assert exit_info.value.code in (0, None), exit_info.value.code
    assert "usage:" in stdout.getvalue()
