"""Class-per-folder image datasets (`root/<class>/<image>`), the custom-data entry point.

`ImageFolderDataset` is what `ImageFolder:root=R` builds and what the v1 scripts read from
`--data_path`: classes are the sorted sub-folder names of `root`, images are found recursively
below each class folder (extensions in `IMG_EXTENSIONS`, any case). Images load as 8-bit RGB;
16-bit grayscale files (PNG, TIFF) are scaled to 8 bit (`to_rgb`), never clipped.

Policy for bad input:
- missing root -> FileNotFoundError; no class folders or no images -> ValueError, one line.
- an unreadable / corrupt image raises `UnreadableImageError` (a ValueError) naming the file when it
  is loaded. We do not skip silently: a skipped image changes the epoch length and the label
  balance without anyone noticing; delete or replace the file instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from simdinov2.errors import MissingFileError, UserError

from .base import LabelledImageDataset

logger = logging.getLogger("simdinov2")

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# Pillow's single-channel integer modes deeper than 8 bits (16-bit grayscale PNG / TIFF open as "I;16",
# some as "I"). Pillow's convert("RGB") clips them at 255 instead of scaling: a 16-bit PNG would lose
# every level above 255/65535 of its range, silently.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
UINT16_MAX = 65535


class UnreadableImageError(UserError):
    """An image file exists but PIL cannot decode it (or holds values no 8-bit RGB image can show)."""


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """An 8-bit RGB version of a PIL image: 16-bit grayscale is scaled (65535 -> 255, rounded), other
    modes go through Pillow's conversion. Floating-point and > 16-bit images are refused (one line):
    their range is unknown, and guessing it would change the data without a word."""
    if image.mode == "RGB":
        return image
    if image.mode in HIGH_BIT_DEPTH_MODES:
        levels = np.asarray(image).astype(np.int64)
        if levels.size and (levels.min() < 0 or levels.max() > UINT16_MAX):
            raise UnreadableImageError(
                f"{name} is a 32-bit integer image with values in [{levels.min()}, {levels.max()}], outside "
                "16 bit; convert it to an 8- or 16-bit image"
            )
        eight_bit = ((levels * 255 + UINT16_MAX // 2) // UINT16_MAX).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    if image.mode == "F":
        raise UnreadableImageError(
            f"{name} is a floating-point image (unknown value range); convert it to an 8- or 16-bit image"
        )
    return image.convert("RGB")


def load_rgb_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as a fully decoded 8-bit RGB PIL image (`to_rgb`); a clear error names a bad
    file."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
    except FileNotFoundError as e:
        raise MissingFileError(f"image file {path} does not exist (was the dataset moved?)") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(
            f"cannot read image {path} ({type(e).__name__}: {e}); delete or replace this file"
        ) from e
    return to_rgb(image, name=f"image {path}")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """Return (sorted class names, [(image path, class index), ...]) of a class-per-folder tree."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"image folder {root} does not exist (expected {root}/<class>/<image>)")
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if not classes:
        loose = sum(1 for e in entries if e.is_file() and is_image_file(e.name))
        hint = f" ({loose} images lie directly in it; move them into class sub-folders)" if loose else ""
        raise UserError(
            f"image folder {root} has no class sub-folders{hint}; evaluations need labels: expected "
            f"{root}/<class>/<image> (training reads folders without classes)"
        )
    if {"train", "val"} <= set(classes):
        logger.warning(
            "image folder %s has 'train' and 'val' sub-folders used as classes; did you mean %s/train?",
            root,
            root,
        )
    samples: list[tuple[str, int]] = []
    for class_index, class_name in enumerate(classes):
        class_dir = root / class_name
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                if is_image_file(name):
                    samples.append((os.path.join(dirpath, name), class_index))
    if not samples:
        raise UserError(
            f"image folder {root} has {len(classes)} class folders but no images "
            f"({', '.join(IMG_EXTENSIONS)}); expected {root}/<class>/<image>"
        )
    return classes, samples


class ImageFolderDataset(LabelledImageDataset):
    """Any class-per-folder tree: `dataset[i] -> (transform(RGB image), target_transform(class index))`.

    Attributes like torchvision's ImageFolder: `classes`, `class_to_idx`, `samples`, `targets`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ) -> None:
        self.root = str(Path(root).expanduser())
        self.transform = transform
        self.target_transform = target_transform
        self.classes, self.samples = scan_image_folder(self.root)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets = [target for _, target in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def get_targets(self) -> np.ndarray:
        return np.asarray(self.targets, dtype=np.int64)

    def get_image(self, index: int) -> Image.Image:
        return load_rgb_image(self.samples[index][0])

    def get_target(self, index: int) -> int:
        return self.samples[index][1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, {len(self)} images, {len(self.classes)} classes)"
