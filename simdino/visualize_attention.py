#!/usr/bin/env python
"""Self-attention maps of the CLS token, one per head of the last block, as PNGs (DINO's
`visualize_attention.py`).

Owns only this v1 visualisation program: reading an image, running `get_last_selfattention`, turning
the CLS→patch attention into per-head heatmaps (`attn-head{j}.png`) and, with `--threshold t`, masks
that keep the patches holding a fraction t of the attention mass (`mask_th{t}_head{j}.png`, drawn over
the image). Weights come from any checkpoint the shared loader understands (v1 `checkpoint.pth`, v2
teacher snapshots, compiled `_orig_mod.` / DDP `module.` prefixes, released files); the architecture
details (registers, LayerScale, ...) are read from the weights. Without `--image_path` it uses the
astronaut photo shipped with scikit-image, so it runs offline.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

try:
    from simdinov2.cli import run_cli
except ImportError as e:  # pragma: no cover - depends on the install
    raise SystemExit(f"visualize_attention.py: error: {e}; install the package first: `pip install -e .` from the "
                     "repository root")

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from simdinov2.cli import HelpFormatter, make_output_dir
from simdinov2.data.augmentations import IMAGENET_MEAN, IMAGENET_STD
from simdinov2.data.datasets import load_rgb_image
from simdinov2.distributed import resolve_device
from simdinov2.errors import MissingFileError, UserError
from simdinov2.eval.attention_maps import cls_attention_maps, threshold_masks
from simdinov2.eval.backbone import build_eval_backbone, check_v1_arch_flags, read_checkpoint
from simdinov2.models import ARCHS, DinoVisionTransformer, build_vit

logger = logging.getLogger("simdinov2")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Visualize Self-Attention maps", add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("--arch", default=None, type=str, choices=list(ARCHS),
                        help="Architecture (ViTs only). Default: the checkpoint's (checked when given); vit_small "
                             "without --pretrained_weights.")
    parser.add_argument("--patch_size", default=None, type=int,
                        help="Patch resolution of the model. Default: the checkpoint's (checked when given); 8 "
                             "without --pretrained_weights.")
    parser.add_argument("--pretrained_weights", default="", type=str,
                        help="Path to pretrained weights to load (any layout: v1 checkpoint.pth, v2 teacher_checkpoint.pth, ...).")
    parser.add_argument("--checkpoint_key", default="teacher", type=str,
                        help='Key to use in the checkpoint (example: "teacher")')
    parser.add_argument("--image_path", default=None, type=str,
                        help="Path of the image to load (default: scikit-image's astronaut photo).")
    parser.add_argument("--image_size", default=None, type=int, nargs="+", help="""Resize image (one or two values).
        Default: the resolution the model was trained at, as its checkpoint tells it (its position embedding's
        grid x patch size: 28 for a 28-px run, 224 for upstream's ViTs); 480 without --pretrained_weights.""")
    parser.add_argument("--output_dir", default=".", help="Path where to save visualizations.")
    parser.add_argument("--threshold", type=float, default=None, help="""We visualize masks
        obtained by thresholding the self-attention maps to keep xx%% of the mass.""")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="Where to run the model.")
    return parser


def load_model(args: argparse.Namespace, device: torch.device) -> DinoVisionTransformer:
    """The ViT with `--pretrained_weights` loaded strictly (architecture read from the weights; --arch and
    --patch_size, when given, must agree), or random weights with a warning when no weights are given."""
    if args.pretrained_weights:
        checkpoint = read_checkpoint(args.pretrained_weights)
        check = check_v1_arch_flags(args.arch, args.patch_size, args.pretrained_weights)
        model, _ = build_eval_backbone(checkpoint, args.checkpoint_key, args.pretrained_weights, check=check)
    else:
        print("No --pretrained_weights given: the attention maps are those of a randomly initialised model.")
        model = build_vit(args.arch or "vit_small", patch_size=args.patch_size or 8)
    for p in model.parameters():
        p.requires_grad = False
    return model.eval().to(device)


def load_image(image_path: str | None) -> Image.Image:
    if image_path is None:
        from skimage import data

        return Image.fromarray(data.astronaut()).convert("RGB")
    path = Path(image_path)
    if not path.is_file():
        raise MissingFileError(f"--image_path {image_path} is not a file")
    return load_rgb_image(path)  # 16-bit images scaled to 8 bit; a bad file is a one-line user error


def preprocess(image: Image.Image, image_size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Resize (bicubic), normalise, and crop to a multiple of the patch size: [1, 3, H, W]."""
    height, width = image_size
    resized = image.resize((width, height), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    h, w = x.shape[1] - x.shape[1] % patch_size, x.shape[2] - x.shape[2] % patch_size
    return x[:, :h, :w].unsqueeze(0)


def _overlay(image: np.ndarray, mask: np.ndarray, color: tuple[float, float, float], alpha: float = 0.5) -> np.ndarray:
    out = image.astype(np.float32).copy()
    for c in range(3):
        out[..., c] = np.where(mask, out[..., c] * (1 - alpha) + alpha * 255 * color[c], out[..., c])
    return out.clip(0, 255).astype(np.uint8)


def save_visualizations(
    img: torch.Tensor, attn: torch.Tensor, patch_size: int, output_dir: Path, threshold: float | None
) -> list[Path]:
    """Write img.png, attn-head{j}.png and (with a threshold) mask_th{t}_head{j}.png; return the paths."""
    import matplotlib  # optional dependency (requirements.txt, dev extra): only this program draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    picture = ((img[0].cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(picture).save(output_dir / "img.png")
    written.append(output_dir / "img.png")
    # nearest upsampling by the patch size, as DINO: one colour block per patch
    full = F.interpolate(attn.unsqueeze(0), scale_factor=patch_size, mode="nearest")[0].cpu().numpy()
    for j, head_map in enumerate(full):
        path = output_dir / f"attn-head{j}.png"
        plt.imsave(fname=str(path), arr=head_map, format="png")
        written.append(path)
    if threshold is not None:
        masks = threshold_masks(attn, threshold).float()
        masks = F.interpolate(masks.unsqueeze(0), scale_factor=patch_size, mode="nearest")[0].cpu().numpy() > 0.5
        colors = plt.get_cmap("tab10")
        for j, mask in enumerate(masks):
            path = output_dir / f"mask_th{threshold}_head{j}.png"
            Image.fromarray(_overlay(picture, mask, colors(j % 10)[:3])).save(path)
            written.append(path)
    return written


def visualize(args: argparse.Namespace) -> list[Path]:
    """Write the attention maps (and masks) of the image; returns the paths written."""
    device = resolve_device(args.device)
    make_output_dir(args.output_dir)  # before any work: an unusable folder is found at once
    image = load_image(args.image_path)
    model = load_model(args, device)
    args.patch_size = model.patch_size
    if args.image_size is None:  # the training resolution (random weights: upstream's 480)
        args.image_size = [model.img_size if args.pretrained_weights else 480]
        print(f"--image_size not given: {args.image_size[0]} px, the resolution the model was trained at"
              if args.pretrained_weights else "--image_size not given: 480 px")
    size = tuple(args.image_size) * 2 if len(args.image_size) == 1 else tuple(args.image_size[:2])
    img = preprocess(image, size, args.patch_size).to(device)
    if img.shape[-1] < args.patch_size or img.shape[-2] < args.patch_size:
        raise UserError(f"--image_size {args.image_size} is smaller than one patch ({args.patch_size} px)")
    attn = cls_attention_maps(model, img)
    written = save_visualizations(img, attn, args.patch_size, Path(args.output_dir), args.threshold)
    print(f"{len(written)} images written to {args.output_dir}")
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    """Parse and run `visualize`; a user error ends the program with one line."""
    return run_cli("visualize_attention.py", visualize, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
