"""Multinomial logistic regression on frozen features (v2 CLI), without cuML.

DINOv2's protocol with its GPU dependency removed: extract the final-norm CLS features of the training
and validation sets once (`simdinov2.eval.features`), choose the inverse regularisation strength `C`
on a held-out part of the training set, refit on the whole training set with the chosen `C`, report
top-1 / top-5 on the validation set. The solver is full-batch L-BFGS in torch (on the accelerator when
there is one) on scikit-learn's objective, `C·Σᵢ CE(W xᵢ + b, yᵢ) + ½‖W‖²` (bias not penalised),
divided by `C·n` so the loss scale does not depend on the data size. The `C` grid is split over the
processes; every process then refits the winner, so nobody idles at a barrier.

As upstream SimDINOv2's script (its reported numbers come from it): images resized to the crop size
(224, bicubic) then center-cropped (no 256 → 224 resize), C = 10^linspace(−6, 5, 45), and the fit in
float64 with tolerance 1e-12.

CLI: `python simdinov2/eval/log_regression.py --config-file D/config.yaml --pretrained-weights W
--output-dir R --train-dataset S --val-dataset S [--c-values ...] [--max-train-iters 1000]`; appends
one JSON line to `R/results_eval_log_regression.json`. `--test-datasets A B ...` (with `--val-metric-type`,
`--test-metric-types` and class-mapping files, `simdinov2.eval.metrics`) adds every set's result to the
line's `eval_sets`: {dataset string: {metric type: result}}, the validation set first.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from simdinov2 import distributed
from simdinov2.cli import make_output_dir
from simdinov2.data import make_classification_eval_transform, make_dataset
from simdinov2.errors import UserError
from simdinov2.eval import setup as eval_setup
from simdinov2.eval.features import extract_features, make_eval_loader
from simdinov2.eval.metrics import (
    ClassificationCounts,
    EvalSet,
    add_eval_set_args,
    load_eval_sets,
    map_logits,
    num_dataset_classes,
    set_results,
)
from simdinov2.logging import append_json_lines

logger = logging.getLogger("simdinov2")

DEFAULT_C_VALUES = [float(10.0**p) for p in torch.linspace(-6, 5, 45, dtype=torch.float64)]
FIT_DTYPE = torch.float64
FIT_TOLERANCE = 1e-12


def fit_logistic_regression(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    C: float,
    max_iter: int = 1000,
    tolerance: float = FIT_TOLERANCE,
    dtype: torch.dtype = FIT_DTYPE,
) -> tuple[Tensor, Tensor]:
    """(weight [num_classes, D], bias [num_classes]) minimising mean CE + ‖W‖² / (2·C·n) with L-BFGS, in
    `dtype` (float64 by default, as upstream)."""
    if C <= 0:
        raise ValueError(f"C must be > 0 (got {C})")
    n, dim = features.shape
    features = features.to(dtype)
    labels = labels.to(features.device, torch.long)
    weight = torch.zeros((num_classes, dim), device=features.device, dtype=dtype, requires_grad=True)
    bias = torch.zeros((num_classes,), device=features.device, dtype=dtype, requires_grad=True)
    penalty = 1.0 / (2.0 * C * n)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=tolerance * 1e-2,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(F.linear(features, weight, bias), labels) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


@torch.no_grad()
def accuracy(
    features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, chunk: int = 65536
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of the linear model."""
    hits1 = hits5 = 0
    for start in range(0, features.shape[0], chunk):
        logits = F.linear(features[start : start + chunk].to(weight.device, weight.dtype), weight, bias)
        targets = labels[start : start + chunk].to(weight.device)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
        hits1 += int(top[:, :1].any(dim=1).sum().item())
        hits5 += int(top.any(dim=1).sum().item())
    n = max(features.shape[0], 1)
    return 100.0 * hits1 / n, 100.0 * hits5 / n


def set_result(
    features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, eval_set: EvalSet, chunk: int = 65536
) -> dict[str, Any]:
    """The linear model's result on one evaluation set (all its features on this process) under the set's
    metric type and class mapping."""
    counts = ClassificationCounts(eval_set.num_scored_classes or weight.shape[0], weight.device)
    for start in range(0, features.shape[0], chunk):
        logits = F.linear(features[start : start + chunk].to(weight.device, weight.dtype), weight, bias)
        counts.add_logits(map_logits(logits, eval_set.class_mapping), labels[start : start + chunk])
    return counts.result(eval_set.metric_type)


def holdout_split(num_samples: int, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(fit indices, held-out indices), a seeded random split identical on every rank."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--holdout-fraction must lie in (0, 1) (got {fraction})")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    n_holdout = max(1, int(round(num_samples * fraction)))
    if n_holdout >= num_samples:
        raise UserError(f"the training set ({num_samples} images) is too small to hold out a validation part")
    return order[n_holdout:], order[:n_holdout]


def select_c(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    c_values: Sequence[float],
    max_iter: int,
    fraction: float,
) -> dict[float, float]:
    """Held-out top-1 for every C; the grid is split over processes and the scores summed."""
    fit_idx, holdout_idx = holdout_split(features.shape[0], fraction)
    fit_idx, holdout_idx = fit_idx.to(features.device), holdout_idx.to(features.device)
    world, rank = distributed.get_world_size(), distributed.get_rank()
    scores = torch.zeros(len(c_values), dtype=torch.float64)
    for i, c in enumerate(c_values):
        if i % world != rank:
            continue
        weight, bias = fit_logistic_regression(features[fit_idx], labels[fit_idx], num_classes, c, max_iter)
        scores[i] = accuracy(features[holdout_idx], labels[holdout_idx], weight, bias)[0]
        logger.info("C=%g: held-out top-1 %.2f", c, scores[i].item())
    if world > 1:
        scores = scores.to(distributed.get_device())
        dist.all_reduce(scores)
        scores = scores.cpu()
    return {float(c): float(s) for c, s in zip(c_values, scores, strict=True)}


def get_args_parser(
    add_help: bool = True,
    parents: Sequence[argparse.ArgumentParser] | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """The logistic-regression flags on top of the shared set-up flags."""
    parser = eval_setup.get_eval_args_parser(
        description or "Logistic regression on frozen SimDINOv2 features (torch L-BFGS, no cuML)",
        add_help,
        parents,
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="images per process for feature extraction"
    )
    parser.add_argument(
        "--c-values",
        nargs="+",
        type=float,
        default=DEFAULT_C_VALUES,
        help="grid of inverse regularisation strengths C (scikit-learn's meaning)",
    )
    parser.add_argument("--max-train-iters", type=int, default=1000, help="L-BFGS iterations per fit")
    parser.add_argument(
        "--holdout-fraction", type=float, default=0.1, help="part of the training set held out to choose C"
    )
    parser.add_argument("--gather-on-cpu", action="store_true", help="keep the features in CPU memory")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="crop size (default: crops.global_crops_size of the config)",
    )
    add_eval_set_args(parser)
    return parser


def run_log_regression(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation (process group already set up); appends the record to
    `output_dir/results_eval_log_regression.json` on the main process and returns it."""
    if not args.c_values or min(args.c_values) <= 0:
        raise UserError("--c-values must be positive numbers")
    if args.max_train_iters < 1:
        raise UserError(f"--max-train-iters must be >= 1 (got {args.max_train_iters})")
    start = time.time()
    model, autocast_dtype, config = eval_setup.setup_and_build_model(args)
    image_size = eval_setup.eval_image_size(args.image_size, config, getattr(args, "config_file", None))
    transform = make_classification_eval_transform(resize_size=image_size, crop_size=image_size)
    train_dataset = make_dataset(args.train_dataset_str, transform=transform)
    eval_sets = load_eval_sets(args, transform, num_dataset_classes(train_dataset))
    device = distributed.get_device()
    features = []
    for dataset in (train_dataset, *(s.dataset for s in eval_sets)):
        loader = make_eval_loader(dataset, args.batch_size, args.num_workers)
        features.append(extract_features(model, loader, args.gather_on_cpu, device, autocast_dtype))
    (train_x, train_y), (val_x, val_y) = features[0], features[1]
    num_classes = max(int(train_y.max().item()), int(val_y.max().item())) + 1

    holdout = select_c(
        train_x, train_y, num_classes, args.c_values, args.max_train_iters, args.holdout_fraction
    )
    best_c = max(holdout, key=lambda c: (holdout[c], -c))  # ties: the stronger regularisation
    weight, bias = fit_logistic_regression(train_x, train_y, num_classes, best_c, args.max_train_iters)
    top1, top5 = accuracy(val_x, val_y, weight, bias)
    logger.info("logistic regression (C=%g): Top1: %.2f, Top5: %.2f", best_c, top1, top5)
    record: dict[str, Any] = {
        "top1": top1,
        "top5": top5,
        "best_C": best_c,
        "holdout_top1": {str(c): s for c, s in holdout.items()},
        "pretrained_weights": str(args.pretrained_weights),
        "train_dataset": args.train_dataset_str,
        "val_dataset": args.val_dataset_str,
        "image_size": image_size,
        "eval_sets": set_results(
            [(s, set_result(*f, weight, bias, s)) for s, f in zip(eval_sets, features[1:], strict=True)]
        ),
    }
    if distributed.is_main_process():
        make_output_dir(args.output_dir)
        append_json_lines(os.path.join(args.output_dir, "results_eval_log_regression.json"), [record])
    logger.info("logistic-regression evaluation done in %.0f s", time.time() - start)
    distributed.barrier()
    return record


def main(args: argparse.Namespace) -> int:
    """Entry point of the launchers: process group and logging, then `run_log_regression`."""
    eval_setup.run_main(run_log_regression, args)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return eval_setup.eval_cli(get_args_parser(add_help=True), main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
