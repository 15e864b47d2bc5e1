"""Batch collation for the v2 trainer: stacks multi-crop samples and draws the iBOT masks.

Semantics follow DINOv2. Crops are stacked crop-major: `collated_global_crops[k * B + b]` is global
crop k of image b (the same order the teacher / student outputs are chunked in). Of the 2B global
crops, `int(2B · mask_probability)` get a block-wise mask; their target ratios are spread evenly
over `mask_ratio_tuple` (crop i draws its ratio in the i-th of equal sub-intervals), the rest get an
empty mask, and the list is shuffled so masked crops land anywhere in the batch.

`drop_masks=True` (upstream's MAE-style option, `student.drop_masks`): every global crop masks the same
number of uniformly random patches, N − int(N · (1 − mask_probability)), which the student then drops.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def _stack_crops(
    samples_list: Sequence[tuple[dict[str, list[torch.Tensor]], Any]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The global crops [2B, 3, G, G] and local crops [nB, 3, L, L], crop-major (all first crops, then
    all second crops, ...); an empty local tensor when there are no local crops."""
    first = samples_list[0][0]
    n_global_crops = len(first["global_crops"])
    n_local_crops = len(first["local_crops"])
    collated_global_crops = torch.stack(
        [sample[0]["global_crops"][k] for k in range(n_global_crops) for sample in samples_list]
    )
    if n_local_crops == 0:
        return collated_global_crops, collated_global_crops.new_empty((0, *collated_global_crops.shape[1:]))
    collated_local_crops = torch.stack(
        [sample[0]["local_crops"][k] for k in range(n_local_crops) for sample in samples_list]
    )
    return collated_global_crops, collated_local_crops


def _dropped_patch_masks(
    n_crops: int, n_tokens: int, mask_probability: float, rng: Any
) -> tuple[list[torch.Tensor], int]:
    """MAE-style `drop_masks`: the same number of random patches dropped from every crop."""
    n_dropped = n_tokens - int(n_tokens * (1.0 - mask_probability))
    masks_list = []
    for _ in range(n_crops):
        mask = torch.zeros(n_tokens, dtype=torch.bool)
        mask[rng.sample(range(n_tokens), n_dropped)] = True
        masks_list.append(mask)
    return masks_list, n_dropped * n_crops


def _generated_masks(
    n_crops: int,
    n_tokens: int,
    mask_ratio_tuple: Sequence[float],
    mask_probability: float,
    mask_generator: Callable[[int], np.ndarray],
    rng: Any,
) -> tuple[list[torch.Tensor], int]:
    """iBOT masks: `mask_probability` of the crops masked, with ratios spread over `mask_ratio_tuple`,
    the others empty, in a shuffled order. Returns (masks, upper bound on the masked patches)."""
    lo, hi = float(mask_ratio_tuple[0]), float(mask_ratio_tuple[1])
    n_masked_crops = int(n_crops * mask_probability)
    # Ratio bin edges: masked crop i draws its ratio in [edges[i], edges[i+1]].
    edges = np.linspace(lo, hi, n_masked_crops + 1)
    masks_list = []
    upperbound = 0
    for i in range(n_masked_crops):
        ratio = rng.uniform(float(edges[i]), float(edges[i + 1]))
        mask = mask_generator(int(n_tokens * ratio))
        masks_list.append(torch.from_numpy(np.ascontiguousarray(mask)).flatten())
        upperbound += int(n_tokens * edges[i + 1])
    empty = torch.from_numpy(np.ascontiguousarray(mask_generator(0))).flatten()
    masks_list.extend(empty.clone() for _ in range(n_masked_crops, n_crops))
    rng.shuffle(masks_list)
    return masks_list, upperbound


def collate_data_and_cast(
    samples_list: Sequence[tuple[dict[str, list[torch.Tensor]], Any]],
    mask_ratio_tuple: Sequence[float],
    mask_probability: float,
    dtype: torch.dtype,
    n_tokens: int | None = None,
    mask_generator: Callable[[int], np.ndarray] | None = None,
    rng: random.Random | None = None,
    drop_masks: bool = False,
) -> dict[str, Any]:
    """Collate `[(crops_dict, target), ...]` into the v2 trainer's batch dict.

    Returns `collated_global_crops` [2B, 3, G, G] and `collated_local_crops` [nB, 3, L, L] (cast to
    `dtype`), `collated_masks` [2B, N] bool, `mask_indices_list` (flat indices of masked patches in
    `collated_masks.flatten()`), `masks_weight` (1 / #masked patches of its crop, one per masked
    patch: the CosinePatchLoss / iBOT weighting), `upperbound` (an upper bound on the number of
    masked patches, for buffer sizes) and `n_masked_patches` (a 1-element long tensor).
    """
    if not samples_list:
        raise ValueError("collate_data_and_cast got an empty batch")
    rng = rng if rng is not None else random
    collated_global_crops, collated_local_crops = _stack_crops(samples_list)
    n_crops = len(collated_global_crops)
    if drop_masks:
        if n_tokens is None:
            raise ValueError("collate_data_and_cast with drop_masks needs n_tokens")
        masks_list, upperbound = _dropped_patch_masks(n_crops, n_tokens, mask_probability, rng)
    elif mask_generator is None:
        if n_tokens is None:
            raise ValueError("collate_data_and_cast needs n_tokens or a mask_generator")
        masks_list = [torch.zeros(n_tokens, dtype=torch.bool) for _ in range(n_crops)]
        upperbound = 0
    else:
        if n_tokens is None:
            height, width = mask_generator.get_shape()  # type: ignore[attr-defined]
            n_tokens = height * width
        masks_list, upperbound = _generated_masks(
            n_crops, n_tokens, mask_ratio_tuple, mask_probability, mask_generator, rng
        )

    collated_masks = torch.stack(masks_list).reshape(n_crops, -1)
    if collated_masks.shape[1] != n_tokens:
        raise ValueError(
            f"mask generator gives {collated_masks.shape[1]} patches per crop, expected {n_tokens}"
        )
    mask_indices_list = collated_masks.flatten().nonzero().flatten()
    masks_per_crop = collated_masks.sum(dim=-1, keepdim=True).clamp(min=1).to(torch.float32)
    masks_weight = (1.0 / masks_per_crop).expand_as(collated_masks)[collated_masks]

    return {
        "collated_global_crops": collated_global_crops.to(dtype),
        "collated_local_crops": collated_local_crops.to(dtype),
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "upperbound": upperbound,
        "n_masked_patches": torch.full((1,), fill_value=mask_indices_list.shape[0], dtype=torch.long),
    }
