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

from simdinov2.install_hint import exit_with_install_hint

with exit_with_install_hint("visualize_attention.py"):
    from simdinov2.cli import run_cli

import torch
from PIL import Image

from simdinov2.cli import HelpFormatter, make_output_dir
from simdinov2.data.datasets import load_rgb_image
from simdinov2.distributed import resolve_device
from simdinov2.errors import MissingFileError
from simdinov2.eval.attention_maps import (
    add_backbone_args,
    check_image_size,
    check_threshold,
    cls_attention_maps,
    image_to_input,
    input_picture,
    load_pretrained_backbone,
    overlay_masks,
    threshold_masks,
    to_pixels,
)
from simdinov2.io.atomic import atomic_write_drawing
from simdinov2.models import DinoVisionTransformer

logger = logging.getLogger("simdinov2")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "Visualize Self-Attention maps", add_help=add_help, formatter_class=HelpFormatter
    )
    add_backbone_args(parser)
    parser.add_argument(
        "--image_path",
        default=None,
        type=str,
        help="Path of the image to load (default: scikit-image's astronaut photo).",
    )
    parser.add_argument(
        "--image_size",
        default=None,
        type=int,
        nargs="+",
        help="""Resize image (one or two values).
        Default: the resolution the model was trained at, as its checkpoint tells it (its position embedding's
        grid x patch size: 28 for a 28-px run, 224 for upstream's ViTs); 480 without --pretrained_weights.""",
    )
    parser.add_argument("--output_dir", default=".", help="Path where to save visualizations.")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="""We visualize masks
        obtained by thresholding the self-attention maps to keep xx%% of the mass.""",
    )
    return parser


def load_model(args: argparse.Namespace, device: torch.device) -> DinoVisionTransformer:
    """The ViT with `--pretrained_weights` loaded strictly (architecture read from the weights; --arch and
    --patch_size, when given, must agree), or random weights with a warning when no weights are given."""
    return load_pretrained_backbone(
        args.pretrained_weights, args.checkpoint_key, args.arch, args.patch_size, device
    )


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
    return image_to_input(image, patch_size, image_size)


def save_visualizations(
    img: torch.Tensor, attn: torch.Tensor, patch_size: int, output_dir: Path, threshold: float | None
) -> list[Path]:
    """Write img.png, attn-head{j}.png and (with a threshold) mask_th{t}_head{j}.png; return the paths."""
    import matplotlib  # optional dependency (requirements.txt, dev extra): only this program draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    picture = input_picture(img)
    atomic_write_drawing(output_dir / "img.png", lambda f: Image.fromarray(picture).save(f, format="png"))
    written = [output_dir / "img.png"]
    for j, head_map in enumerate(to_pixels(attn, patch_size)):
        path = output_dir / f"attn-head{j}.png"
        atomic_write_drawing(
            path, lambda f, head_map=head_map: plt.imsave(fname=f, arr=head_map, format="png")
        )
        written.append(path)
    if threshold is not None:
        masks = to_pixels(threshold_masks(attn, threshold), patch_size) > 0.5
        for j, tinted in enumerate(overlay_masks(picture, masks)):
            path = output_dir / f"mask_th{threshold}_head{j}.png"
            atomic_write_drawing(path, lambda f, tinted=tinted: Image.fromarray(tinted).save(f, format="png"))
            written.append(path)
    return written


def visualize(args: argparse.Namespace) -> list[Path]:
    """Write the attention maps (and masks) of the image; returns the paths written."""
    check_threshold(args.threshold)
    check_image_size(args.image_size, "--image_size")
    device = resolve_device(args.device)
    make_output_dir(args.output_dir)  # before any work: an unusable folder is found at once
    image = load_image(args.image_path)
    model = load_model(args, device)
    args.patch_size = model.patch_size
    if args.image_size is None:  # the training resolution (random weights: upstream's 480)
        args.image_size = [model.img_size if args.pretrained_weights else 480]
        print(
            f"--image_size not given: {args.image_size[0]} px, the resolution the model was trained at"
            if args.pretrained_weights
            else "--image_size not given: 480 px"
        )
    size = tuple(args.image_size) * 2 if len(args.image_size) == 1 else tuple(args.image_size[:2])
    img = preprocess(image, size, args.patch_size).to(device)  # one line when smaller than a patch
    attn = cls_attention_maps(model, img)
    written = save_visualizations(img, attn, args.patch_size, Path(args.output_dir), args.threshold)
    print(f"{len(written)} images written to {args.output_dir}")
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    """Parse and run `visualize`; a user error ends the program with one line."""
    return run_cli("visualize_attention.py", visualize, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
