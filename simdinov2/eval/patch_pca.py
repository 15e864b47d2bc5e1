"""Patch-feature PCA pictures, as DINOv2's demo notebook draws them, for `python -m
simdinov2.tools.pca_features` and the demo's figure.

Owns `pca_pictures`: the patch tokens of all the images together are projected on their first principal
component, min-max scaled to [0, 1] and oriented so that the image border (mostly background) is low;
patches at or above `threshold` are the foreground. A second PCA, fitted on the foreground patches only,
gives 3 components, each min-max scaled over the foreground, drawn as RGB; the background is black.
Fitting on all images at once gives the same colour to the same part across images. `threshold 0` keeps
every patch (no background).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from simdinov2.eval.attention_maps import input_picture
from simdinov2.io.atomic import atomic_write_drawing
from simdinov2.models import DinoVisionTransformer

DEFAULT_THRESHOLD = 0.5


@torch.no_grad()
def patch_token_grid(model: DinoVisionTransformer, img: torch.Tensor) -> torch.Tensor:
    """The final-norm patch tokens of one input [1, 3, H, W] on the patch grid: [H/p, W/p, D]."""
    rows, cols = img.shape[-2] // model.patch_size, img.shape[-1] // model.patch_size
    return model.forward_features(img)["x_norm_patchtokens"][0].float().reshape(rows, cols, -1)


def _principal_axes(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k leading principal axes [D, k] of the rows of x (largest variance first)."""
    centered = (x - x.mean(dim=0)).double()
    _, vectors = torch.linalg.eigh(centered.T @ centered)  # ascending eigenvalues
    return vectors[:, -k:].flip(1).to(x.dtype)


def _min_max(x: torch.Tensor) -> torch.Tensor:
    low, high = x.min(dim=0).values, x.max(dim=0).values
    return (x - low) / (high - low).clamp_min(1e-12)


def _border(rows: int, cols: int) -> torch.Tensor:
    mask = torch.ones(rows, cols, dtype=torch.bool)
    mask[1:-1, 1:-1] = False
    return mask.flatten()


def pca_pictures(grids: Sequence[torch.Tensor], threshold: float = DEFAULT_THRESHOLD) -> list[np.ndarray]:
    """One [h, w, 3] float picture in [0, 1] per patch-token grid [h, w, D] (see the module docstring)."""
    flat = torch.cat([g.reshape(-1, g.shape[-1]) for g in grids])
    first = (flat - flat.mean(dim=0)) @ _principal_axes(flat, 1)
    first = _min_max(first)[:, 0]
    border = torch.cat([_border(g.shape[0], g.shape[1]) for g in grids])
    if (~border).any() and first[border].mean() > first[~border].mean():
        first = 1 - first  # the sign of a principal axis is arbitrary: make the border the low end
    foreground = first >= threshold
    if foreground.sum() < 3:  # too few patches for 3 components: keep them all
        foreground = torch.ones_like(foreground)
    fg = flat[foreground]
    rgb = torch.zeros(flat.shape[0], 3)
    k = min(3, fg.shape[0] - 1, fg.shape[1])
    rgb[foreground, :k] = _min_max((fg - fg.mean(dim=0)) @ _principal_axes(fg, k)).float()
    pictures, start = [], 0
    for g in grids:
        rows, cols = g.shape[0], g.shape[1]
        pictures.append(rgb[start : start + rows * cols].reshape(rows, cols, 3).numpy())
        start += rows * cols
    return pictures


def to_image(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """An [h, w, 3] picture in [0, 1] as 8-bit RGB at height x width (nearest: one block per patch)."""
    grid = torch.from_numpy(picture).permute(2, 0, 1).unsqueeze(0)
    full = F.interpolate(grid, size=(height, width), mode="nearest")[0].permute(1, 2, 0).numpy()
    return (full * 255).round().clip(0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an 8-bit picture as PNG atomically (temporary file + rename)."""
    return atomic_write_drawing(path, lambda f: Image.fromarray(array).save(f, format="png"))


def save_pca_figure(
    backbone: DinoVisionTransformer,
    images: torch.Tensor,
    path: str | os.PathLike,
    threshold: float = DEFAULT_THRESHOLD,
    min_height: int = 128,
) -> Path:
    """One PNG: the (ImageNet-normalised) images [B, 3, H, W] on the top row, their patch-feature PCA
    pictures below (one PCA fitted on all of them). H and W are cut to multiples of the patch size; small
    images are enlarged by a whole factor (nearest) to at least `min_height` pixels."""
    patch = backbone.patch_size
    images = images[..., : images.shape[-2] // patch * patch, : images.shape[-1] // patch * patch]
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        grids = [patch_token_grid(backbone, img.unsqueeze(0).to(device)).cpu() for img in images]
    finally:
        backbone.train(was_training)
    height, width = images.shape[-2], images.shape[-1]
    top = [input_picture(img.unsqueeze(0)) for img in images]
    bottom = [to_image(p, height, width) for p in pca_pictures(grids, threshold)]
    figure = np.concatenate([np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)], axis=0)
    factor = max(1, -(-min_height // height))
    figure = figure.repeat(factor, axis=0).repeat(factor, axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_png(figure, path)
