#!/usr/bin/env python
"""`make demo`: SimDINO on Fashion-MNIST on a laptop-class CPU, within a fixed wall-clock budget.

`python -m simdino.demo --seconds 540 --output_dir outputs/demo [--data_path DIR] [--threads N]`

1. trains a small ViT with SimDINO (v1) on the 60k Fashion-MNIST training images for `--seconds` of wall
   time, running `python simdino/main_dino.py ... --time_budget S` (the budget makes the cosine schedules
   end at it);
2. k-NN-classifies the 10k test images (weighted vote, k=20, T=0.07, and the other DINO ks) from
   frozen features of three models: the trained teacher, the same network at its random initialisation
   (same seed), and raw pixels;
3. prints the table and writes into `output_dir`: `results.json`, `loss_curve.png` (loss, compression,
   expansion, lr, wd over iterations) and `attention.png` (last-block CLS attention per head on a few
   test images), next to main_dino's own files (`checkpoint.pth`, `log.txt`, `training_metrics.json`).

The recipe, the machine settings, the k-NN harness and the figures live in the package `simdino.fmnist`
(which `experiments/fmnist.py` shares); this script is the command: flags, then the run in order.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from simdino.fmnist import adapt, data, figures, knn, machine, recipe, report
from simdinov2 import distributed, precision
from simdinov2.errors import UserError

logger = logging.getLogger("simdinov2")

# What a demo run writes into its output_dir (main_dino's files, then the demo's).
RUN_FILES = (
    "checkpoint.pth",
    "log.txt",
    "training_metrics.json",
    "args.log",
    "output.log",
    "results.json",
    *figures.FIGURES,
)


def clear_previous_run(output_dir: Path) -> None:
    """Every run starts from scratch (main_dino would otherwise resume a finished budget): the files of a
    previous run in output_dir are removed, nothing else."""
    previous = [output_dir / name for name in RUN_FILES if (output_dir / name).is_file()]
    if previous:
        print(f"removing the previous run's files in {output_dir}", flush=True)
        for path in previous:
            path.unlink()


def plan_for_machine(
    seconds: float,
    make_split: data.MakeSplit,
    threads: int | None,
    num_workers: int | None,
    variant: str | None,
    overrides: dict[str, Any],
) -> adapt.Plan:
    """Time this machine and choose the recipe variant, threads / loader workers and k-NN sizes (prints
    the machine and the one line of the choice). bf16 autocast only where the CPU computes bf16
    (emulated, it is several times slower than fp32); a `use_fp16` override decides instead. Layouts on
    every core and on one fewer are both timed, and the faster wins: the load average lags a minute
    behind (a job that just ended still counts), while the timing sees who shares the cores now."""
    cores, load = machine.available_cores(), (machine.load_average() or [0.0])[0]
    bf16 = bool(overrides.get("use_fp16", precision.cpu_has_bf16()))
    print(
        f"SimDINO demo on {machine.cpu_model()}: {cores} cores, load average {load:.1f}, "
        f"{'bf16' if bf16 else 'no bf16: fp32'}; timing a few steps of each recipe variant",
        flush=True,
    )
    plan = adapt.plan_run(
        seconds,
        make_split("TRAIN"),
        {**recipe.DEMO_RECIPE, **overrides},
        cores,
        bf16,
        threads,
        num_workers,
        variant,
    )
    print(plan.choice.reason(seconds) + f" [timing took {plan.probe_seconds:.0f} s]", flush=True)
    return plan


def evaluate_feature_sets(
    args: argparse.Namespace,
    output_dir: Path,
    make_split: data.MakeSplit,
    knn_sizes: tuple[int | None, int | None],
    num_workers: int,
) -> tuple[dict[str, report.KnnResult], torch.nn.Module, dict[str, Any]]:
    """k-NN of the trained teacher, its random init and raw pixels; returns ({key: result}, the teacher,
    the datasets: full train and test sets, k-NN bank and queries)."""
    transform = data.eval_transform(args.global_crops_size)
    sets = {"train": make_split("TRAIN", transform), "test": make_split("TEST", transform)}
    sets["knn_train"] = data.evaluation_subset(sets["train"], knn_sizes[0])
    sets["knn_test"] = data.evaluation_subset(sets["test"], knn_sizes[1])
    device = distributed.resolve_device(args.device)
    teacher = knn.trained_teacher(output_dir).to(device)
    models = {
        "teacher": teacher,
        "random_init": knn.random_init_backbone(args),
        "pixels": knn.pixel_features(),
    }
    results = {}
    for key, name in report.FEATURE_SETS:
        logger.info(
            f"k-NN evaluation: {name} ({len(sets['knn_train'])} train / {len(sets['knn_test'])} test images)"
        )
        results[key] = knn.knn_evaluate(
            models[key].to(device), sets["knn_train"], sets["knn_test"], num_workers=num_workers
        )
    return results, teacher, sets


def print_summary(
    results: dict[str, Any], reference: adapt.Reference | None, output_dir: Path, coeff: float
) -> None:
    print()
    print(report.summary_table(results, reference))
    note = report.subset_note(results)
    if note:
        print(note)
    gain = results["knn_top1"] - results["random_init_knn_top1"]
    print(
        f"\nSimDINO training moved the k-NN top-1 by {gain:+.2f} points over the same network at random init."
    )
    print(report.reading_guide(results["iterations"], coeff))
    print(
        f"recipe variant '{results['plan']['variant']}': trained {results['train_seconds']:.0f} s at "
        f"{results['train_seconds'] / max(results['iterations'], 1):.2f} s per step, {results['iterations']} iterations, "
        f"{results['images_seen']} images seen ({results['epochs_over_train_set']:.2f} passes over the "
        f"{results['train_images']} training images); k-NN k={knn.KNN_K}, T={knn.KNN_TEMPERATURE}, "
        f"{results['eval_seconds']:.0f} s; results in {output_dir}/results.json, {', '.join(figures.FIGURES)}; "
        f"{results['total_seconds']:.0f} s in all"
    )


def run_demo(
    seconds: float = recipe.DEFAULT_SECONDS,
    output_dir: str | Path = "outputs/demo",
    data_path: str | None = None,
    threads: int | None = None,
    num_workers: int | None = None,
    knn_train_images: int | None = None,
    knn_test_images: int | None = None,
    variant: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Time the machine and choose the recipe variant (`variant`: that one), train for `seconds`, evaluate
    the three feature sets, write results.json and the figures; returns the results dict. None picks what
    the timing chose (threads, workers, k-NN sizes); `overrides` are main_dino flags over the variant's."""
    times = {"started": time.time()}
    train_source, make_split, data_name = data.resolve_data(data_path)
    output_dir = Path(output_dir)
    clear_previous_run(output_dir)
    loads = {"before": machine.load_average()}
    plan = plan_for_machine(seconds, make_split, threads, num_workers, variant, overrides)
    layout, chosen = plan.choice.layout, plan.choice.variant
    knn_sizes = (knn_train_images, knn_test_images)
    if knn_sizes == (None, None):
        knn_sizes = knn.default_knn_images(seconds) if seconds < knn.SHORT_RUN_SECONDS else plan.knn_sizes
    torch.set_num_threads(layout.threads)
    flags = recipe.recipe_flags(
        seconds,
        output_dir,
        train_source,
        num_workers=layout.num_workers,
        knn_monitor_path=str(data.knn_monitor_root(data_path, output_dir)),  # the health panel's k-NN
        **{"use_fp16": layout.use_fp16, **chosen.overrides, **overrides},
    )
    print(
        f"training {flags['arch']}/{flags['patch_size']} ({flags['depth']} blocks) on {data_name} for {seconds:.0f} s, "
        "then k-NN on the test set",
        flush=True,
    )
    summary = recipe.train_for_budget(flags)
    args = summary["args"]  # the trainer's arguments: the recipe over main_dino's defaults
    times["train_done"], loads["end_of_training"] = time.time(), machine.load_average()
    results_by_set, teacher, sets = evaluate_feature_sets(
        args, output_dir, make_split, knn_sizes, layout.num_workers
    )
    times["eval_done"] = time.time()
    figures.save_figures(
        output_dir,
        teacher,
        sets["test"],
        f"SimDINO {args.arch}/{args.patch_size} on {data_name}, {seconds:.0f} s",
    )
    run = report.DemoRun(
        args=args,
        flags=flags,
        summary=summary,
        seconds=seconds,
        knn=results_by_set,
        data_name=data_name,
        images={key: len(sets[key]) for key in ("train", "test", "knn_train", "knn_test")},
        threads=layout.threads,
        num_workers=layout.num_workers,
        times=times,
        loads=loads,
        plan=adapt.plan_record(plan, seconds),
    )
    results = report.results_record(run, time.time())
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results, chosen.reference, output_dir, float(args.coeff))
    return results


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "python -m simdino.demo",
        description="Train SimDINO on Fashion-MNIST for a fixed wall-clock budget, then k-NN-evaluate it.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=recipe.DEFAULT_SECONDS,
        help=f"Wall-clock budget of the training loop (default {recipe.DEFAULT_SECONDS:.0f}); "
        "timing, start-up, evaluation and figures add about a minute.",
    )
    parser.add_argument("--output_dir", default="outputs/demo", help="Where the run and the results go.")
    parser.add_argument(
        "--data_path",
        default=None,
        help="ImageFolder root with train/ and val/ class folders (default: Fashion-MNIST "
        f"from the Debian package in {data.DEFAULT_FASHION_MNIST_ROOT}).",
    )
    parser.add_argument(
        "--variant",
        default="auto",
        choices=["auto", *(v.name for v in adapt.VARIANTS)],
        help="Recipe variant (default auto: the one predicted to learn most in the budget on this "
        "machine, from a few timed steps).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: timed against a loader worker on the free cores).",
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="Data-loading worker processes (default: 1 or 0, whichever timed faster).",
    )
    parser.add_argument(
        "--knn_train_images",
        type=int,
        default=None,
        help="k-NN bank: a random subset of this many training images (default: all where the "
        f"evaluation fits in about {adapt.EVAL_SECONDS:.0f} s, else fewer; 10000 when --seconds < "
        f"{knn.SHORT_RUN_SECONDS:.0f}).",
    )
    parser.add_argument(
        "--knn_test_images",
        type=int,
        default=None,
        help="k-NN queries: a random subset of this many test images (default: as the bank, "
        f"one query per 5 bank images; 2000 when --seconds < {knn.SHORT_RUN_SECONDS:.0f}).",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    if not args.seconds > 0:
        raise SystemExit(f"demo: error: --seconds must be > 0 (got {args.seconds})")
    try:
        return run_demo(
            args.seconds,
            args.output_dir,
            args.data_path,
            args.threads,
            args.num_workers,
            knn_train_images=args.knn_train_images,
            knn_test_images=args.knn_test_images,
            variant=None if args.variant == "auto" else args.variant,
        )
    except UserError as e:
        raise SystemExit(f"demo: error: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
