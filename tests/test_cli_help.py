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
def test_help(cwd, argv, default, monkeypatch):
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
    if default is not None:
        assert default in " ".join(stdout.getvalue().split()), argv
