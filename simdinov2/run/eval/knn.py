#!/usr/bin/env python
"""Submitit launcher of the SimDINOv2 k-NN evaluation (`simdinov2/eval/knn.py`): its flags plus
the launcher flags of `simdinov2/run/submit.py`, e.g. `python simdinov2/run/eval/knn.py --nodes 1
--config-file D/config.yaml --pretrained-weights W --output-dir O --train-dataset S --val-dataset S`."""

from __future__ import annotations

from simdinov2.run.submit import launch


def main(argv: list[str] | None = None):
    return launch(
        "simdinov2.eval.knn",
        "Submitit launcher for SimDINOv2 k-NN evaluation",
        "simdinov2:knn",
        argv,
        required=("config_file", "pretrained_weights"),
    )


if __name__ == "__main__":
    main()
