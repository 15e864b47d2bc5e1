"""What a demo run tells its user: the k-NN table, the reading guide, and the `results.json` record."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from simdino.fmnist.adapt import EVAL_SECONDS, Reference
from simdino.fmnist.knn import KNN_K, KNN_TEMPERATURE, headline_top1
from simdino.fmnist.machine import cpu_model, load_average
from simdino.fmnist.recipe import DEMO_RECIPE, recipe_command

# The three feature sets, in the order of the table: results.json key, printed name.
FEATURE_SETS = (
    ("teacher", "SimDINO teacher (trained)"),
    ("random_init", "same network, random init"),
    ("pixels", "raw pixels"),
)
TOP1_KEYS = {"teacher": "knn_top1", "random_init": "random_init_knn_top1", "pixels": "pixels_knn_top1"}

# Below this many iterations a demo is a smoke run: the measured gains over random init grew with the
# iterations a budget allowed (README, "The demo": +4.84 after 228, +5.97 after 387, +6.41 after 560).
SMOKE_RUN_ITERATIONS = 200

KnnResult = dict[int, tuple[float, float]]


@dataclass
class DemoRun:
    """Everything a demo run measured, from which `results_record` writes `results.json`.

    `args`: the trainer's arguments (the recipe over main_dino's defaults); `flags`: the command's;
    `summary`: the trainer's summary (iterations, images_seen, train_seconds); `knn`: {results key: k-NN
    result} in `FEATURE_SETS` order; `images`: the training set and the k-NN bank / query sizes;
    `times`: time.time() at start, end of training, end of evaluation; `loads`: load averages by moment."""

    args: argparse.Namespace
    flags: dict[str, Any]
    summary: dict[str, Any]
    seconds: float
    knn: dict[str, KnnResult]
    data_name: str
    images: dict[str, int]
    threads: int
    num_workers: int
    times: dict[str, float]
    loads: dict[str, list[float]] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)  # what the demo measured and chose (adapt.Plan)


def results_record(run: DemoRun, now: float) -> dict[str, Any]:
    """The `results.json` record of a demo run, `now` being time.time() at its end."""
    images_seen = int(run.summary["images_seen"])
    return dict(
        **{TOP1_KEYS[key]: headline_top1(run.knn[key]) for key, _ in FEATURE_SETS},
        knn_k=KNN_K,
        knn_temperature=KNN_TEMPERATURE,
        knn={
            key: {str(k): {"top1": v[0], "top5": v[1]} for k, v in result.items()}
            for key, result in run.knn.items()
        },
        train_seconds=run.summary["train_seconds"],
        time_budget_seconds=float(run.seconds),
        images_seen=images_seen,
        iterations=int(run.summary["iterations"]),
        epochs_over_train_set=images_seen / run.images["train"],
        eval_seconds=run.times["eval_done"] - run.times["train_done"],
        total_seconds=now - run.times["started"],
        data=run.data_name,
        train_images=run.images["train"],
        test_images=run.images["test"],
        knn_train_images=run.images["knn_train"],
        knn_test_images=run.images["knn_test"],
        recipe={
            k: list(v) if isinstance(v, tuple) else v
            for k, v in vars(run.args).items()
            if k in DEMO_RECIPE or k in run.flags
        },
        command=recipe_command(run.flags),
        plan=run.plan,
        threads=run.threads,
        num_workers=run.num_workers,
        machine={
            "cpu_count": os.cpu_count(),
            "cpu": cpu_model(),
            # os.getloadavg() (1, 5, 15 minutes) before training, at its end, and after the evaluation
            **{f"load_average_{moment}": load for moment, load in run.loads.items()},
            "load_average_after": load_average(),
            "torch": torch.__version__,
        },
    )


def summary_table(results: Mapping[str, Any], reference: Reference | None) -> str:
    """The printed table: k-NN top-1 of the three feature sets, the gain, what the run saw and what the
    evaluation used; beside it, the same recipe variant's run on the README's machine (`reference`)."""
    knn_sizes = f"{results['knn_train_images']} / {results['knn_test_images']}"
    rows = [(name, f"{results[TOP1_KEYS[key]]:.2f}%") for key, name in FEATURE_SETS]
    rows += [
        ("gain over random init", f"{results['knn_top1'] - results['random_init_knn_top1']:+.2f}"),
        ("iterations / images seen", f"{results['iterations']} / {results['images_seen']}"),
        ("k-NN bank / queries", knn_sizes),
    ]
    theirs: list[str] = ["not measured"] * len(rows)
    if reference is not None:
        theirs = [
            f"{reference.teacher:.2f}%",
            f"{reference.random_init:.2f}%",
            f"{reference.pixels:.2f}%",
            f"{reference.gain:+.2f}",
            f"{reference.iterations} / {reference.images_seen}",
            f"{reference.bank_images} / {reference.test_images}",
        ]
    width = max(len(name) for name, _ in rows)
    mine = max(len(value) for _, value in rows + [("", f"{KNN_K}-NN top-1")])
    lines = [
        f"{'features':<{width}}  {f'{KNN_K}-NN top-1':>{mine}}  reference run",
        f"{'-' * width}  {'-' * mine}  {'-' * 13}",
    ]
    lines += [
        f"{name:<{width}}  {value:>{mine}}  {ref:>13}"
        for (name, value), ref in zip(rows, theirs, strict=True)
    ]
    if reference is not None:
        lines.append(f"reference run: this recipe variant on {reference.machine} ({reference.source})")
    return "\n".join(lines)


def subset_note(results: Mapping[str, Any]) -> str | None:
    """The line that says when the k-NN evaluation used a subset of the images (slow machines)."""
    if (
        results["knn_train_images"] >= results["train_images"]
        and results["knn_test_images"] >= results["test_images"]
    ):
        return None
    return (
        f"k-NN on a random {results['knn_train_images']} of the {results['train_images']} training images and "
        f"{results['knn_test_images']} of the {results['test_images']} test images (unless given with "
        f"--knn_train_images / --knn_test_images: what this machine embeds in about {EVAL_SECONDS:.0f} s)"
    )


def reading_guide(iterations: int, coeff: float) -> str:
    """How to read the summary and loss_curve.png: which way each loss part is good, and what a run of
    this length can and cannot show."""
    lines = [
        "How to read this run:",
        f"  loss = -({coeff:g}*comp_loss + expa_loss) is minimised (lower is better); both parts are maximised:",
        "  comp_loss: cosine similarity of student and teacher views (agreement between crops, at most 1);",
        "  expa_loss: coding rate of the features (how spread out they are; higher = further from collapse).",
        "  A random ViT maps all images to nearly the same feature: the views agree (comp_loss high) and the",
        "  rate is low. Training spreads the features (expa_loss rises) at some cost in agreement (comp_loss",
        "  falls), and the loss falls with them (docs/results/demo_loss_curve.png, 540 s).",
    ]
    if iterations < SMOKE_RUN_ITERATIONS:
        lines += [
            f"  This was a smoke run ({iterations} iterations, under {SMOKE_RUN_ITERATIONS}): it shows that training,",
            "  checkpointing, k-NN evaluation and the figures work on this machine. It cannot show how good the",
            "  features get: over so few steps the loss parts can still move either way, and the k-NN difference",
            "  to random init says little. The gain grows with iterations (README: +4.84 points after 228, +6.41",
            "  after 560);",
            "  run `make demo` (540 s) for that.",
        ]
    return "\n".join(lines)
