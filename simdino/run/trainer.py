"""The v1 trainer (`simdino/main_dino.py`) run by other programs as a user runs it: a command line.

The demo (`python -m simdino.demo`) and the Fashion-MNIST rows (`python -m experiments.fmnist`) train
through here: their recipes are dicts of main_dino flags; `command_line` is the command a reader can
copy, `train` runs exactly that command (`python -m simdino.main_dino ...`, the caller's torch thread
count as OMP_NUM_THREADS) and `run_summary` reads what the run did back from the files main_dino writes
(`checkpoint.pth`, `training_metrics.json`). Nothing imports the script: its own parser checks the flags,
and its one-line error comes back as a `UserError`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from simdinov2.checkpoint import safe_torch_load
from simdinov2.errors import UserError

TRAINER_MODULE = "simdino.main_dino"
TRAINER_SCRIPT = "simdino/main_dino.py"  # how the commands shown to readers name it


def trainer_argv(flags: Mapping[str, Any], extra: Sequence[str] = ()) -> list[str]:
    """main_dino's argv for `flags` ({flag: value}; tuples and lists give several values), then `extra`
    (raw main_dino arguments, e.g. a user's overrides). A flag that `extra` sets is left to `extra`."""
    overridden = {arg[2:].split("=")[0].replace("-", "_") for arg in extra if arg.startswith("--")}
    argv: list[str] = []
    for key, value in flags.items():
        if key in overridden:
            continue
        values = value if isinstance(value, (tuple, list)) else [value]
        argv += [f"--{key}", *(str(v) for v in values)]
    return [*argv, *extra]


def command_line(flags: Mapping[str, Any], extra: Sequence[str] = ()) -> str:
    """The `python simdino/main_dino.py ...` command that `train(flags, extra)` runs."""
    return shlex.join(["python", TRAINER_SCRIPT, *trainer_argv(flags, extra)])


def train(flags: Mapping[str, Any], extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run main_dino with `flags` (+ `extra`) in a subprocess, its output on this console; returns
    `run_summary` of its `--output_dir`. A failed run raises `UserError` with the trainer's last line."""
    trainer = trainer_argv(flags, extra)
    argv = [sys.executable, "-m", TRAINER_MODULE, *trainer]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    last_line = ""
    with subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, bufsize=1) as process:
        assert process.stderr is not None
        for line in process.stderr:  # shown as it comes; the last line is the error of a failed run
            sys.stderr.write(line)
            last_line = line.strip() or last_line
    if process.returncode != 0:
        raise UserError(f"the v1 trainer stopped (exit status {process.returncode}): {last_line}")
    given = [i for i, arg in enumerate(trainer[:-1]) if arg == "--output_dir"]
    return run_summary(trainer[given[-1] + 1] if given else ".")


def run_summary(output_dir: str | os.PathLike) -> dict[str, Any]:
    """What a main_dino run in `output_dir` did (resumed parts included): `epochs`, `iterations`,
    `images_seen` (one process), `train_seconds` (NaN without a time budget) and `args` (the trainer's
    parsed arguments, as stored in `checkpoint.pth`)."""
    folder = Path(output_dir)
    checkpoint = safe_torch_load(folder / "checkpoint.pth")
    args = checkpoint["args"]
    args = args if isinstance(args, argparse.Namespace) else argparse.Namespace(**args)
    if "iterations" in checkpoint:  # a budgeted run counts its iterations
        iterations = int(checkpoint["iterations"])
    else:  # every epoch ran in full, and its last iteration is logged
        records = [
            json.loads(line) for line in (folder / "training_metrics.json").read_text().splitlines() if line
        ]
        iterations = int(records[-1]["iteration"]) + 1
    return {
        "epochs": int(checkpoint["epoch"]),
        "iterations": iterations,
        "images_seen": iterations * int(args.batch_size_per_gpu),
        "train_seconds": float(checkpoint.get("train_seconds", math.nan)),
        "args": args,
    }
