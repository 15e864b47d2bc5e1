#!/usr/bin/env python
"""Submitit launcher of the SimDINOv2 linear-probe evaluation (`simdinov2/eval/linear.py`): its flags plus
the launcher flags of `simdinov2/run/submit.py`, e.g. `python simdinov2/run/eval/linear.py --nodes 1
--config-file D/config.yaml --pretrained-weights W --output-dir O --train-dataset S --val-dataset S`."""

from __future__ import annotations

from simdinov2.run.submit import launch


def main(argv: list[str] | None = None):
    return launch(
        "simdinov2.eval.linear",
        "Submitit launcher for SimDINOv2 linear-probe evaluation",
        "simdinov2:linear",
        argv,
        required=("config_file", "pretrained_weights"),
    )


if __name__ == "__main__":
    main()
