"""The one `__getitem__` every dataset here shares: image and target, each through its optional transform.

Subclasses say how to read one image (`get_image`) and one label (`get_target`); `get_targets()` returns all
labels at once (used by the evaluations without decoding images)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


class LabelledImageDataset(Dataset):
    """Base of ImageFolderDataset, FashionMNIST and ImageNet."""

    transform: Callable | None = None
    target_transform: Callable | None = None

    def get_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def get_target(self, index: int) -> int:
        return int(self.get_targets()[index])

    def get_targets(self) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image: Any = self.get_image(index)
        target: Any = self.get_target(index)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target
