"""Block-wise patch masks for the iBOT / masked-patch loss (BEiT / DINOv2 style).

`MaskingGenerator(n)` returns a boolean [H, W] numpy mask over the patch grid with at most `n`
masked patches, built from random rectangles: each block covers between `min_num_patches` and
`max_num_patches` patches and has an aspect ratio in [min_aspect, max_aspect] (log-uniform). A block
is only accepted if it adds new patches without overshooting `n`, so the result has `<= n` masked
patches (usually exactly `n` on reasonable grids). Randomness comes from Python's `random` module
(or the `rng` given), which the data loader seeds per batch (see `samplers.make_data_loader`).
"""

from __future__ import annotations

import math
import random

import numpy as np

# A block placement is retried this many times before the generator gives up on one block.
_PLACEMENT_ATTEMPTS = 10


class MaskingGenerator:
    def __init__(
        self,
        input_size: int | tuple[int, int],
        num_masking_patches: int | None = None,
        min_num_patches: int = 4,
        max_num_patches: float | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.height, self.width = int(input_size[0]), int(input_size[1])
        if self.height < 1 or self.width < 1:
            raise ValueError(f"mask grid must be at least 1x1 (got {input_size})")
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        if max_num_patches is None:
            max_num_patches = num_masking_patches if num_masking_patches is not None else self.num_patches
        self.max_num_patches = max_num_patches
        if min_aspect <= 0:
            raise ValueError(f"min_aspect must be > 0 (got {min_aspect})")
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.rng = rng if rng is not None else random

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.height}x{self.width}, blocks of {self.min_num_patches}.."
            f"{self.max_num_patches} patches, log aspect {self.log_aspect_ratio[0]:.3f}..{self.log_aspect_ratio[1]:.3f})"
        )

    def get_shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _add_block(self, mask: np.ndarray, max_new: float) -> int:
        """Try to mask one rectangle adding 1..max_new new patches; returns how many it added."""
        rng = self.rng
        for _ in range(_PLACEMENT_ATTEMPTS):
            target_area = rng.uniform(self.min_num_patches, max_new)
            aspect = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            # Strictly smaller than the grid (BEiT): a block never spans a whole side.
            if 0 < h < self.height and 0 < w < self.width:
                top = rng.randint(0, self.height - h)
                left = rng.randint(0, self.width - w)
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= max_new:
                    block[...] = True
                    return new
        return 0

    def __call__(self, num_masking_patches: int | None = None) -> np.ndarray:
        if num_masking_patches is None:
            num_masking_patches = self.num_masking_patches or 0
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            max_new = min(num_masking_patches - count, self.max_num_patches)
            added = self._add_block(mask, max_new)
            if added == 0:
                break
            count += added
        return mask
