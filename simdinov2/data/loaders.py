"""Dataset strings -> datasets (`make_dataset`), plus the data-loader factory re-exported.

Accepted strings (DINOv2 form, `:`-separated `key=value` after the dataset name):

- `ImageNet:split=TRAIN|VAL|TEST:root=R:extra=E` (extra defaults to root)
- `ImageNet22k:root=R[:extra=E]`
- `ImageFolder:root=R` (any class-per-folder tree; a bare existing folder path means the same)
- `FashionMNIST[:split=TRAIN|TEST][:root=R]` (split defaults to TRAIN, root to the Debian package's)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from simdinov2.errors import MissingFileError, UserError

from .datasets import FashionMNIST, ImageFolderDataset, ImageNet, ImageNet22k, UnlabeledImageDataset
from .datasets.unlabeled import is_image_list
from .samplers import SamplerType, make_data_loader

logger = logging.getLogger("simdinov2")

# name -> (class, allowed keys, required keys, expected form)
_DATASETS: dict[str, tuple[type, tuple[str, ...], tuple[str, ...], str]] = {
    "ImageNet": (
        ImageNet,
        ("split", "root", "extra"),
        ("split", "root"),
        "ImageNet:split=TRAIN|VAL|TEST:root=R:extra=E",
    ),
    "ImageNet22k": (ImageNet22k, ("root", "extra"), ("root",), "ImageNet22k:root=R:extra=E"),
    "ImageFolder": (ImageFolderDataset, ("root",), ("root",), "ImageFolder:root=R"),
    "FashionMNIST": (FashionMNIST, ("split", "root"), (), "FashionMNIST:split=TRAIN|TEST:root=R"),
}
EXPECTED_FORMS = ", ".join(form for *_, form in _DATASETS.values())


def _bad(dataset_str: str, problem: str, form: str | None = None) -> ValueError:
    expected = form or f"one of {EXPECTED_FORMS}"
    return UserError(f"bad dataset string {dataset_str!r}: {problem}; expected {expected}")


def parse_dataset_str(dataset_str: str) -> tuple[type, dict[str, str]]:
    """`"Name:k=v:k=v"` -> (dataset class, {k: v}), validating the name and keys."""
    if not isinstance(dataset_str, str) or not dataset_str.strip():
        raise _bad(str(dataset_str), "it is empty")
    dataset_str = dataset_str.strip()
    if dataset_str.lower().endswith(".txt") and os.path.isfile(dataset_str):
        raise UserError(
            f"{dataset_str} is a list of images without labels: this needs labels; give a "
            "class-per-folder tree (root/<class>/<image>) or a labeled dataset string"
        )
    if ":" not in dataset_str and "=" not in dataset_str and os.path.isdir(dataset_str):
        return ImageFolderDataset, {"root": dataset_str}
    if (
        ":" not in dataset_str
        and "=" not in dataset_str
        and (os.sep in dataset_str or dataset_str.startswith(("~", ".")))
    ):
        raise MissingFileError(
            f"dataset folder {dataset_str} does not exist; expected an existing folder of class "
            f"sub-folders (ImageFolder tree) or a dataset string, one of {EXPECTED_FORMS}"
        )
    name, *tokens = dataset_str.split(":")
    canonical = {n.lower(): n for n in _DATASETS}.get(name.strip().lower())
    if canonical is None:
        raise _bad(dataset_str, f"unknown dataset {name!r}")
    cls, allowed, required, form = _DATASETS[canonical]
    kwargs: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        key = key.strip()
        if not sep or not key or not value:
            raise _bad(dataset_str, f"{token!r} is not key=value", form)
        if key not in allowed:
            raise _bad(dataset_str, f"unknown key {key!r} for {canonical} (keys: {', '.join(allowed)})", form)
        if key in kwargs:
            raise _bad(dataset_str, f"key {key!r} given twice", form)
        kwargs[key] = value
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise _bad(dataset_str, f"missing {', '.join(missing)}", form)
    if "split" in kwargs:
        split = kwargs["split"].upper()
        valid = ("TRAIN", "VAL", "TEST")
        if split not in valid:
            raise _bad(dataset_str, f"split must be {'|'.join(valid)}, got {kwargs['split']!r}", form)
        kwargs["split"] = split
    return cls, kwargs


def make_dataset(
    dataset_str: str,
    transform: Callable | None = None,
    target_transform: Callable | None = None,
) -> Dataset:
    """Build the dataset a string names (see the module docstring for the forms)."""
    cls, kwargs = parse_dataset_str(dataset_str)
    dataset = cls(**kwargs, transform=transform, target_transform=target_transform)
    logger.info("dataset %s: %d images", dataset_str, len(dataset))
    return dataset


__all__ = ["EXPECTED_FORMS", "SamplerType", "make_data_loader", "make_dataset", "parse_dataset_str"]


def training_dataset(source: str, transform: Any = None, option: str = "the dataset path") -> Any:
    """The training images `source` names: a folder or `.txt` list (unlabeled), else a dataset string.
    `option` names the setting in the error lines (`--data_path`, `train.dataset_path`)."""
    if not source:
        raise UserError(
            f"{option} is missing: give a folder of images, a .txt list of images or a dataset string"
        )
    path = Path(source).expanduser()
    if path.is_dir() and not any(path.iterdir()):
        raise UserError(f"{option} {source} is an empty folder: put the training images in it (any layout)")
    if path.is_dir() or is_image_list(path):
        return UnlabeledImageDataset(path, transform=transform)
    if path.is_file():
        raise UserError(
            f"{option} {source} is a file: give a folder of images or a .txt list (one image path a line)"
        )
    if ":" in source:
        return make_dataset(source, transform=transform)
    raise UserError(f"{option} {source} does not exist: give a folder of images or a .txt list of images")
