#!/usr/bin/env python
"""One row of docs/RESULTS.md: train one method on Fashion-MNIST for a fixed wall-clock budget, then
evaluate its teacher with k-NN and a linear probe on frozen features.

    python -m experiments.fmnist --method simdino|dino|simdinov2|dinov2|random_init|pixels \
        --seconds 900 --out outputs/results/NAME [--seed 0] [-- TRAINER OVERRIDES]

Trainer overrides (after `--`) are `main_dino.py` flags for the v1 methods (`-- --eps 0.05
--batch_size_per_gpu 32`) and `key=value` config entries for the v2 methods (`-- dino.mcr.eps=0.5`).
Every method trains the same network on the same crops: `RESULTS_RECIPE` (the `make demo` recipe of the day
the table was measured: ViT-Ti, patch 7 on 28 px global crops, 4 local crops of 14 px, batch 128, bf16
autocast); only what defines a method differs (loss, prototypes, centering, teacher temperature, iBOT
masking, KoLeo).

What this module owns: the per-method recipes (`V1_METHODS`, `v2_recipe_overrides`), the evaluation protocol
(`evaluate`: k-NN top-1 at k=20, T=0.07 on the 10k test images with the 60k training images as memory, and
logistic regression on standardised frozen CLS features with C chosen on a 10% held-out part of the
training set), and `results.json` / the markdown table (`--table DIR`). Training is the command
`python simdino/main_dino.py ...` (v1, run by `simdino.run.trainer`) and `simdinov2/train/train.py` (v2); k-NN, features, logistic regression and checkpoints are the shared cores
of `simdinov2`; data, random init and raw-pixel features come from the demo's harness `simdino.fmnist`.

Both trees train for the wall-clock budget (`--time_budget` in v1, `train.time_budget` in v2), which
excludes start-up and evaluation. For comparisons, run the two members
of a pair at the same time, each pinned to its own core (`taskset -c 0 ...` / `taskset -c 1 ...`): both
then train under the same conditions (one thread each: the default is the number of cores the process may
use).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from simdino.fmnist import data, knn, machine, recipe
from simdino.run import trainer as v1_trainer
from simdinov2.checkpoint import build_backbone_from_checkpoint
from simdinov2.errors import UserError
from simdinov2.eval.features import extract_features, make_eval_loader
from simdinov2.eval.knn import feasible_ks, knn_classify
from simdinov2.eval.log_regression import accuracy, fit_logistic_regression, select_c
from simdinov2.logging import setup_logging
from simdinov2.train import train as v2_train
from simdinov2.train.health import effective_rank

logger = logging.getLogger("simdinov2")

KNN_KS = knn.KNN_KS
KNN_K = knn.KNN_K
KNN_TEMPERATURE = knn.KNN_TEMPERATURE
DEFAULT_C_VALUES = (0.01, 0.1, 1.0, 10.0)
V2_CONFIG_DIR = Path(__file__).resolve().parents[1] / "simdinov2" / "configs"

# The network, crops and optimisation of every row: `make demo`'s recipe as it stood when the rows of
# docs/RESULTS.md were measured (2026-11-26), frozen here so that the documented commands keep reproducing
# the table if the demo's recipe is retuned later. main_dino flags.
RESULTS_RECIPE: dict[str, Any] = {
    "arch": "vit_tiny",  # width 192, 12 blocks, 3 heads
    "patch_size": 7,  # 16 tokens per 28 px global crop
    "global_crops_size": 28,
    "local_crops_size": 14,
    "local_crops_number": 4,
    "global_crops_scale": (0.4, 1.0),
    "local_crops_scale": (0.1, 0.4),
    "batch_size_per_gpu": 128,
    "lr": 0.002,  # x batch / 256
    "min_lr": 1e-5,
    "warmup_epochs": 3,  # of 100 nominal epochs: the first 3% of the budget
    "epochs": 100,
    "momentum_teacher": 0.99,
    "weight_decay": 0.04,
    "weight_decay_end": 0.2,
    "drop_path_rate": 0.0,
    "hidden_dim": 1024,
    "z_dim": 256,
    "eps": 0.5,
    "coeff": 1.0,
    "use_fp16": True,  # bf16 autocast on CPU
    "compile": False,
    "clip_grad": 3.0,
    "saveckp_freq": 0,
}

# v1 methods: main_dino flags on top of the recipe. DINO keeps its own defaults for what SimDINO
# removes (65536 weight-normalised prototypes, centering, last layer frozen during the first 1% of the
# run) and DINO's tuned teacher temperature: 0.04 warmed up linearly to 0.07 over the first 30% of the
# run (30 of 100 epochs in the DINO paper; with a time budget the 100 nominal epochs span the budget).
V1_METHODS: dict[str, dict[str, Any]] = {
    "simdino": {"use_simdino": True},
    "dino": {
        "use_simdino": False,
        "warmup_teacher_temp": 0.04,
        "teacher_temp": 0.07,
        "warmup_teacher_temp_epochs": 30,
    },
}
V2_METHODS: dict[str, str] = {"simdinov2": "simdino_config.yaml", "dinov2": "dinov2_config.yaml"}
BASELINES = ("random_init", "pixels")
METHODS = (*V1_METHODS, *V2_METHODS, *BASELINES)


# ------------------------------------------------------------------------------------------------ recipes
def v2_recipe_overrides(train_source: str, seed: int, num_workers: int) -> list[str]:
    """Config entries that give the v2 trainer the demo recipe's network, crops and optimisation.

    LayerScale and registers are off (the v1 ViT); the 100 nominal epochs are laid over the budget
    by `train.time_budget`. The v1 learning rate is `lr · batch / 256`; v2 scales `base_lr · sqrt(batch / 1024)`:
    `base_lr` is set so that both trees train at the same learning rate. DINOv2's extras (layer-wise lr
    decay 0.9, patch-embedding lr × 0.2, iBOT masking, its loss choices) stay as the configs have them."""
    r = RESULTS_RECIPE
    batch = int(r["batch_size_per_gpu"])
    v1_lr = float(r["lr"]) * batch / 256.0
    base_lr = v1_lr / math.sqrt(batch / 1024.0)
    return [
        f"train.dataset_path={train_source}",
        f"train.seed={seed}",
        f"train.num_workers={num_workers}",
        f"train.batch_size_per_gpu={batch}",
        "train.print_freq=10",
        f"student.arch={r['arch']}",
        f"student.patch_size={r['patch_size']}",
        "student.num_register_tokens=0",
        "student.layerscale=0",
        "student.block_chunks=0",
        f"student.drop_path_rate={r['drop_path_rate']}",
        f"crops.global_crops_size={r['global_crops_size']}",
        f"crops.local_crops_size={r['local_crops_size']}",
        f"crops.local_crops_number={r['local_crops_number']}",
        "crops.global_crops_scale=[{},{}]".format(*r["global_crops_scale"]),
        "crops.local_crops_scale=[{},{}]".format(*r["local_crops_scale"]),
        f"dino.head_hidden_dim={r['hidden_dim']}",
        f"dino.head_bottleneck_dim={r['z_dim']}",
        f"ibot.head_hidden_dim={r['hidden_dim']}",
        f"ibot.head_bottleneck_dim={r['z_dim']}",
        f"teacher.momentum_teacher={r['momentum_teacher']}",
        "optim.epochs=100",
        f"optim.warmup_epochs={r['warmup_epochs']}",
        f"optim.base_lr={base_lr:.6g}",
        f"optim.min_lr={r['min_lr']}",
        f"optim.weight_decay={r['weight_decay']}",
        f"optim.weight_decay_end={r['weight_decay_end']}",
        f"optim.clip_grad={r['clip_grad']}",
        "compile=false",
    ]


def v1_flags(
    method: str, seconds: float, out: Path, train_source: str, seed: int, num_workers: int
) -> dict[str, Any]:
    """main_dino's flags of a row: `RESULTS_RECIPE` ⊕ method flags (user overrides come after them)."""
    flags = {**RESULTS_RECIPE, **V1_METHODS[method], "seed": seed}
    return recipe.recipe_flags(seconds, out, train_source, num_workers=num_workers, **flags)


def _backbone_flags(overrides: Sequence[str]) -> dict[str, Any]:
    """The flags among main_dino `overrides` that shape the backbone (the others leave a random init as it is)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, kind in (("arch", str), ("patch_size", int), ("depth", int), ("global_crops_size", int)):
        parser.add_argument(f"--{flag}", type=kind)
    known, _ = parser.parse_known_args(list(overrides))
    return {k: v for k, v in vars(known).items() if v is not None}


# ------------------------------------------------------------------------------------------------ training
def train_v1(flags: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """main_dino for `flags["time_budget"]` seconds, `overrides` (main_dino flags) last; returns its
    summary, the trainer command and the trainer's arguments (`trainer_args`)."""
    summary = v1_trainer.train(flags, overrides)
    return {
        "trainer_args": summary["args"],
        "train_seconds": summary["train_seconds"],
        "images_seen": int(summary["images_seen"]),
        "iterations": int(summary["iterations"]),
        "trainer_command": v1_trainer.command_line(flags, overrides),
    }


def _v2_namespace(config_file: str, output_dir: Path, opts: Sequence[str]) -> argparse.Namespace:

    return v2_train.get_args_parser().parse_args(
        ["--config-file", config_file, "--output-dir", str(output_dir), "--no-resume", *opts]
    )


def train_v2(method: str, seconds: float, out: Path, opts: Sequence[str]) -> dict[str, Any]:
    """Run the v2 trainer for `seconds` of training (`train.time_budget`: its schedules follow the elapsed
    fraction of the budget, so every warm-up keeps its fraction of the nominal epochs); returns the
    summary and the path of the final teacher snapshot."""
    config_file = str(V2_CONFIG_DIR / V2_METHODS[method])
    final_opts = [*opts, f"train.time_budget={float(seconds)}"]
    cfg = v2_train.setup(_v2_namespace(config_file, out, final_opts))
    data = v2_train.build_data(cfg)
    model = v2_train.build_model(cfg)
    result = v2_train.do_train(cfg, model, resume=False, data=data)
    last = int(result["iteration"])
    snapshot = out / "eval" / f"training_{last}" / "teacher_checkpoint.pth"
    return {
        "train_seconds": float(result["train_seconds"]),
        "images_seen": (last + 1) * int(cfg.train.batch_size_per_gpu),
        "iterations": last + 1,
        "teacher_snapshot": str(snapshot),
        "trainer_config": str(out / "config.yaml"),
        "trainer_overrides": final_opts,
    }


# ---------------------------------------------------------------------------------------------- evaluation
def extract_raw(
    model: nn.Module, dataset: Dataset, batch_size: int, num_workers: int
) -> tuple[Tensor, Tensor]:
    """Frozen features (not normalised) and labels of every image of `dataset`."""
    loader = make_eval_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    device = next(iter(model.parameters()), torch.empty(0)).device
    model.eval()
    # no_grad (inside extract_features), not inference_mode: the labels feed the logistic regression's autograd.
    return extract_features(model, loader, device=device, print_freq=40)


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    c_values: Sequence[float] = DEFAULT_C_VALUES,
    max_iter: int = 300,
    holdout_fraction: float = 0.1,
) -> dict[str, Any]:
    """Logistic regression on standardised features (training-set mean / std): C chosen on a held-out
    part of the training set, refit on all of it, top-1 / top-5 on the test set (percent)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    num_classes = int(max(train_y.max().item(), test_y.max().item())) + 1
    holdout = select_c(train_x, train_y, num_classes, list(c_values), max_iter, holdout_fraction)
    best_c = max(holdout, key=lambda c: (holdout[c], -c))  # ties: the stronger regularisation
    weight, bias = fit_logistic_regression(train_x, train_y, num_classes, best_c, max_iter)
    top1, top5 = accuracy(test_x, test_y, weight, bias)
    return {
        "top1": top1,
        "top5": top5,
        "best_C": best_c,
        "holdout_top1": {str(c): s for c, s in holdout.items()},
    }


def evaluate(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    batch_size: int = 500,
    num_workers: int = 0,
    c_values: Sequence[float] = DEFAULT_C_VALUES,
    max_iter: int = 300,
) -> dict[str, Any]:
    """k-NN (every k of DINO, T=0.07, on L2-normalised features) and the linear probe of `model`'s
    frozen features, plus the effective rank of the test features."""
    start = time.perf_counter()
    train_x, train_y = extract_raw(model, train_set, batch_size, num_workers)
    test_x, test_y = extract_raw(model, test_set, batch_size, num_workers)
    neighbours = knn_classify(
        F.normalize(train_x, dim=1),
        train_y,
        F.normalize(test_x, dim=1),
        test_y,
        feasible_ks(KNN_KS, train_x.shape[0]),
        KNN_TEMPERATURE,
    )
    linear = linear_probe(train_x, train_y, test_x, test_y, c_values, max_iter)
    headline_k = KNN_K if KNN_K in neighbours else max(neighbours)
    return {
        "knn_k": headline_k,
        "knn_top1": neighbours[headline_k][0],
        "knn": {str(k): {"top1": v[0], "top5": v[1]} for k, v in neighbours.items()},
        "linear_top1": linear["top1"],
        "linear": linear,
        "feature_dim": int(train_x.shape[1]),
        "effective_rank": effective_rank(test_x, centered=True),
        "eval_seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------- the run
def _last_json_line(path: Path) -> dict[str, Any] | None:
    """The last record of a JSON-lines log (main_dino's log.txt, the v2 training_metrics.json)."""
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "python -m experiments.fmnist",
        description="Train one method on Fashion-MNIST for a wall budget, then k-NN / linear-probe its teacher "
        "(one row of docs/RESULTS.md). Trainer overrides go after '--'.",
    )
    parser.add_argument("--method", choices=METHODS, help="what to train (random_init / pixels: no training)")
    parser.add_argument(
        "--seconds", type=float, default=900.0, help="wall-clock training budget (default 900)"
    )
    parser.add_argument("--out", type=Path, help="output folder of the run (must not hold a run already)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data_path",
        default=None,
        help="ImageFolder root with train/ and val/ (default: Fashion-MNIST from the Debian package)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: cores this process may use)"
    )
    parser.add_argument("--num_workers", type=int, default=0, help="data-loading workers for training")
    parser.add_argument(
        "--knn_train_images", type=int, default=None, help="evaluation memory: random subset size"
    )
    parser.add_argument(
        "--knn_test_images", type=int, default=None, help="evaluation queries: random subset size"
    )
    parser.add_argument(
        "--c_values",
        type=float,
        nargs="+",
        default=list(DEFAULT_C_VALUES),
        help="logistic-regression grid of inverse regularisation strengths",
    )
    parser.add_argument(
        "--max_iter", type=int, default=300, help="L-BFGS iterations per logistic-regression fit"
    )
    parser.add_argument(
        "--table",
        type=Path,
        default=None,
        metavar="DIR",
        help="print the markdown table of every DIR/*/results.json and exit",
    )
    return parser


def run(args: argparse.Namespace, overrides: Sequence[str], argv: Sequence[str]) -> dict[str, Any]:
    """Train (unless a baseline), evaluate, write `args.out/results.json`; returns the record."""
    if args.method is None or args.out is None:
        raise UserError("--method and --out are required (or --table DIR)")
    if args.method == "pixels" and overrides:
        raise UserError("pixels takes no trainer overrides")
    if not args.seconds > 0 and args.method not in BASELINES:
        raise UserError(f"--seconds must be > 0 (got {args.seconds})")
    out = Path(args.out)
    if (out / "results.json").exists() or (out / "checkpoint.pth").exists() or (out / "ckpt").exists():
        raise UserError(f"{out} already holds a run: pass another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)

    setup_logging(out)  # progress on the console and in out/output.log (the trainers log there too)
    threads = args.threads or machine.default_threads()
    torch.set_num_threads(threads)
    started = datetime.datetime.now(datetime.UTC)
    load_before = machine.load_average()
    train_source, make_split, data_name = data.resolve_data(args.data_path)

    record: dict[str, Any] = {"method": args.method, "name": out.name, "seed": args.seed}
    model: nn.Module
    if args.method in V1_METHODS or args.method == "random_init":
        v1 = v1_flags(
            args.method if args.method in V1_METHODS else "simdino",
            args.seconds,
            out,
            train_source,
            args.seed,
            args.num_workers,
        )
        if args.method == "random_init":
            v1.update(_backbone_flags(overrides))
            model = knn.random_init_backbone(v1)
            eval_size = int(v1["global_crops_size"])
        else:
            trained = train_v1(v1, overrides)
            eval_size = int(trained.pop("trainer_args").global_crops_size)
            record.update(trained, time_budget_seconds=float(args.seconds), tree="v1")
            record["final_train_stats"] = _last_json_line(out / "log.txt")
            model = knn.trained_teacher(out)
    elif args.method in V2_METHODS:
        opts = [*v2_recipe_overrides(train_source, args.seed, args.num_workers), *overrides]
        summary = train_v2(args.method, args.seconds, out, opts)
        record.update(summary, time_budget_seconds=float(args.seconds), tree="v2")
        record["final_train_stats"] = _last_json_line(out / "training_metrics.json")

        model = build_backbone_from_checkpoint(summary["teacher_snapshot"], "teacher", verbose=False)
        eval_size = int(RESULTS_RECIPE["global_crops_size"])
    else:
        model = knn.pixel_features()
        eval_size = int(RESULTS_RECIPE["global_crops_size"])

    full_train_set = make_split("TRAIN", data.eval_transform(eval_size))
    if record.get("images_seen") is not None:
        record["epochs_over_train_set"] = record["images_seen"] / len(full_train_set)
    train_set = data.evaluation_subset(full_train_set, args.knn_train_images)
    test_set = data.evaluation_subset(
        make_split("TEST", data.eval_transform(eval_size)), args.knn_test_images
    )
    logger.info("evaluating %s: %d train / %d test images", args.method, len(train_set), len(test_set))
    record.update(evaluate(model.eval(), train_set, test_set, c_values=args.c_values, max_iter=args.max_iter))
    record.update(
        data=data_name,
        knn_train_images=len(train_set),
        knn_test_images=len(test_set),
        knn_temperature=KNN_TEMPERATURE,
        overrides=list(overrides),
        command=" ".join(["python -m experiments.fmnist", *(shlex.quote(a) for a in argv)]),
        date=started.isoformat(timespec="seconds"),
        machine={
            "cpu": machine.cpu_model(),
            "cpu_count": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "threads": threads,
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": machine.load_average(),
        },
    )
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info(
        "%s: %d-NN top-1 %.2f%%, linear top-1 %.2f%% -> %s",
        args.method,
        record["knn_k"],
        record["knn_top1"],
        record["linear_top1"],
        out / "results.json",
    )
    return record


# ------------------------------------------------------------------------------------------------ table
def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown_table(results_dir: str | Path) -> str:
    """Markdown table (one row per `results.json` under `results_dir`, oldest first) and the commands."""
    records = []
    for path in sorted(Path(results_dir).glob("*/results.json")):
        records.append(json.loads(path.read_text()))
    if not records:
        raise UserError(f"no */results.json under {results_dir}")
    records.sort(key=lambda r: r.get("date", ""))
    lines = [
        "| row | method | seed | budget (s) | trained (s) | images seen | k-NN top-1 @20 | linear top-1 | eff. rank "
        "| load (1 min, start → end) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        load = [r["machine"].get(f"load_average_{when}") or [None] for when in ("before", "after")]
        lines.append(
            f"| {r['name']} | {r['method']} | {r['seed']} | {_fmt(r.get('time_budget_seconds'), '.0f')} | "
            f"{_fmt(r.get('train_seconds'), '.0f')} | {_fmt(r.get('images_seen'), ',')} | {r['knn_top1']:.2f} | "
            f"{r['linear_top1']:.2f} | {r['effective_rank']:.1f} | {_fmt(load[0][0], '.1f')} → {_fmt(load[1][0], '.1f')} |"
        )
    lines.append("")
    lines += [f"- `{r['name']}`: `{r['command']}`" for r in records]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | str:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = get_args_parser().parse_args(own)
    try:
        if args.table is not None:
            table = markdown_table(args.table)
            print(table)
            return table
        return run(args, overrides, argv)
    except UserError as e:
        raise SystemExit(f"fmnist: error: {e}") from None


if __name__ == "__main__":
    main()
