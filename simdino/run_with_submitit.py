#!/usr/bin/env python
"""Submitit launcher for SimDINO (v1) pre-training: `python run_with_submitit.py --nodes 2 --ngpus 8
--arch vit_base ... --data_path P` (from inside `simdino/`).

It only joins `main_dino.py`'s command line to the shared launcher flags of `simdinov2/run/submit.py`
(which owns submission, the distributed environment and requeue-on-preemption) and submits
`simdino.main_dino:main`. A requeued job resumes from `output_dir/checkpoint.pth`.
"""

from __future__ import annotations

import argparse

from simdino import main_dino
from simdinov2.run import submit


def get_args_parser() -> argparse.ArgumentParser:
    parser = submit.get_args_parser(
        description="Submitit launcher for SimDINO (v1) pre-training",
        parents=[main_dino.get_args_parser(add_help=False)],
        nodes=2,
        ngpus=8,
        timeout=2800,
    )
    # Empty: one folder per job under the shared folder (`.../%j`), as upstream.
    parser.set_defaults(output_dir="")
    return parser


def main(argv: list[str] | None = None):
    args = get_args_parser().parse_args(argv)
    try:
        return submit.submit_jobs("simdino.main_dino:main", args, name="simdino")
    except submit.LauncherError as e:
        raise SystemExit(f"run_with_submitit.py: error: {e}") from None


if __name__ == "__main__":
    main()
