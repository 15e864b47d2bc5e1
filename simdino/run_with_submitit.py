#!/usr/bin/env python
"""Submitit launcher for SimDINO (v1) pre-training: `python run_with_submitit.py --nodes 2 --ngpus 8
--arch vit_base ... --data_path P` (from inside `simdino/`).

The launcher flags are those of `simdinov2/run/submit.py` (which owns submission, the distributed
environment and requeue-on-preemption) plus `--output_dir`; every other flag goes unchanged to
`main_dino.py`, which each task of the job runs as `python -m simdino.main_dino ... --output_dir <job
folder>` would (`python main_dino.py --help` lists them). A requeued job resumes from
`output_dir/checkpoint.pth`.
"""

from __future__ import annotations

import argparse

from simdinov2.run import submit

TRAINER = "simdino.main_dino"


def get_args_parser() -> argparse.ArgumentParser:
    parser = submit.get_args_parser(
        description="Submitit launcher for SimDINO (v1) pre-training. Flags other than the launcher's go to "
        "main_dino.py (see `python main_dino.py --help`).",
        nodes=2,
        ngpus=8,
        timeout=2800,
    )
    parser.allow_abbrev = False  # a prefix of a launcher flag may be a trainer flag
    # Empty: one folder per job under the shared folder (`.../%j`), as upstream.
    parser.add_argument(
        "--output_dir",
        default="",
        type=str,
        help="Folder of the job's logs, checkpoints and results (%%j: the job id; default: "
        "one folder per job under /checkpoint/$USER/experiments or ./outputs/submitit)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Launcher flags; the trainer's flags are kept, in order, in `script_argv`."""
    args, script_argv = get_args_parser().parse_known_args(argv)
    args.script_argv = script_argv
    return args


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    try:
        return submit.submit_jobs(TRAINER, args, name="simdino", task_type=submit.ScriptTask)
    except submit.LauncherError as e:
        raise SystemExit(f"run_with_submitit.py: error: {e}") from None


if __name__ == "__main__":
    main()
