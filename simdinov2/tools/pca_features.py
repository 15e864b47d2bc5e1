"""Patch-feature PCA pictures of any checkpoint, as DINOv2's demo notebook draws them:

    python -m simdinov2.tools.pca_features --pretrained_weights CKPT --image_path IMG [IMG ...] --output_dir DIR

writes DIR/<image name>_pca.png per image: the first 3 principal components of its final-norm patch tokens
as RGB, the background (patches whose first component, scaled to [0, 1] with the image border low, is
below --threshold) black. One PCA is fitted on all the images together, so the same part gets the same
colour across images. CKPT is any checkpoint the shared loader reads (v1 checkpoint.pth, v2 teacher
snapshots, DCP folders, released files, exports), a URL, or a release name of hubconf.py
(e.g. simdinov2_vitb16). The method lives in `simdinov2.eval.patch_pca`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simdinov2.cli import HelpFormatter, make_output_dir, run_cli
from simdinov2.data.datasets import load_rgb_image
from simdinov2.distributed import resolve_device
from simdinov2.errors import MissingFileError, UserError
from simdinov2.eval.attention_maps import (
    add_backbone_args,
    check_image_size,
    check_threshold,
    image_to_input,
    load_pretrained_backbone,
)
from simdinov2.eval.patch_pca import DEFAULT_THRESHOLD, patch_token_grid, pca_pictures, save_png, to_image


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simdinov2.tools.pca_features",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_backbone_args(parser)
    parser.add_argument("--image_path", nargs="+", required=True, help="One or more images.")
    parser.add_argument("--output_dir", default=".", help="Folder for the <image name>_pca.png pictures.")
    parser.add_argument(
        "--image_size",
        default=[448],
        type=int,
        nargs="+",
        help="Resize before the model: one value for the shorter side, two for height and width "
        "(cut to a multiple of the patch size). Default: 448.",
    )
    parser.add_argument(
        "--threshold",
        default=DEFAULT_THRESHOLD,
        type=float,
        help="Background threshold on the first principal component scaled to [0, 1] (image "
        "border low): patches below it are black. 0 keeps every patch. Default: %(default)s.",
    )
    return parser


def output_names(paths: list[Path]) -> list[str]:
    """<stem>_pca.png per image, numbered where two images share a name."""
    names, seen = [], set()
    for i, path in enumerate(paths):
        name = f"{path.stem}_pca.png"
        if name in seen:
            name = f"{path.stem}_{i}_pca.png"
        seen.add(name)
        names.append(name)
    return names


def write_pca_pictures(args: argparse.Namespace) -> list[Path]:
    check_threshold(args.threshold, "a fraction of the first component's range (0 keeps every patch)")
    check_image_size(args.image_size, "--image_size")
    if not args.pretrained_weights:
        raise UserError("no --pretrained_weights given: pass a checkpoint, a URL or a release name")
    paths = [Path(p) for p in args.image_path]
    for path in paths:
        if not path.is_file():
            raise MissingFileError(f"--image_path {path} is not a file")
    output_dir = make_output_dir(args.output_dir)
    device = resolve_device(args.device)
    model = load_pretrained_backbone(
        args.pretrained_weights, args.checkpoint_key, args.arch, args.patch_size, device
    )
    inputs = [image_to_input(load_rgb_image(p), model.patch_size, args.image_size) for p in paths]
    grids = [patch_token_grid(model, img.to(device)).cpu() for img in inputs]
    written = []
    for img, picture, name in zip(
        inputs, pca_pictures(grids, args.threshold), output_names(paths), strict=True
    ):
        written.append(save_png(to_image(picture, img.shape[-2], img.shape[-1]), output_dir / name))
    print(f"{len(written)} PCA pictures written to {output_dir}")
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    return run_cli("pca_features", write_pca_pictures, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
