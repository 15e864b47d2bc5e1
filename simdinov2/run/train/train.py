#!/usr/bin/env python
"""Submitit launcher of SimDINOv2 training (`simdinov2/train/train.py`), as in the README:
`python simdinov2/run/train/train.py --nodes 1 --config-file simdinov2/configs/simdino_config.yaml
--output-dir D train.dataset_path=...`. Trainer flags and `key=value` overrides pass through; the
launcher flags come from `simdinov2/run/submit.py`. A requeued job resumes from its checkpoints."""

from __future__ import annotations

from simdinov2.run.submit import launch


def main(argv: list[str] | None = None):
    return launch(
        "simdinov2.train.train", "Submitit launcher for SimDINOv2 training", "simdinov2:train", argv
    )


if __name__ == "__main__":
    main()
