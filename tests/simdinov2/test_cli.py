"""The shared command-line pieces: every program's output folder (`make_output_dir`) — an unusable one is
one line in each of the nine programs of both trees, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from simdino import eval_knn as v1_knn
from simdino import eval_linear as v1_linear
from simdino import main_dino, visualize_attention
from simdinov2.cli import make_output_dir
from simdinov2.errors import UserError
from simdinov2.eval import finetuning, knn, linear, log_regression
from simdinov2.train import train as v2_train

READ_ONLY = Path("/sys/simdinov2_test_output")  # sysfs: nobody, root included, may create a folder there


def _main_dino(out: str) -> None:
    main_dino.main(main_dino.get_args_parser().parse_args(["--output_dir", out, "--device", "cpu"]))


PROGRAMS = {
    "main_dino.py": _main_dino,
    "simdinov2/train/train.py": lambda out: v2_train.run_cli(["--output-dir", out, "train.device=cpu"]),
    "eval_knn.py": lambda out: v1_knn.cli(["--output_dir", out]),
    "eval_linear.py": lambda out: v1_linear.cli(["--output_dir", out]),
    "visualize_attention.py": lambda out: visualize_attention.main(["--output_dir", out, "--device", "cpu"]),
    "simdinov2/eval/knn.py": lambda out: knn.cli(["--output-dir", out]),
    "simdinov2/eval/linear.py": lambda out: linear.cli(["--output-dir", out]),
    "simdinov2/eval/log_regression.py": lambda out: log_regression.cli(["--output-dir", out]),
    "simdinov2/eval/finetuning.py": lambda out: finetuning.cli(["--output-dir", out]),
}


def _bad_folder(kind: str, tmp_path: Path) -> Path:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    if kind == "is_a_file":
        return a_file
    if kind == "under_a_file":
        return a_file / "out"
    try:
        READ_ONLY.mkdir()
    except OSError:
        return READ_ONLY
    READ_ONLY.rmdir()
    pytest.skip(f"{READ_ONLY.parent} is writable on this machine")


@pytest.mark.parametrize("kind", ["is_a_file", "under_a_file", "read_only"])
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_unusable_output_folder_is_one_line_in_every_program(program, kind, tmp_path):
    bad = _bad_folder(kind, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        PROGRAMS[program](str(bad))
    message = str(exit_info.value.code)
    assert "\n" not in message
    assert f"{bad} cannot be used as the output folder" in message, message
    reason = {
        "is_a_file": "a file is in the way",
        "under_a_file": "a file is in the way",
        "read_only": "no permission to write there",
    }[kind]
    assert reason in message


def test_make_output_dir_creates_nested_folders(tmp_path):
    folder = make_output_dir(tmp_path / "a" / "b")
    assert folder.is_dir() and not list(folder.iterdir())  # the probe file is gone
    assert make_output_dir(folder) == folder  # an existing folder is fine


def test_make_output_dir_names_the_flag(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(
        UserError, match=r"^--output-dir .*/f/x cannot be used as the output folder: a file is in the way"
    ):
        make_output_dir(tmp_path / "f" / "x", flag="--output-dir")
