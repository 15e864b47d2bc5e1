"""The three feature sets of the demo (trained teacher, the same network at random init, raw pixels) and
their weighted k-NN evaluation (`simdinov2.eval.knn`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from simdino.train.multicrop import build_backbone
from simdinov2.checkpoint import build_backbone_from_checkpoint
from simdinov2.eval.features import extract_features, l2_normalized, make_eval_loader
from simdinov2.eval.knn import feasible_ks, knn_classify
from simdinov2.utils.utils import fix_random_seeds

KNN_KS = (10, 20, 100, 200)
KNN_K = 20  # the headline k (DINO's)
KNN_TEMPERATURE = 0.07
SHORT_RUN_SECONDS = 120.0


def default_knn_images(seconds: float) -> tuple[int | None, int | None]:
    """(k-NN bank, queries) sizes: everything, except for smoke runs (< 2 minutes of training) where a
    random 10000 / 2000 keeps the evaluation as short as the training."""
    return (None, None) if seconds >= SHORT_RUN_SECONDS else (10000, 2000)


def trained_teacher(output_dir: str | Path) -> nn.Module:
    """The teacher backbone of `output_dir/checkpoint.pth` (architecture read from the weights)."""
    return build_backbone_from_checkpoint(
        str(Path(output_dir) / "checkpoint.pth"), "teacher", verbose=False
    ).eval()


def random_init_backbone(args: argparse.Namespace | dict[str, Any]) -> nn.Module:
    """The backbone of a run's arguments (main_dino's, or the flags of a recipe) at its random
    initialisation, drawn with the run's seed (main_dino seeds the generators, then builds the student
    first and copies it into the teacher)."""
    args = argparse.Namespace(**args) if isinstance(args, dict) else args
    fix_random_seeds(getattr(args, "seed", 0))
    backbone, _ = build_backbone(args, 0.0)
    return backbone.eval()


class PixelFeatures(nn.Module):
    """Raw pixels as features: the flattened, normalised input image (what the networks see)."""

    def forward(self, images: Tensor) -> Tensor:
        return images.flatten(1)


def pixel_features() -> nn.Module:
    return PixelFeatures()


def extract(model: nn.Module, dataset: Dataset, batch_size: int, num_workers: int) -> tuple[Tensor, Tensor]:
    """L2-normalised features and labels of every image of `dataset` (progress and ETA logged)."""
    loader = make_eval_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    device = next(iter(model.parameters()), torch.empty(0)).device
    with torch.inference_mode():
        return extract_features(l2_normalized(model), loader, device=device, print_freq=20)


def knn_evaluate(
    model: nn.Module,
    train_dataset: Dataset,
    test_dataset: Dataset,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    batch_size: int = 500,
    num_workers: int = 1,
) -> dict[int, tuple[float, float]]:
    """Weighted k-NN top-1 / top-5 (percent) of `model`'s frozen features: {k: (top1, top5)}."""
    train_features, train_labels = extract(model, train_dataset, batch_size, num_workers)
    test_features, test_labels = extract(model, test_dataset, batch_size, num_workers)
    return knn_classify(
        train_features,
        train_labels,
        test_features,
        test_labels,
        feasible_ks(ks, train_features.shape[0]),
        temperature,
    )


def headline_top1(result: dict[int, tuple[float, float]]) -> float:
    """Top-1 at the headline k (or the smallest k evaluated, when the bank is too small for it)."""
    return result[KNN_K][0] if KNN_K in result else result[min(result)][0]
