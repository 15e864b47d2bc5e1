"""k-NN monitor during training: the teacher's weighted k-NN top-1 on a small labeled set, both trees.

`ROOT` holds labeled `train/` and `val/` class-per-folder trees (a few thousand images: the monitor runs
inside training). `KnnMonitor(ROOT, image_size)(backbone)` extracts the L2-normalised CLS features of both
splits with the evaluations' transform and loader (sharded over the processes), runs the shared k-NN core
(`simdinov2.eval.knn`, k=20, T=0.07) and logs one line with the top-1 and its cost in seconds per 1,000
images. Each split is capped at `max_images` (evenly spaced images, so every class keeps its share): the
cost stays bounded whatever ROOT holds. Every process must call it (feature extraction all-gathers).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from simdinov2 import distributed
from simdinov2.data import ImageFolderDataset, make_classification_eval_transform
from simdinov2.errors import MissingFileError
from simdinov2.eval.features import extract_features, l2_normalized, make_eval_loader
from simdinov2.eval.knn import feasible_ks, knn_classify_sharded

logger = logging.getLogger("simdinov2")

MONITOR_K = 20
MONITOR_TEMPERATURE = 0.07
MAX_IMAGES = 5000  # per split


def _capped(dataset: ImageFolderDataset, max_images: int) -> Dataset:
    if len(dataset) <= max_images:
        return dataset
    step = len(dataset) / max_images
    return Subset(dataset, [int(i * step) for i in range(max_images)])


class KnnMonitor:
    """Weighted k-NN top-1 of a backbone on `root/train` -> `root/val` (see the module docstring)."""

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        batch_size: int = 128,
        max_images: int = MAX_IMAGES,
        option: str = "--knn_monitor_path",
    ) -> None:
        root = Path(root).expanduser()
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise MissingFileError(
                    f"{option} {root} has no {split}/ folder: the k-NN monitor needs labeled "
                    f"{root}/train/<class>/<image> and {root}/val/<class>/<image>"
                )
        transform = make_classification_eval_transform(resize_size=image_size, crop_size=image_size)
        self.splits = {
            split: _capped(ImageFolderDataset(root / split, transform=transform), max_images)
            for split in ("train", "val")
        }
        self.batch_size = batch_size
        self.k = feasible_ks([MONITOR_K], len(self.splits["train"]))[0]
        self.n_images = sum(len(d) for d in self.splits.values())
        logger.info(
            "k-NN monitor on %s: %d train / %d val images, k=%d",
            root,
            len(self.splits["train"]),
            len(self.splits["val"]),
            self.k,
        )

    @torch.no_grad()
    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        start = time.perf_counter()
        was_training = backbone.training
        backbone.eval()
        try:
            features = {}
            for split, dataset in self.splits.items():
                loader = make_eval_loader(dataset, batch_size=self.batch_size)
                features[split] = extract_features(l2_normalized(backbone), loader, print_freq=10**9)
        finally:
            backbone.train(was_training)
        (train_features, train_labels), (val_features, val_labels) = features["train"], features["val"]
        top1 = knn_classify_sharded(
            train_features, train_labels, val_features, val_labels, [self.k], MONITOR_TEMPERATURE
        )[self.k][0]
        seconds = time.perf_counter() - start
        logger.info(
            "k-NN monitor: top-1 %.2f%% (k=%d) in %.1f s, %.2f s per 1,000 images",
            top1,
            self.k,
            seconds,
            1000 * seconds / self.n_images,
        )
        return {"knn_monitor_top1": float(top1), "knn_monitor_seconds": float(seconds)}


def append_metrics_row(path: str | Path, iteration: int, values: dict[str, float]) -> None:
    """Add the monitor's row to a run's `training_metrics.json` (main process only; one JSON line)."""
    if distributed.is_main_process():
        with open(path, "a") as f:
            f.write(json.dumps({"iteration": iteration, **values}) + "\n")
