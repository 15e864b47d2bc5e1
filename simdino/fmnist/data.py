"""The demo's data: the training source of main_dino, the labelled splits, and the evaluation views."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from simdinov2.data import FashionMNIST, ImageFolderDataset, make_classification_eval_transform
from simdinov2.data.datasets.fashion_mnist import (
    DEFAULT_FASHION_MNIST_ROOT,
    INSTALL_HINT,
    fashion_mnist_paths,
)
from simdinov2.errors import MissingFileError

MakeSplit = Callable[..., Dataset]


def fashion_mnist_installed(root: str | Path | None = None) -> Path | None:
    """None when both Fashion-MNIST splits are under `root` (default: the Debian package's folder), else the
    first missing file."""
    root = DEFAULT_FASHION_MNIST_ROOT if root is None else root
    missing = [
        p for split in ("TRAIN", "TEST") for p in fashion_mnist_paths(split, Path(root)) if not p.is_file()
    ]
    return missing[0] if missing else None


def resolve_data(data_path: str | None) -> tuple[str, MakeSplit, str]:
    """(training source for main_dino's --data_path, `make_split(split, transform)` building the labelled
    TRAIN / TEST datasets, a name for messages).

    Without `data_path`: Fashion-MNIST from the Debian package. With it: an ImageFolder tree
    holding `train/` and `val/` class folders (the layout of `eval_knn.py`). Missing data raises
    MissingFileError whose message is the one line telling what to install or pass."""
    if data_path is None:
        root = DEFAULT_FASHION_MNIST_ROOT
        missing = fashion_mnist_installed(root)
        if missing is not None:
            raise MissingFileError(
                f"Fashion-MNIST is not installed ({missing} is missing): run '{INSTALL_HINT}', "
                "or pass --data_path DIR with DIR/train and DIR/val ImageFolder trees"
            )

        def fashion_mnist(split: str, transform: Any = None) -> Dataset:
            return FashionMNIST(split, root=root, transform=transform)

        return f"FashionMNIST:split=TRAIN:root={root}", fashion_mnist, "Fashion-MNIST"

    root_path = Path(data_path).expanduser()
    for sub in ("train", "val"):
        if not (root_path / sub).is_dir():
            raise MissingFileError(
                f"--data_path {data_path} must hold train/ and val/ ImageFolder trees (one folder per class); "
                f"{root_path / sub} is missing"
            )

    def image_folder(split: str, transform: Any = None) -> Dataset:
        return ImageFolderDataset(
            str(root_path / ("train" if split == "TRAIN" else "val")), transform=transform
        )

    return str(root_path / "train"), image_folder, str(root_path)


def eval_transform(image_size: int) -> Any:
    """Deterministic evaluation view: the whole image at the training crop size. Not ImageNet's 8/7 resize
    + centre crop, which cuts off Fashion-MNIST's object edges: it cost 1.5 points of pixel k-NN and 0.8
    of random-init k-NN in our measurements."""
    return make_classification_eval_transform(resize_size=image_size, crop_size=image_size)


def evaluation_subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """`n` images of `dataset` drawn at random with `seed` (all of them for None or n >= len)."""
    if n is None or n >= len(dataset):  # type: ignore[arg-type]
        return dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:n].sort().values  # type: ignore[arg-type]
    return Subset(dataset, indices.tolist())
