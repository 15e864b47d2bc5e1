"""Weighted k-NN classification of frozen features: the one k-NN core of both trees, and the v2 CLI.

Core (used by the v1 tree's k-NN evaluation and by this module's CLI):
- `knn_correct_counts` / `knn_classify`: DINO's weighted vote (Wu et al. 2018, as in DINO §4 / DINOv2):
  each test feature votes with its k most similar training features (cosine similarity, features
  L2-normalised by the caller), neighbour j adding `exp(sim_j / T)` to its class. Test features are
  processed in chunks: one `[chunk, N_train]` similarity matmul against a transposed *view* of the
  training bank, one top-k for the largest k, and every smaller k read off the same sorted neighbours,
  so peak memory is `chunk × N_train` and the bank is never copied.
- `knn_classify_sharded`: the same with the test rows split over processes and the hit counts summed.

Hit rule: a test image counts as a top-n hit when its true class received a vote and fewer than n
classes scored strictly higher. (DINO sorted all classes, so classes with no vote filled the top-5 in
arbitrary order and could count as hits by chance; here a class nobody voted for is never a prediction.)

CLI (v2, DINOv2 flags): `python simdinov2/eval/knn.py --config-file D/config.yaml --pretrained-weights
W --output-dir K --train-dataset S --val-dataset S [--nb_knn 10 20 100 200] [--temperature 0.07]
[--gather-on-cpu] [--batch-size 256] [--n-per-class-list -1] [--n-tries 1] [--image-size PX]`.
Appends one JSON line per (n_per_class, k) to `K/results_eval_knn.json`. With `--test-datasets A B ...`
(and `--val-metric-type`, `--test-metric-types`, class-mapping files; `simdinov2.eval.metrics`) the
full-bank lines also hold `eval_sets`: {dataset string: {metric type: result}}, the validation set first.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from simdinov2 import distributed
from simdinov2.cli import make_output_dir
from simdinov2.configs.validate import at_least
from simdinov2.data import make_classification_eval_transform, make_dataset
from simdinov2.errors import UserError
from simdinov2.eval import setup as eval_setup
from simdinov2.eval.features import class_balanced_subset, extract_features, l2_normalized, make_eval_loader
from simdinov2.eval.metrics import (
    ClassificationCounts,
    EvalSet,
    add_eval_set_args,
    load_eval_sets,
    num_dataset_classes,
    set_results,
)
from simdinov2.logging import append_json_lines

logger = logging.getLogger("simdinov2")

# Peak size of one similarity chunk (elements): 2**27 float32 = 512 MiB, i.e. about 100 test images per
# chunk against ImageNet-1k's 1.28M training features (DINO's 100 images per chunk).
_SIMILARITY_BUDGET = 2**27


def _validate(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int],
) -> list[int]:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError("features must be 2-D [num_samples, dim] tensors")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train features have dim {train_features.shape[1]} but test features {test_features.shape[1]}"
        )
    if train_labels.shape[0] != train_features.shape[0] or test_labels.shape[0] != test_features.shape[0]:
        raise ValueError("there must be one label per feature row")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"k must be positive integers (got {ks})")
    if ks[-1] > train_features.shape[0]:
        raise ValueError(
            f"k={ks[-1]} exceeds the {train_features.shape[0]} training samples; pass smaller --nb_knn values"
        )
    return ks


def knn_hit_flags(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int],
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    class_mapping: Tensor | None = None,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Per test image, whether it is a top-1 and a top-5 hit, for every k (see the module docstring for
    the vote and the hit rule). With `class_mapping` (one training class per test class) the test labels
    index the mapped class scores `scores[:, class_mapping]`.

    Runs on the device of `train_features`; test chunks are moved there one at a time."""
    ks = _validate(train_features, train_labels, test_features, test_labels, ks)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    device = train_features.device
    num_train, num_test = train_features.shape[0], test_features.shape[0]
    train_labels = train_labels.to(device=device, dtype=torch.long)
    if num_classes is None:
        top_label = max(int(train_labels.max().item()), int(test_labels.max().item()) if num_test else 0)
        num_classes = top_label + 1
    elif num_test and class_mapping is None and int(test_labels.max().item()) >= num_classes:
        raise ValueError(f"a test label is >= num_classes={num_classes}")
    if chunk_size is None:
        chunk_size = max(1, _SIMILARITY_BUDGET // max(num_train, 1))
    k_max = ks[-1]
    flags: dict[int, tuple[list[Tensor], list[Tensor]]] = {k: ([], []) for k in ks}
    bank_t = train_features.t()  # a view: the bank is never copied
    for start in range(0, num_test, chunk_size):
        queries = test_features[start : start + chunk_size].to(device=device, dtype=train_features.dtype)
        targets = test_labels[start : start + chunk_size].to(device=device, dtype=torch.long)
        similarity = queries @ bank_t  # [chunk, N_train]
        top_similarity, top_index = similarity.topk(k_max, dim=1, largest=True, sorted=True)
        del similarity
        neighbour_labels = train_labels[top_index]
        # exp(sim/T) relative to the row's best neighbour: the same ranking of classes (one positive
        # factor per row), and no overflow for un-normalised features.
        weights = ((top_similarity - top_similarity[:, :1]) / temperature).exp()
        for k in ks:
            scores = torch.zeros((queries.shape[0], num_classes), dtype=weights.dtype, device=device)
            scores.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            if class_mapping is not None:
                scores = scores[:, class_mapping.to(device)]
            true_score = scores.gather(1, targets[:, None])
            n_higher = (scores > true_score).sum(dim=1)
            voted = true_score.squeeze(1) > 0
            flags[k][0].append(voted & (n_higher < 1))
            flags[k][1].append(voted & (n_higher < 5))
    empty = torch.zeros(0, dtype=torch.bool, device=device)
    return {
        k: (torch.cat(h1) if h1 else empty, torch.cat(h5) if h5 else empty) for k, (h1, h5) in flags.items()
    }


def knn_correct_counts(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int],
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> dict[int, tuple[int, int]]:
    """Number of top-1 and top-5 hits per k (`knn_hit_flags` summed)."""
    flags = knn_hit_flags(
        train_features, train_labels, test_features, test_labels, ks, temperature, num_classes, chunk_size
    )
    return {k: (int(hit1.sum().item()), int(hit5.sum().item())) for k, (hit1, hit5) in flags.items()}


def knn_set_counts(
    bank: Tensor,
    bank_labels: Tensor,
    features: Tensor,
    labels: Tensor,
    ks: Sequence[int],
    temperature: float,
    num_classes: int,
    class_mapping: Tensor | None = None,
) -> dict[int, ClassificationCounts]:
    """Per-class hit counts (`simdinov2.eval.metrics`) of every k on an evaluation set, its rows split
    over processes as in `knn_classify_sharded` and the counts summed."""
    world, rank = distributed.get_world_size(), distributed.get_rank()
    per_rank = math.ceil(features.shape[0] / world)
    begin, end = min(rank * per_rank, features.shape[0]), min((rank + 1) * per_rank, features.shape[0])
    flags = knn_hit_flags(
        bank,
        bank_labels,
        features[begin:end],
        labels[begin:end],
        ks,
        temperature,
        num_classes,
        class_mapping=class_mapping,
    )
    scored = num_classes if class_mapping is None else int(class_mapping.numel())
    counts = {}
    for k, (hit1, hit5) in flags.items():
        counts[k] = ClassificationCounts(scored)
        counts[k].add_hits(labels[begin:end], hit1, hit5)
        counts[k].all_reduce()
    return counts


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int],
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> dict[int, tuple[float, float]]:
    """Top-1 and top-5 accuracy (percent) of the weighted k-NN vote for every k in `ks`."""
    counts = knn_correct_counts(
        train_features, train_labels, test_features, test_labels, ks, temperature, num_classes, chunk_size
    )
    n = max(test_features.shape[0], 1)
    return {k: (100.0 * top1 / n, 100.0 * top5 / n) for k, (top1, top5) in counts.items()}


def knn_classify_sharded(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int],
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> dict[int, tuple[float, float]]:
    """`knn_classify` with the test rows split into one contiguous block per process (every process
    holds the full training bank, as `extract_features` leaves it); hit counts are summed over ranks.
    Identical to `knn_classify` without a process group."""
    world, rank = distributed.get_world_size(), distributed.get_rank()
    num_test = test_features.shape[0]
    if num_classes is None:  # decided on the full test set so every rank uses the same value
        num_classes = max(int(train_labels.max().item()), int(test_labels.max().item())) + 1
    per_rank = math.ceil(num_test / world)
    begin, end = min(rank * per_rank, num_test), min((rank + 1) * per_rank, num_test)
    ks = _validate(train_features, train_labels, test_features, test_labels, ks)
    counts = knn_correct_counts(
        train_features,
        train_labels,
        test_features[begin:end],
        test_labels[begin:end],
        ks,
        temperature,
        num_classes,
        chunk_size,
    )
    totals = torch.tensor([[counts[k][0], counts[k][1]] for k in ks], dtype=torch.float64)
    if world > 1:
        totals = totals.to(distributed.get_device())
        dist.all_reduce(totals)
        totals = totals.cpu()
    n = max(num_test, 1)
    return {k: (100.0 * float(totals[i, 0]) / n, 100.0 * float(totals[i, 1]) / n) for i, k in enumerate(ks)}


def feasible_ks(ks: Sequence[int], num_train: int) -> list[int]:
    """The requested k that a bank of `num_train` features supports; logs the ones dropped."""
    if any(int(k) < 1 for k in ks):
        raise UserError(f"the numbers of neighbours must be >= 1 (got {list(ks)})")
    kept = sorted({int(k) for k in ks if int(k) <= num_train})
    dropped = sorted({int(k) for k in ks} - set(kept))
    if dropped:
        logger.warning("skipping k=%s: only %d training samples", ", ".join(map(str, dropped)), num_train)
    if not kept:
        raise UserError(f"every requested k ({list(ks)}) exceeds the {num_train} training samples")
    return kept


def format_knn_result(k: int, top1: float, top5: float) -> str:
    """DINO's console line for one k."""
    return f"{k}-NN classifier result: Top1: {top1}, Top5: {top5}"


# ---------------------------------------------------------------------------------------------- v2 CLI
def get_args_parser(
    add_help: bool = True,
    parents: Sequence[argparse.ArgumentParser] | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """DINOv2's k-NN flags on top of the shared setup flags (`--config-file --pretrained-weights
    --output-dir --opts`)."""
    description = description or "Weighted k-NN evaluation of a SimDINOv2 teacher on frozen features"
    parser = eval_setup.get_eval_args_parser(
        description, add_help, parents, train_role="training (memory bank)"
    )
    parser.add_argument(
        "--nb_knn",
        "--nb-knn",
        dest="nb_knn",
        nargs="+",
        type=int,
        default=[10, 20, 100, 200],
        help="numbers of nearest neighbours to evaluate (k larger than the bank is skipped)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.07, help="temperature T of the exp(sim/T) vote"
    )
    parser.add_argument(
        "--gather-on-cpu",
        action="store_true",
        help="keep the feature banks in CPU memory (for banks larger than accelerator memory)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per process per forward pass")
    parser.add_argument(
        "--n-per-class-list",
        nargs="+",
        type=int,
        default=[-1],
        help="few-shot banks: training samples per class (-1 = the full training set)",
    )
    parser.add_argument("--n-tries", type=int, default=1, help="random draws of each few-shot bank")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="evaluation crop size (default: crops.global_crops_size of the config); images are "
        "resized to size*8/7 then centre-cropped",
    )
    add_eval_set_args(parser)
    return parser


def _eval_set_results(
    features_of,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    eval_sets: Sequence[EvalSet],
    nb_knn: Sequence[int],
    temperature: float,
    num_classes: int,
    loader_args: tuple,
) -> dict[int, dict[str, dict[str, Any]]]:
    """{k: {dataset string: {metric type: result}}} of the full training bank on every evaluation set (the
    first is the validation set, whose features are `val`)."""
    if not eval_sets:
        return {}
    batch_size, num_workers, gather_on_cpu, device, autocast_dtype = loader_args
    ks = feasible_ks(nb_knn, train[0].shape[0])
    per_k: dict[int, list] = {k: [] for k in ks}
    for i, eval_set in enumerate(eval_sets):
        if i == 0:
            features, labels = val
        else:
            logger.info("extracting features of %s (%d images)", eval_set.dataset_str, len(eval_set.dataset))
            loader = make_eval_loader(eval_set.dataset, batch_size, num_workers)
            features, labels = extract_features(features_of, loader, gather_on_cpu, device, autocast_dtype)
        counts = knn_set_counts(
            *train, features, labels, ks, temperature, num_classes, eval_set.class_mapping
        )
        for k in ks:
            per_k[k].append((eval_set, counts[k].result(eval_set.metric_type)))
    return {k: set_results(records) for k, records in per_k.items()}


def eval_knn_with_model(
    model: torch.nn.Module,
    train_dataset,
    val_dataset,
    nb_knn: Sequence[int],
    temperature: float,
    batch_size: int,
    num_workers: int,
    gather_on_cpu: bool,
    autocast_dtype: torch.dtype | None,
    n_per_class_list: Sequence[int] = (-1,),
    n_tries: int = 1,
    eval_sets: Sequence[EvalSet] = (),
) -> list[dict]:
    """Extract L2-normalised CLS features of both datasets once, then run the vote for every
    (n_per_class, try, k). Returns one record per (n_per_class, k), tries averaged; with `eval_sets`
    (the validation set first, then the test sets) the full-bank records also hold `eval_sets`, every
    set's results under its metric type and class mapping."""
    device = distributed.get_device()
    model.eval()
    features_of = l2_normalized(model)
    logger.info("extracting features of the training set (%d images)", len(train_dataset))
    train_features, train_labels = extract_features(
        features_of,
        make_eval_loader(train_dataset, batch_size, num_workers),
        gather_on_cpu,
        device,
        autocast_dtype,
    )
    logger.info("extracting features of the validation set (%d images)", len(val_dataset))
    val_features, val_labels = extract_features(
        features_of,
        make_eval_loader(val_dataset, batch_size, num_workers),
        gather_on_cpu,
        device,
        autocast_dtype,
    )
    num_classes = max(int(train_labels.max().item()), int(val_labels.max().item())) + 1
    loader_args = (batch_size, num_workers, gather_on_cpu, device, autocast_dtype)
    per_set = _eval_set_results(
        features_of,
        (train_features, train_labels),
        (val_features, val_labels),
        eval_sets,
        nb_knn,
        temperature,
        num_classes,
        loader_args,
    )
    records = []
    for n_per_class in n_per_class_list:
        tries = 1 if n_per_class < 0 else n_tries
        per_try: dict[int, list[tuple[float, float]]] = {}
        for t in range(tries):
            subset = class_balanced_subset(train_labels, n_per_class, seed=t).to(train_features.device)
            bank, bank_labels = train_features[subset], train_labels[subset]
            ks = feasible_ks(nb_knn, bank.shape[0])
            results = knn_classify_sharded(
                bank, bank_labels, val_features, val_labels, ks, temperature, num_classes
            )
            for k, accuracy in results.items():
                per_try.setdefault(k, []).append(accuracy)
        for k, accuracies in per_try.items():
            top1 = sum(a[0] for a in accuracies) / len(accuracies)
            top5 = sum(a[1] for a in accuracies) / len(accuracies)
            name = "full" if n_per_class < 0 else f"{n_per_class} per class"
            logger.info("[%s] %s", name, format_knn_result(k, top1, top5))
            records.append(
                {
                    "n_per_class": "full" if n_per_class < 0 else int(n_per_class),
                    "k": int(k),
                    "top1": top1,
                    "top5": top5,
                    "top1_per_try": [a[0] for a in accuracies],
                    "top5_per_try": [a[1] for a in accuracies],
                    **({"eval_sets": per_set[k]} if n_per_class < 0 and k in per_set else {}),
                }
            )
    return records


def run_knn(args: argparse.Namespace) -> list[dict]:
    """The v2 k-NN evaluation (process group already set up); appends to `output_dir/results_eval_knn.json`
    on the main process and returns the records."""
    if args.temperature <= 0:
        raise UserError(f"--temperature must be > 0 (got {args.temperature})")
    if args.n_tries < 1:
        raise UserError(f"--n-tries must be >= 1 (got {args.n_tries})")
    at_least(1)("--batch-size", args.batch_size)
    model, autocast_dtype, config = eval_setup.setup_and_build_model(args)
    image_size = eval_setup.eval_image_size(args.image_size, config, getattr(args, "config_file", None))
    transform = make_classification_eval_transform(
        resize_size=round(image_size * 8 / 7), crop_size=image_size
    )
    train_dataset = make_dataset(args.train_dataset_str, transform=transform)
    eval_sets = load_eval_sets(args, transform, num_dataset_classes(train_dataset))
    start = time.time()
    records = eval_knn_with_model(
        model,
        train_dataset,
        eval_sets[0].dataset,
        args.nb_knn,
        args.temperature,
        args.batch_size,
        args.num_workers,
        args.gather_on_cpu,
        autocast_dtype,
        args.n_per_class_list,
        args.n_tries,
        eval_sets,
    )
    if distributed.is_main_process():
        make_output_dir(args.output_dir)
        common = {
            "pretrained_weights": str(args.pretrained_weights),
            "train_dataset": args.train_dataset_str,
            "val_dataset": args.val_dataset_str,
            "temperature": args.temperature,
            "image_size": image_size,
        }
        path = os.path.join(args.output_dir, "results_eval_knn.json")
        append_json_lines(path, [{**record, **common} for record in records])
        logger.info("k-NN evaluation done in %.0f s; results appended to %s", time.time() - start, path)
    distributed.barrier()
    return records


def main(args: argparse.Namespace) -> int:
    """Entry point of the launchers: process group and logging, then `run_knn`."""
    eval_setup.run_main(run_knn, args)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return eval_setup.eval_cli(get_args_parser(add_help=True), main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
