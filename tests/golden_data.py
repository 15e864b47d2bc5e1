"""A deterministic synthetic ImageFolder for the golden tests: the same bytes on every machine (numpy's
PCG64 with a fixed seed, lossless PNG), unlike `tiny_imagefolder`, which is Fashion-MNIST where installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GOLDEN_CLASSES = 2
GOLDEN_PER_CLASS = 16
GOLDEN_SIZE = 32


def write_golden_imagefolder(root: Path) -> Path:
    """2 classes x 16 RGB 32x32 PNGs: class-dependent stripes plus seeded noise."""
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:GOLDEN_SIZE, 0:GOLDEN_SIZE]
    for label in range(GOLDEN_CLASSES):
        class_dir = root / f"class{label}"
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(GOLDEN_PER_CLASS):
            period = 3 + i % 4
            stripes = ((yy if label == 0 else xx) // period) % 2
            image = (
                stripes[:, :, None] * np.array([180, 90 + 40 * label, 60])
                + rng.normal(0, 25, (32, 32, 3))
                + 40
            )
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(class_dir / f"{i:02d}.png")
    return root


def checksum(state: dict) -> tuple[float, float]:
    """(sum, sum of squares) over every floating tensor of a state dict, in float64."""
    total = squares = 0.0
    for value in state.values():
        if hasattr(value, "is_floating_point") and value.is_floating_point():
            v = value.detach().double()
            total += float(v.sum())
            squares += float((v * v).sum())
    return total, squares
