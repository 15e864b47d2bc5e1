#!/usr/bin/env python
"""The measurements behind the effective-rank collapse threshold and the reduce_cov advice (docs/RESULTS.md).

    python -m experiments.health collapse --seconds 90 --out outputs/health
    python -m experiments.health reduce_cov --seconds 90 --out outputs/health

`collapse`: the `make demo` recipe made lighter (`LIGHT`; v1 SimDINO, ViT-Ti on Fashion-MNIST) for a short budget, normally and
made to collapse: `--eps 1e6` removes the expansion term in effect (with L2-normalised features the coding
rate is then its first-order term, a constant, so nothing pushes the features apart). The teacher's effective
rank at every logged iteration and the k-NN monitor's top-1 at the end are read back from the runs.

`reduce_cov`: 2 CPU processes (torchrun, gloo) with a small per-process batch (16 < z_dim 256), equal time
budgets, `--reduce_cov 0` against `1`; the k-NN monitor's top-1 at the end.

The k-NN monitor set is a small labeled Fashion-MNIST export (100 train / 50 test images per class) in
`OUT/knn_set`. Prints a markdown table and writes `OUT/<experiment>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import format_table
from simdino.fmnist.recipe import recipe_flags
from simdino.run import trainer as v1_trainer
from simdinov2.data.datasets import export_fashion_mnist_imagefolder

# experiment -> [(row name, run folder, main_dino flags over the demo recipe)]
EXPERIMENTS = {
    "collapse": [
        ("normal recipe", "normal", {}),
        ("no expansion term (--eps 1e6)", "no_expansion", {"eps": 1e6}),
    ],
    "reduce_cov": [
        ("--reduce_cov 0", "reduce_cov0", {"reduce_cov": 0}),
        ("--reduce_cov 1", "reduce_cov1", {"reduce_cov": 1}),
    ],
}
SMALL_BATCH = 16
# The demo recipe made lighter so that a run of a minute or two does a few hundred iterations on a shared
# 2-core machine: 2 blocks, batch 64, 2 local crops, a 512-128 head, fp32, one thread.
LIGHT = {
    "depth": 2,
    "batch_size_per_gpu": 64,
    "local_crops_number": 2,
    "hidden_dim": 512,
    "z_dim": 128,
    "use_fp16": False,
}


def knn_monitor_set(root: Path) -> Path:
    """The k-NN monitor's labeled set: 100 training and 50 test Fashion-MNIST images per class."""
    for split, per_class in (("TRAIN", 100), ("TEST", 50)):
        export_fashion_mnist_imagefolder(root, split, limit_per_class=per_class)
    return root


def run(flags: dict[str, Any], processes: int) -> None:
    if processes == 1:
        v1_trainer.train(flags)
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        "-m",
        v1_trainer.TRAINER_MODULE,
        *v1_trainer.trainer_argv(flags),
    ]
    subprocess.run(cmd, env=env, check=True)


def summarize(output_dir: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (output_dir / "training_metrics.json").read_text().splitlines()]
    ranks = [r for r in rows if "effective_rank" in r]
    knn = [r["knn_monitor_top1"] for r in rows if "knn_monitor_top1" in r]
    return {
        "iterations": ranks[-1]["iteration"] + 1,
        "rank first": ranks[0]["effective_rank"],
        "rank min": min(r["effective_rank"] for r in ranks),
        "rank last": ranks[-1]["effective_rank"],
        "head rank last": ranks[-1].get("effective_rank_head"),
        "expa_loss last": ranks[-1].get("expa_loss"),
        "comp_loss last": ranks[-1].get("comp_loss"),
        "k-NN top-1 (%)": knn[-1] if knn else None,
        "rank series": [
            (r["iteration"], round(r["effective_rank"], 2), round(r.get("effective_rank_head", 0.0), 2))
            for r in ranks
        ],
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--seconds", type=float, default=90.0, help="training budget of each run")
    parser.add_argument("--out", default="outputs/health")
    parser.add_argument(
        "--only", default=None, help="run only the row of this run folder (e.g. no_expansion)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(1)  # the trainer gets this process's thread count
    monitor_root = knn_monitor_set(out / "knn_set")
    processes = 2 if args.experiment == "reduce_cov" else 1
    table = []
    for name, folder, overrides in EXPERIMENTS[args.experiment]:
        if args.only and folder != args.only:
            continue
        run_dir = out / args.experiment / folder
        extra = {**LIGHT, "batch_size_per_gpu": SMALL_BATCH} if processes > 1 else LIGHT
        flags = recipe_flags(
            args.seconds,
            run_dir,
            "FashionMNIST:split=TRAIN",
            num_workers=1,
            knn_monitor_path=str(monitor_root),
            **{**extra, **overrides},
        )
        run(flags, processes)
        table.append(
            {
                "run": name,
                "processes x batch": f"{processes} x {flags['batch_size_per_gpu']}",
                "seconds": args.seconds,
                **summarize(run_dir),
            }
        )
    print(format_table([{k: v for k, v in row.items() if k != "rank series"} for row in table]))
    (out / f"{args.experiment}{'_' + args.only if args.only else ''}.json").write_text(
        json.dumps(table, indent=2) + "\n"
    )
    return table


if __name__ == "__main__":
    main()
