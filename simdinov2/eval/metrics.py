"""Classification metrics and evaluation sets: the one evaluation loop of the v2 classification programs.

Owns:
- `MetricType` (`mean_accuracy`, `mean_per_class_accuracy`, `per_class_accuracy`, upstream's names) and
  `ClassificationCounts`: per-class top-1 / top-5 hits, support and summed cross-entropy, summed over
  processes once at the end, from which every metric type is read:
  * `mean_accuracy`: hits / images (micro average);
  * `mean_per_class_accuracy`: the mean over classes present in the set of hits / support (macro);
  * `per_class_accuracy`: that mean plus the list of per-class accuracies (`null` for absent classes).
- `evaluate(predict, loader, ...)`: the loop (linear probe, attentive probe and fine-tuning all use it):
  `predict(images)` gives logits (or a dict of named logits), optionally re-indexed by a class mapping.
- Evaluation sets: the flags `--test-datasets A B ... --val-metric-type T --test-metric-types T ...
  --val-class-mapping-fpath F --test-class-mapping-fpaths F ...` (upstream's), `EvalSet` and
  `load_eval_sets`, which checks everything before any training (missing set, unknown metric type,
  class-mapping file of the wrong length: one line each).

A class-mapping file (upstream's format) is a `.npy` integer array with one entry per class of the
evaluated set, the index of the classifier output that stands for it: logits are read as
`logits[:, mapping]`. The results JSON of each program holds `"eval_sets": {dataset string: {metric type:
{"top1", "top5", ...}}}`, the validation set first.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from simdinov2 import distributed
from simdinov2.data import make_dataset
from simdinov2.errors import MissingFileError, UserError
from simdinov2.eval.features import dataset_labels
from simdinov2.logging import MetricLogger

logger = logging.getLogger("simdinov2")


class MetricType(Enum):
    MEAN_ACCURACY = "mean_accuracy"
    MEAN_PER_CLASS_ACCURACY = "mean_per_class_accuracy"
    PER_CLASS_ACCURACY = "per_class_accuracy"

    def __str__(self) -> str:
        return self.value


def parse_metric_type(text: str | MetricType, flag: str = "--val-metric-type") -> MetricType:
    """The metric type a flag names; one line listing the known ones otherwise."""
    if isinstance(text, MetricType):
        return text
    try:
        return MetricType(text)
    except ValueError:
        known = ", ".join(m.value for m in MetricType)
        raise UserError(f"{flag}: unknown metric type {text!r}; choose one of {known}") from None


class ClassificationCounts:
    """Per-class top-1 hits, top-5 hits, support and summed loss of one classifier over an evaluation set."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = int(num_classes)
        self.table = torch.zeros(4, self.num_classes, dtype=torch.float64, device=device)
        self.has_loss = False  # k-NN votes have no loss

    def add_hits(self, labels: Tensor, hit1: Tensor, hit5: Tensor, loss: Tensor | None = None) -> None:
        """Count a batch from its per-image hit flags (and per-image losses)."""
        labels = labels.to(self.table.device, torch.long)
        self.has_loss = self.has_loss or loss is not None
        rows = [
            hit1,
            hit5,
            torch.ones_like(hit1),
            torch.zeros_like(hit1, dtype=torch.float64) if loss is None else loss,
        ]
        for i, values in enumerate(rows):
            self.table[i].index_add_(0, labels, values.to(self.table.device, torch.float64))

    def add_logits(self, logits: Tensor, labels: Tensor) -> None:
        labels = labels.to(logits.device, torch.long)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(labels[:, None])
        loss = F.cross_entropy(logits.float(), labels, reduction="none")
        self.add_hits(labels, top[:, :1].any(dim=1), top.any(dim=1), loss)

    def all_reduce(self) -> ClassificationCounts:
        if distributed.get_world_size() > 1:
            table = self.table.to(distributed.get_device())
            dist.all_reduce(table)
            self.table = table.to(self.table.device)
        return self

    def result(self, metric_type: MetricType = MetricType.MEAN_ACCURACY) -> dict[str, Any]:
        """{"top1", "top5" (percent), "count", "loss" (when losses were counted)} under `metric_type`;
        per-class lists for `per_class_accuracy`."""
        hits1, hits5, support, loss = self.table.cpu()
        count = float(support.sum())
        record: dict[str, Any] = {"count": int(count)}
        if self.has_loss:
            record["loss"] = float(loss.sum()) / max(count, 1.0)
        if metric_type == MetricType.MEAN_ACCURACY:
            record["top1"] = 100.0 * float(hits1.sum()) / max(count, 1.0)
            record["top5"] = 100.0 * float(hits5.sum()) / max(count, 1.0)
            return record
        present = support > 0
        for name, hits in (("top1", hits1), ("top5", hits5)):
            per_class = 100.0 * hits / support.clamp(min=1.0)
            record[name] = float(per_class[present].mean()) if present.any() else 0.0
            if metric_type == MetricType.PER_CLASS_ACCURACY:
                record[f"{name}_per_class"] = [
                    float(v) if p else None for v, p in zip(per_class, present, strict=True)
                ]
        return record


def map_logits(logits: Tensor, class_mapping: Tensor | None) -> Tensor:
    return logits if class_mapping is None else logits[:, class_mapping.to(logits.device)]


@torch.no_grad()
def evaluate(
    predict: Callable[[Tensor], Tensor | dict[str, Tensor]],
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    class_mapping: Tensor | None = None,
    names: Sequence[str] = ("classifier",),
    print_freq: int = 20,
) -> dict[str, ClassificationCounts]:
    """Counts of every named output of `predict` over `loader`'s dataset, summed over processes.

    `loader` should shard without padding (`make_eval_loader(..., pad=False)`): each image is counted
    once, and the counts are summed at the end only, so ranks may see unequal shards. `num_classes` is the
    number of classes scored (the mapping's length when there is one); it and the output `names` (one
    "classifier" when `predict` returns a tensor) are the same on all ranks, even on an empty shard."""
    counts = {name: ClassificationCounts(num_classes, device) for name in names}
    for batch in MetricLogger(delimiter="  ").log_every(loader, print_freq, header="Test:"):
        images, meta = batch[0], batch[1]
        labels = torch.as_tensor(meta[1] if isinstance(meta, (list, tuple)) else meta)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        outputs = predict(images)
        if isinstance(outputs, Tensor):
            outputs = {"classifier": outputs}
        for name, logits in outputs.items():
            counts[name].add_logits(map_logits(logits, class_mapping), labels)
    return {name: counts[name].all_reduce() for name in sorted(counts)}


# ------------------------------------------------------------------------------------- evaluation sets
def add_eval_set_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Upstream's test-set flags."""
    parser.add_argument(
        "--test-datasets",
        dest="test_dataset_strs",
        nargs="+",
        default=None,
        help="further evaluation sets (dataset strings), each reported under its string",
    )
    parser.add_argument(
        "--val-metric-type",
        default=MetricType.MEAN_ACCURACY.value,
        help=f"metric of the validation set: {', '.join(m.value for m in MetricType)}",
    )
    parser.add_argument(
        "--test-metric-types",
        nargs="+",
        default=None,
        help="metric of each test set (one per --test-datasets entry, or one for all; default: "
        "--val-metric-type); name a set twice for two metrics",
    )
    parser.add_argument(
        "--val-class-mapping-fpath",
        default=None,
        help=".npy integer array: for each class of the validation set, its classifier output",
    )
    parser.add_argument(
        "--test-class-mapping-fpaths",
        nargs="+",
        default=None,
        help="one class-mapping .npy per test set (None for no mapping)",
    )
    return parser


@dataclass
class EvalSet:
    """A dataset to evaluate on, its metric type and its class mapping (classifier output per class)."""

    dataset_str: str
    metric_type: MetricType
    class_mapping_path: str | None = None
    dataset: Dataset | None = None
    class_mapping: Tensor | None = None

    @property
    def num_scored_classes(self) -> int | None:
        return None if self.class_mapping is None else int(self.class_mapping.numel())


def _per_test_set(values: Sequence[Any] | None, n: int, flag: str, default: Any) -> list[Any]:
    if not values:
        return [default] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise UserError(
            f"{flag} gives {len(values)} values for {n} --test-datasets: give one, or one per test set"
        )
    return list(values)


def eval_sets_from_args(args: argparse.Namespace) -> list[EvalSet]:
    """The validation set then each test set, with metric types parsed (nothing read yet)."""
    val_metric = parse_metric_type(getattr(args, "val_metric_type", MetricType.MEAN_ACCURACY))
    sets = [EvalSet(args.val_dataset_str, val_metric, getattr(args, "val_class_mapping_fpath", None))]
    tests = list(getattr(args, "test_dataset_strs", None) or [])
    metrics = _per_test_set(
        getattr(args, "test_metric_types", None), len(tests), "--test-metric-types", val_metric
    )
    mappings = _per_test_set(
        getattr(args, "test_class_mapping_fpaths", None), len(tests), "--test-class-mapping-fpaths", None
    )
    for dataset_str, metric, mapping in zip(tests, metrics, mappings, strict=True):
        mapping = None if mapping in (None, "None", "none", "") else mapping
        sets.append(EvalSet(dataset_str, parse_metric_type(metric, "--test-metric-types"), mapping))
    return sets


def num_dataset_classes(dataset: Dataset) -> int:
    """Classes of a dataset: its `classes` list when it has one, else the largest label + 1."""
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        return len(classes)
    labels = dataset_labels(dataset)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]
    return int(max(labels, default=-1)) + 1


def load_class_mapping(path: str, num_set_classes: int, num_outputs: int, dataset_str: str) -> Tensor:
    """The class mapping of `path` (upstream's .npy), checked against the set and the classifier."""
    if not os.path.isfile(path):
        raise MissingFileError(f"class-mapping file {path} does not exist")
    try:
        mapping = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise UserError(f"class-mapping file {path} is not a .npy integer array ({error})") from None
    if mapping.ndim != 1 or not np.issubdtype(mapping.dtype, np.integer):
        raise UserError(
            f"class-mapping file {path} must hold a 1-D integer array (got {mapping.dtype} {mapping.shape})"
        )
    if len(mapping) != num_set_classes:
        raise UserError(
            f"class-mapping file {path} has {len(mapping)} entries but {dataset_str} has {num_set_classes} "
            "classes: give one classifier output per class of the set"
        )
    if len(mapping) and (mapping.min() < 0 or mapping.max() >= num_outputs):
        raise UserError(
            f"class-mapping file {path} names outputs outside [0, {num_outputs}) of the classifier"
        )
    return torch.as_tensor(mapping, dtype=torch.long)


def load_eval_sets(args: argparse.Namespace, transform: Callable, num_outputs: int) -> list[EvalSet]:
    """Build every evaluation set (validation first) and read its class mapping, before any work is done:
    a missing set, an unknown metric type or a wrong mapping stops the program in one line."""
    sets = eval_sets_from_args(args)
    for eval_set in sets:
        eval_set.dataset = make_dataset(eval_set.dataset_str, transform=transform)
        n_classes = num_dataset_classes(eval_set.dataset)
        if eval_set.class_mapping_path:
            eval_set.class_mapping = load_class_mapping(
                eval_set.class_mapping_path, n_classes, num_outputs, eval_set.dataset_str
            )
        elif n_classes > num_outputs:
            raise UserError(
                f"{eval_set.dataset_str} has {n_classes} classes but the classifier {num_outputs} outputs: "
                "pass a class-mapping file (--val-class-mapping-fpath / --test-class-mapping-fpaths)"
            )
    return sets


def set_results(records: Sequence[tuple[EvalSet, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """{dataset string: {metric type: result}} (a set named twice with two metrics keeps both)."""
    results: dict[str, dict[str, Any]] = {}
    for eval_set, record in records:
        results.setdefault(eval_set.dataset_str, {})[eval_set.metric_type.value] = record
    return results


__all__ = [
    "ClassificationCounts",
    "EvalSet",
    "MetricType",
    "add_eval_set_args",
    "eval_sets_from_args",
    "evaluate",
    "load_class_mapping",
    "load_eval_sets",
    "map_logits",
    "num_dataset_classes",
    "parse_metric_type",
    "set_results",
]
