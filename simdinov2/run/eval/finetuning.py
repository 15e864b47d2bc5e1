#!/usr/bin/env python
"""Submitit launcher of the SimDINOv2 fine-tuning evaluation (`simdinov2/eval/finetuning.py`): its flags plus
the launcher flags of `simdinov2/run/submit.py`, e.g. `python simdinov2/run/eval/finetuning.py --nodes 1
--config-file D/config.yaml --pretrained-weights W --output-dir O --train-dataset S --val-dataset S`. A
requeued job resumes from `O/finetuning_checkpoint.pth`."""

from __future__ import annotations

from simdinov2.run.submit import launch


def main(argv: list[str] | None = None):
    return launch(
        "simdinov2.eval.finetuning",
        "Submitit launcher for SimDINOv2 fine-tuning evaluation",
        "simdinov2:finetuning",
        argv,
        required=("pretrained_weights",),
    )


if __name__ == "__main__":
    main()
