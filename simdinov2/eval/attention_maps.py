"""Self-attention maps of a ViT's CLS token, as DINO draws them, for the v1 tree's attention
pictures and video and the demo's figure.

Owns the whole chain those programs (and the patch-feature PCA pictures) share: the backbone of any
checkpoint, URL or release name (`load_pretrained_backbone`),
an image as model input (`image_to_input`: optional resize, ImageNet normalisation, crop to a multiple
of the patch size), `cls_attention_maps` (the last block's CLS→patch attention per head on the patch
grid), `threshold_masks` (per head, the patches holding a given fraction of the attention mass), and
the drawing helpers (`to_pixels`, `input_picture`, `overlay_masks`).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from simdinov2.checkpoint import resolve_weights
from simdinov2.data.augmentations import IMAGENET_MEAN, IMAGENET_STD
from simdinov2.errors import MissingFileError, UserError
from simdinov2.eval.backbone import build_eval_backbone, check_v1_arch_flags, read_checkpoint
from simdinov2.models import ARCHS, DinoVisionTransformer, build_vit


def add_backbone_args(parser: argparse.ArgumentParser) -> None:
    """The flags naming the backbone (DINO's, as `visualize_attention.py` and `video_generation.py` share)."""
    parser.add_argument(
        "--arch",
        default=None,
        type=str,
        choices=list(ARCHS),
        help="Architecture (ViTs only). Default: the checkpoint's (checked when given); vit_small "
        "without --pretrained_weights.",
    )
    parser.add_argument(
        "--patch_size",
        default=None,
        type=int,
        help="Patch resolution of the model. Default: the checkpoint's (checked when given); 8 "
        "without --pretrained_weights.",
    )
    parser.add_argument(
        "--pretrained_weights",
        default="",
        type=str,
        help="Weights to load: a checkpoint of any layout (v1 checkpoint.pth, v2 "
        "teacher_checkpoint.pth, ...), a URL, or a release name (e.g. simdinov2_vitb16).",
    )
    parser.add_argument(
        "--checkpoint_key",
        default="teacher",
        type=str,
        help='Key to use in the checkpoint (example: "teacher")',
    )
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="Where to run the model."
    )


def _hubconf_dir() -> Path | None:
    """The checkout's folder holding hubconf.py (the release names), when this package runs from one."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "hubconf.py").is_file() else None


def _load_hub_entry(name: str, checkpoint_key: str, arch: str | None, patch_size: int | None) -> nn.Module:
    """The backbone of a release name of hubconf.py (downloaded once into the torch hub cache)."""
    root = _hubconf_dir()
    if root is None:
        raise MissingFileError(
            f"--pretrained_weights {name} is neither a file nor a URL, and release names need "
            "the repository checkout (hubconf.py): give a checkpoint path or URL"
        )
    stated = {k: v for k, v in (("arch", arch), ("patch_size", patch_size)) if v is not None}
    try:
        return torch.hub.load(
            str(root),
            name,
            source="local",
            trust_repo=True,
            verbose=False,
            checkpoint_key=checkpoint_key,
            **stated,
        )
    except (AttributeError, RuntimeError) as err:  # an unknown entry: hubconf's message lists the names
        raise MissingFileError(
            f"--pretrained_weights {name} is not a file, a URL or a release name: {err}"
        ) from None
    except OSError as err:  # the release file could not be downloaded
        raise UserError(f"--pretrained_weights {name} cannot be fetched: {err}") from None


def load_pretrained_backbone(
    weights: str, checkpoint_key: str, arch: str | None, patch_size: int | None, device: torch.device
) -> DinoVisionTransformer:
    """The frozen ViT of `weights`: a checkpoint file or DCP folder of any layout, an http(s)/file URL, or
    a release name of hubconf.py (e.g. simdinov2_vitb16); its architecture is read from the tensors,
    `arch` and `patch_size` checked when given. Random weights, with a printed warning, for an empty
    `weights`."""
    if not weights:
        print("No --pretrained_weights given: the pictures are those of a randomly initialised model.")
        model = build_vit(arch or "vit_small", patch_size=patch_size or 8)
    elif re.fullmatch(r"\w+", weights) and not os.path.exists(weights):
        model = _load_hub_entry(weights, checkpoint_key, arch, patch_size)
    else:
        if "://" in weights:
            try:
                weights = str(resolve_weights(weights))
            except (OSError, ValueError) as err:  # unreachable host, bad URL, failed checksum
                raise UserError(f"--pretrained_weights {weights} cannot be fetched: {err}") from None
        checkpoint = read_checkpoint(weights)
        check = check_v1_arch_flags(arch, patch_size, weights)
        model, _ = build_eval_backbone(checkpoint, checkpoint_key, weights, check=check)
    model.requires_grad_(False)
    return model.eval().to(device)


def check_image_size(size: Sequence[int] | None, flag: str) -> None:
    """One line unless `size` is None, one positive value (the shorter side) or two (height, width)."""
    if size is not None and (len(size) not in (1, 2) or min(size) < 1):
        raise UserError(
            f"{flag} {' '.join(map(str, size))} is not a size: give one positive value (the shorter "
            "side) or two (height width)"
        )


def image_to_input(
    image: Image.Image, patch_size: int, size: int | Sequence[int] | None = None
) -> torch.Tensor:
    """[1, 3, H, W] model input: resized (bicubic) to `size` = (height, width), or its shorter side to
    an int `size`, or kept as is for None; ImageNet-normalised; cropped to a multiple of the patch size."""
    if size is not None:
        if isinstance(size, int) or len(size) == 1:
            side = size if isinstance(size, int) else size[0]
            scale = side / min(image.size)
            height, width = max(1, round(image.height * scale)), max(1, round(image.width * scale))
        else:
            height, width = size[0], size[1]
        image = image.resize((width, height), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    h, w = x.shape[1] - x.shape[1] % patch_size, x.shape[2] - x.shape[2] % patch_size
    if h == 0 or w == 0:
        raise UserError(
            f"an image of {x.shape[2]}x{x.shape[1]} px is smaller than one patch ({patch_size} px): "
            "give a larger size"
        )
    return x[:, :h, :w].unsqueeze(0)


def input_picture(img: torch.Tensor) -> np.ndarray:
    """The model input [1, 3, H, W] back as an 8-bit RGB picture [H, W, 3]."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((img[0].cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@torch.no_grad()
def cls_attention_maps(model: DinoVisionTransformer, img: torch.Tensor) -> torch.Tensor:
    """CLS→patch attention of the last block per head, on the patch grid: [heads, H/p, W/p] (registers
    are skipped)."""
    patch = model.patch_size
    rows, cols = img.shape[-2] // patch, img.shape[-1] // patch
    attentions = model.get_last_selfattention(img)  # [1, heads, T, T]
    first_patch = 1 + model.num_register_tokens
    return attentions[0, :, 0, first_patch:].reshape(-1, rows, cols).float()


def check_threshold(
    threshold: float | None, what: str = "a fraction of the attention mass", flag: str = "--threshold"
) -> None:
    """One line unless `threshold` (`what` it is) is None or in [0, 1]."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UserError(f"{flag} {threshold} is not {what}: give a value in [0, 1]")


def threshold_masks(attn: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per head, keep the patches with the largest attention until they hold `threshold` of the mass."""
    heads = attn.shape[0]
    flat = attn.reshape(heads, -1)
    flat = flat / flat.sum(dim=1, keepdim=True)
    values, order = torch.sort(flat, dim=1)
    cumulative = torch.cumsum(values, dim=1)
    keep_sorted = cumulative > (1 - threshold)
    masks = torch.zeros_like(flat, dtype=torch.bool)
    masks.scatter_(1, order, keep_sorted)
    return masks.reshape(attn.shape)


def to_pixels(maps: torch.Tensor, patch_size: int) -> np.ndarray:
    """[N, h, w] patch-grid maps -> [N, h*p, w*p] by nearest upsampling, as DINO: one block per patch."""
    return F.interpolate(maps.float().unsqueeze(0), scale_factor=patch_size, mode="nearest")[0].cpu().numpy()


def overlay_masks(picture: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> list[np.ndarray]:
    """One picture per mask [N, H, W] (bool, pixel resolution), the mask's pixels tinted with head j's
    colour of matplotlib's tab10."""
    import matplotlib  # optional dependency (requirements.txt, dev extra): only the drawing programs need it

    colors = matplotlib.colormaps["tab10"]
    out = []
    for j, mask in enumerate(masks):
        tinted = picture.astype(np.float32).copy()
        color = np.asarray(colors(j % 10)[:3], dtype=np.float32) * 255
        tinted[mask] = tinted[mask] * (1 - alpha) + alpha * color
        out.append(tinted.clip(0, 255).astype(np.uint8))
    return out


def combined_mask_picture(picture: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Every head's mask [N, H, W] drawn over one picture, head j in tab10 colour j (later heads on top)."""
    out = picture
    for j, tinted in enumerate(overlay_masks(picture, masks, alpha)):
        out = np.where(masks[j][..., None], tinted, out)
    return out
