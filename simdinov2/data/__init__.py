"""Data pipeline of both trees: multi-crop augmentation, iBOT masks and collation, datasets
(ImageNet / ImageNet-22k / ImageFolder / Fashion-MNIST) and their strings, samplers and loaders.

v2 trainer: `make_dataset(cfg.train.dataset_path, transform=DataAugmentationDINO(...))`,
`make_data_loader(..., sampler_type="infinite", sampler_advance=it * batch_size_per_gpu,
collate_fn=partial(collate_data_and_cast, ...))`. v1 trainer: `DataAugmentationDINO(..., flat=True)`
on an `ImageFolderDataset` (or any dataset string).

Names are imported lazily (PEP 562) so that light users such as `prepare.py` do not pay for
torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IMAGENET_DEFAULT_MEAN": ".augmentations",
    "IMAGENET_DEFAULT_STD": ".augmentations",
    "DataAugmentationDINO": ".augmentations",
    "make_classification_eval_transform": ".augmentations",
    "make_classification_train_transform": ".augmentations",
    "to_list": ".augmentations",
    "collate_data_and_cast": ".collate",
    "FashionMNIST": ".datasets",
    "ImageFolderDataset": ".datasets",
    "ImageNet": ".datasets",
    "ImageNet22k": ".datasets",
    "export_fashion_mnist_imagefolder": ".datasets",
    "UnlabeledImageDataset": ".datasets",
    "training_dataset": ".loaders",
    "make_dataset": ".loaders",
    "parse_dataset_str": ".loaders",
    "MaskingGenerator": ".masking",
    "InfiniteSampler": ".samplers",
    "SamplerType": ".samplers",
    "make_data_loader": ".samplers",
    "available_cores": ".samplers",
    "usable_num_workers": ".samplers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
