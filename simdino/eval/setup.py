"""Set-up shared by the v1 evaluation programs (`simdino/eval_knn.py`, `simdino/eval_linear.py`).

Owns: DINO's backbone flags (`--arch --patch_size --pretrained_weights --checkpoint_key`, plus
`--img_size`), building the frozen backbone those flags name (a ViT read from the checkpoint's own
tensors, flags checked against them, or a torchvision convnet), the evaluation crop size (the training
crop a checkpoint of this repository stores, else 224), the `train/` / `val/` ImageFolder datasets under
`--data_path`. The process group and logging are started by `simdinov2.eval.setup.run_main`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simdino.train.multicrop import TORCHVISION_ARCHS, VIT_ARCHS, build_backbone
from simdinov2.checkpoint import load_backbone_weights
from simdinov2.data import ImageFolderDataset
from simdinov2.errors import MissingFileError, UserError
from simdinov2.eval import backbone

logger = logging.getLogger("simdinov2")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The backbone flags common to the v1 evaluations. A ViT's architecture is read from the checkpoint;
    --arch / --patch_size, when given, are checked against it."""
    parser.add_argument(
        "--arch",
        default=None,
        type=str,
        choices=VIT_ARCHS + TORCHVISION_ARCHS,
        metavar="ARCH",
        help="architecture of the evaluated backbone: vit_tiny, vit_small, vit_base, vit_large, "
        "vit_giant2 or a torchvision convnet (resnet50, ...). Default: the ViT the checkpoint "
        "holds (width, depth, registers, LayerScale read from its tensors); a given ViT arch "
        "must agree with the weights. Required for convnets",
    )
    parser.add_argument(
        "--patch_size",
        default=None,
        type=int,
        help="patch resolution of the ViT (default: the checkpoint's; checked when given)",
    )
    parser.add_argument(
        "--pretrained_weights",
        default="",
        type=str,
        help="checkpoint to evaluate (main_dino.py's checkpoint.pth, a v2 teacher_checkpoint.pth, "
        "a released checkpoint, ...)",
    )
    parser.add_argument(
        "--checkpoint_key",
        default="teacher",
        type=str,
        help='key of the checkpoint holding the backbone (e.g. "teacher" or "student")',
    )
    parser.add_argument(
        "--img_size",
        default=None,
        type=int,
        help="evaluation crop: images are resized to img_size*8/7 (256 for 224) and centre-cropped. "
        "Default: the training crop stored in the checkpoint's args (main_dino.py runs), "
        "else 224",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The dataset and launcher flags common to the v1 evaluations (DINO's names)."""
    parser.add_argument(
        "--dist_url",
        default="env://",
        type=str,
        help="kept for DINO compatibility; the process group always uses env:// (torchrun / SLURM)",
    )
    parser.add_argument(
        "--local_rank", "--local-rank", default=0, type=int, help="set by the launcher; ignored"
    )
    parser.add_argument(
        "--data_path",
        default="",
        type=str,
        help="folder with train/ and val/ ImageFolder trees (one sub-folder per class)",
    )
    parser.add_argument("--num_workers", default=10, type=int, help="data-loading workers per process")


def _resolve_img_size(args: argparse.Namespace, checkpoint: Any) -> None:
    if args.img_size is None:
        trained_at = backbone.training_crop_size(checkpoint)
        args.img_size = trained_at or 224
        origin = (
            "the training crop stored in the checkpoint"
            if trained_at
            else "the default; the checkpoint stores none"
        )
        logger.info("evaluation crop %d px (%s; --img_size changes it)", args.img_size, origin)
    if args.img_size <= 0:
        raise UserError(f"--img_size must be positive (got {args.img_size})")


def build_v1_eval_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The backbone of `--pretrained_weights`, frozen, on `device`: a ViT built from the checkpoint's own
    tensors (flags checked against them), or the torchvision convnet `--arch` names. Fills in
    `args.arch`, `args.patch_size` and `args.img_size` from the checkpoint when they were not given."""
    if not args.pretrained_weights:
        raise UserError(
            "--pretrained_weights is required: the checkpoint to evaluate (e.g. OUTPUT_DIR/checkpoint.pth)"
        )
    if not os.path.exists(args.pretrained_weights):
        raise MissingFileError(f"--pretrained_weights {args.pretrained_weights} does not exist")
    checkpoint = backbone.read_checkpoint(args.pretrained_weights)
    _resolve_img_size(args, checkpoint)
    if args.arch in TORCHVISION_ARCHS:
        backbone_args = argparse.Namespace(
            arch=args.arch, patch_size=args.patch_size, global_crops_size=args.img_size
        )
        model, _ = build_backbone(backbone_args, drop_path_rate=0.0)
        report = load_backbone_weights(model, checkpoint, checkpoint_key=args.checkpoint_key, verbose=False)
        logger.info("Pretrained weights found at %s: %s", args.pretrained_weights, report.summary())
        model.requires_grad_(False)
        model.eval()
    else:
        check = backbone.check_v1_arch_flags(args.arch, args.patch_size, args.pretrained_weights)
        model, config = backbone.build_eval_backbone(
            checkpoint, args.checkpoint_key, args.pretrained_weights, check=check
        )
        args.arch = args.arch or config["arch"] or f"vit (width {config['embed_dim']})"
        args.patch_size = config["patch_size"]
    return model.to(device)


def image_folder(data_path: str, split: str, transform: Any) -> ImageFolderDataset:
    """`data_path/split` as an ImageFolder dataset, with a one-line error when it is missing."""
    if not data_path:
        raise UserError("--data_path is required: a folder holding train/ and val/ ImageFolder trees")
    root = Path(data_path).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"--data_path {data_path} does not exist")
    if not (root / split).is_dir():
        raise MissingFileError(
            f"--data_path {data_path} has no {split}/ folder (expected {data_path}/train and "
            f"{data_path}/val, one sub-folder per class)"
        )
    return ImageFolderDataset(str(root / split), transform=transform)
