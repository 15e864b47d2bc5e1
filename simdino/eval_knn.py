#!/usr/bin/env python
"""SimDINO (v1) weighted k-NN evaluation, DINO style: `cd simdino; python eval_knn.py --arch vit_base
--patch_size 16 --pretrained_weights D/checkpoint.pth --data_path P` or `torchrun --nproc_per_node=N
eval_knn.py ...`.

This script owns the v1 command line (REFERENCE.md §2 flags plus `--img_size`, `--output_dir`) and the
v1 glue shared with `eval_linear.py` (building the backbone, loading the weights, the ImageFolder
datasets under `--data_path`). The work itself is done by the shared cores in `simdinov2.eval`:
distributed feature extraction and the chunked weighted vote. Features are the final-norm CLS tokens,
L2-normalised; each k prints DINO's line `{k}-NN classifier result: Top1: {top1}, Top5: {top5}` and the
main process appends one JSON record with every k to `OUTPUT_DIR/knn_results.json`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Run from inside `simdino/` without `pip install -e .`: make the repository root importable.
if importlib.util.find_spec("simdinov2") is None:  # pragma: no cover - depends on the install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from simdinov2 import distributed  # noqa: E402
from simdinov2.cli import make_output_dir  # noqa: E402
from simdinov2.eval.backbone import (  # noqa: E402
    build_eval_backbone,
    check_v1_arch_flags,
    read_checkpoint,
    training_crop_size,
)
from simdinov2.eval.features import extract_features, l2_normalized, make_eval_loader  # noqa: E402
from simdinov2.eval.knn import feasible_ks, format_knn_result, knn_classify_sharded  # noqa: E402
from simdinov2.logging import setup_logging  # noqa: E402
from simdinov2.utils.utils import bool_flag  # noqa: E402

logger = logging.getLogger("simdinov2")

FEATURE_FILES = ("trainfeat.pth", "testfeat.pth", "trainlabels.pth", "testlabels.pth")  # DINO's dump names
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)


# ------------------------------------------------------------------------------ v1 glue (also eval_linear)
def arch_choices() -> list[str]:
    from simdinov2.train.multicrop import TORCHVISION_ARCHS, VIT_ARCHS

    return VIT_ARCHS + TORCHVISION_ARCHS


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The backbone flags common to the v1 evaluations. A ViT's architecture is read from the checkpoint;
    --arch / --patch_size, when given, are checked against it."""
    parser.add_argument("--arch", default=None, type=str, choices=arch_choices(), metavar="ARCH",
                        help="architecture of the evaluated backbone: vit_tiny, vit_small, vit_base, vit_large, "
                             "vit_giant2 or a torchvision convnet (resnet50, ...). Default: the ViT the checkpoint "
                             "holds (width, depth, registers, LayerScale read from its tensors); a given ViT arch "
                             "must agree with the weights. Required for convnets")
    parser.add_argument("--patch_size", default=None, type=int,
                        help="patch resolution of the ViT (default: the checkpoint's; checked when given)")
    parser.add_argument("--pretrained_weights", default="", type=str,
                        help="checkpoint to evaluate (main_dino.py's checkpoint.pth, a v2 teacher_checkpoint.pth, "
                             "a released checkpoint, ...)")
    parser.add_argument("--checkpoint_key", default="teacher", type=str,
                        help='key of the checkpoint holding the backbone (e.g. "teacher" or "student")')
    parser.add_argument("--img_size", default=None, type=int,
                        help="evaluation crop: images are resized to img_size*8/7 (256 for 224) and centre-cropped. "
                             "Default: the training crop stored in the checkpoint's args (main_dino.py runs), "
                             "else 224")


def _resolve_img_size(args: argparse.Namespace, checkpoint: Any) -> None:
    if args.img_size is None:
        trained_at = training_crop_size(checkpoint)
        args.img_size = trained_at or 224
        origin = "the training crop stored in the checkpoint" if trained_at else "the default; the checkpoint stores none"
        logger.info("evaluation crop %d px (%s; --img_size changes it)", args.img_size, origin)
    if args.img_size <= 0:
        raise ValueError(f"--img_size must be positive (got {args.img_size})")


def build_v1_eval_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The backbone of `--pretrained_weights`, frozen, on `device`: a ViT built from the checkpoint's own
    tensors (flags checked against them), or the torchvision convnet `--arch` names. Fills in
    `args.arch`, `args.patch_size` and `args.img_size` from the checkpoint when they were not given."""
    from simdinov2.checkpoint import load_backbone_weights
    from simdinov2.train.multicrop import TORCHVISION_ARCHS, build_backbone

    if not args.pretrained_weights:
        raise ValueError("--pretrained_weights is required: the checkpoint to evaluate (e.g. OUTPUT_DIR/checkpoint.pth)")
    if not os.path.exists(args.pretrained_weights):
        raise FileNotFoundError(f"--pretrained_weights {args.pretrained_weights} does not exist")
    checkpoint = read_checkpoint(args.pretrained_weights)
    _resolve_img_size(args, checkpoint)
    if args.arch in TORCHVISION_ARCHS:
        backbone_args = argparse.Namespace(arch=args.arch, patch_size=args.patch_size, global_crops_size=args.img_size)
        model, _ = build_backbone(backbone_args, drop_path_rate=0.0)
        report = load_backbone_weights(model, checkpoint, checkpoint_key=args.checkpoint_key, verbose=False)
        logger.info("Pretrained weights found at %s: %s", args.pretrained_weights, report.summary())
        model.requires_grad_(False)
        model.eval()
    else:
        model, config = build_eval_backbone(checkpoint, args.checkpoint_key, args.pretrained_weights,
                                            check=check_v1_arch_flags(args.arch, args.patch_size,
                                                                      args.pretrained_weights))
        args.arch = args.arch or config["arch"] or f"vit (width {config['embed_dim']})"
        args.patch_size = config["patch_size"]
    return model.to(device)


def image_folder(data_path: str, split: str, transform: Any):
    """`data_path/split` as an ImageFolder dataset, with a one-line error when it is missing."""
    from simdinov2.data import ImageFolderDataset

    if not data_path:
        raise ValueError("--data_path is required: a folder holding train/ and val/ ImageFolder trees")
    root = Path(data_path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data_path {data_path} does not exist")
    if not (root / split).is_dir():
        raise FileNotFoundError(f"--data_path {data_path} has no {split}/ folder (expected {data_path}/train and "
                                f"{data_path}/val, one sub-folder per class)")
    return ImageFolderDataset(str(root / split), transform=transform)


def run_v1_cli(parser: argparse.ArgumentParser, main, argv: Sequence[str] | None = None) -> int:
    """Parse, start the process group (torchrun / SLURM / single process), run; a user error ends
    the run with one line and exit code 1."""
    args = parser.parse_args(argv)
    try:
        distributed.init_distributed("auto")
        setup_logging(None)
        main(args)
        return 0
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise SystemExit(f"error: {message}") from None
    finally:
        distributed.destroy()


# ---------------------------------------------------------------------------------------------- k-NN
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Evaluation with weighted k-NN on ImageNet", add_help=add_help)
    parser.add_argument("--batch_size_per_gpu", default=128, type=int, help="images per process per forward pass")
    parser.add_argument("--nb_knn", default=[10, 20, 100, 200], nargs="+", type=int,
                        help="numbers of nearest neighbours (20 is usually best); k above the training-set size is "
                             "skipped with a warning")
    parser.add_argument("--temperature", default=0.07, type=float, help="temperature T of the exp(sim/T) vote")
    parser.add_argument("--use_cuda", default=True, type=bool_flag,
                        help="keep the feature banks on the GPU and vote there; set to False if the banks do not "
                             "fit in GPU memory. Without CUDA the CPU is used (one log line says so)")
    add_model_args(parser)
    parser.add_argument("--dump_features", default=None,
                        help="folder where the computed features are saved (trainfeat.pth, testfeat.pth, "
                             "trainlabels.pth, testlabels.pth)")
    parser.add_argument("--load_features", default=None,
                        help="folder of features saved by --dump_features: skips the model and the images")
    parser.add_argument("--num_workers", default=10, type=int, help="data-loading workers per process")
    parser.add_argument("--dist_url", default="env://", type=str,
                        help="kept for DINO compatibility; the process group always uses env:// (torchrun / SLURM)")
    parser.add_argument("--local_rank", "--local-rank", default=0, type=int, help="set by the launcher; ignored")
    parser.add_argument("--data_path", default="", type=str,
                        help="folder with train/ and val/ ImageFolder trees (one sub-folder per class)")
    parser.add_argument("--output_dir", default=None, type=str,
                        help="where knn_results.json (one JSON record per run with every k) is appended; default: "
                             "the folder of --pretrained_weights, or --load_features")
    return parser


def _storage_device(use_cuda: bool) -> torch.device:
    if use_cuda and not torch.cuda.is_available():
        logger.info("--use_cuda true but CUDA is not available: features are kept and the k-NN runs on the CPU")
    if use_cuda and torch.cuda.is_available():
        return distributed.get_device() if distributed.get_device().type == "cuda" else torch.device("cuda")
    return torch.device("cpu")


def compute_features(args: argparse.Namespace, storage: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train features, test features, train labels, test labels), features L2-normalised."""
    from simdinov2.data import make_classification_eval_transform

    device = distributed.get_device()
    model = build_v1_eval_model(args, device)
    transform = make_classification_eval_transform(crop_size=args.img_size)
    dataset_train = image_folder(args.data_path, "train", transform)
    dataset_val = image_folder(args.data_path, "val", transform)
    logger.info("Data loaded with %d train and %d val imgs.", len(dataset_train), len(dataset_val))

    features_of = l2_normalized(model)
    gather_on_cpu = storage.type == "cpu"
    results = []
    for name, dataset in (("train", dataset_train), ("val", dataset_val)):
        logger.info("Extracting features for %s set...", name)
        loader = make_eval_loader(dataset, args.batch_size_per_gpu, args.num_workers)
        results.append(extract_features(features_of, loader, gather_on_cpu=gather_on_cpu, device=device))
    (train_features, train_labels), (test_features, test_labels) = results
    return train_features.to(storage), test_features.to(storage), train_labels.to(storage), test_labels.to(storage)


def load_features(folder: str, storage: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    missing = [name for name in FEATURE_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(f"--load_features {folder} lacks {', '.join(missing)} (written by --dump_features)")
    tensors = [torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True) for name in FEATURE_FILES]
    train_features, test_features, train_labels, test_labels = (t.to(storage) for t in tensors)
    # Idempotent for our dumps; makes upstream dumps and hand-made banks valid cosine-similarity inputs.
    return F.normalize(train_features.float(), dim=1), F.normalize(test_features.float(), dim=1), \
        train_labels.long(), test_labels.long()


def main(args: argparse.Namespace) -> dict[int, tuple[float, float]]:
    if args.temperature <= 0:
        raise ValueError(f"--temperature must be > 0 (got {args.temperature})")
    if args.output_dir and distributed.is_main_process():
        make_output_dir(args.output_dir)  # before any work: an unusable folder is found at once
    start = time.time()
    storage = _storage_device(args.use_cuda)
    if args.load_features:
        train_features, test_features, train_labels, test_labels = load_features(args.load_features, storage)
    else:
        train_features, test_features, train_labels, test_labels = compute_features(args, storage)
        if args.dump_features and distributed.is_main_process():
            os.makedirs(args.dump_features, exist_ok=True)
            for name, tensor in zip(FEATURE_FILES, (train_features, test_features, train_labels, test_labels)):
                torch.save(tensor.cpu(), os.path.join(args.dump_features, name))
            logger.info("features saved to %s", args.dump_features)
    logger.info("Features are ready! Starting k-NN classification (%d train, %d test, dim %d).",
                train_features.shape[0], test_features.shape[0], train_features.shape[1])
    ks = feasible_ks(args.nb_knn, train_features.shape[0])
    results = knn_classify_sharded(train_features, train_labels, test_features, test_labels, ks, args.temperature)
    if distributed.is_main_process():
        for k, (top1, top5) in results.items():
            print(format_knn_result(k, top1, top5), flush=True)
        output_dir = args.output_dir or os.path.dirname(os.path.abspath(args.load_features or args.pretrained_weights))
        make_output_dir(output_dir)
        record = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "pretrained_weights": args.pretrained_weights or None,
            "load_features": args.load_features,
            "checkpoint_key": args.checkpoint_key,
            "arch": args.arch,
            "patch_size": args.patch_size,
            "img_size": args.img_size,
            "data_path": args.data_path or None,
            "temperature": args.temperature,
            "n_train": int(train_features.shape[0]),
            "n_test": int(test_features.shape[0]),
            "results": {str(k): {"top1": top1, "top5": top5} for k, (top1, top5) in results.items()},
        }
        with open(os.path.join(output_dir, "knn_results.json"), "a") as f:
            f.write(json.dumps(record) + "\n")
        logger.info("k-NN done in %.0f s; record appended to %s", time.time() - start,
                    os.path.join(output_dir, "knn_results.json"))
    distributed.barrier()
    return results


if __name__ == "__main__":
    run_v1_cli(get_args_parser(), main)
