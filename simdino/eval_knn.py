#!/usr/bin/env python
"""SimDINO (v1) weighted k-NN evaluation, DINO style: `cd simdino; python eval_knn.py --arch vit_base
--patch_size 16 --pretrained_weights D/checkpoint.pth --data_path P` or `torchrun --nproc_per_node=N
eval_knn.py ...`.

This script owns the v1 command line (upstream DINO's k-NN flags plus `--img_size`, `--output_dir`). The
v1 set-up it shares with `eval_linear.py` (backbone flags and building, the ImageFolder datasets under
`--data_path`) is `simdino.eval.setup`; the work itself is done by the shared cores in `simdinov2.eval`:
distributed feature extraction and the chunked weighted vote. Features are the final-norm CLS tokens,
L2-normalised; each k prints DINO's line `{k}-NN classifier result: Top1: {top1}, Top5: {top5}` and the
main process appends one JSON record with every k to `OUTPUT_DIR/knn_results.json`.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import pickle
import time
from collections.abc import Sequence

from simdinov2.install_hint import exit_with_install_hint

with exit_with_install_hint("eval_knn.py"):
    from simdinov2 import distributed

import torch
import torch.nn.functional as F
from torch import Tensor

from simdino.eval.setup import add_data_args, add_model_args, build_v1_eval_model, image_folder
from simdinov2 import distributed
from simdinov2.checkpoint import atomic_torch_save
from simdinov2.cli import HelpFormatter, make_output_dir, run_cli
from simdinov2.configs.validate import at_least
from simdinov2.data import make_classification_eval_transform
from simdinov2.errors import MissingFileError, UserError
from simdinov2.eval.features import extract_features, l2_normalized, make_eval_loader
from simdinov2.eval.knn import feasible_ks, format_knn_result, knn_classify_sharded
from simdinov2.eval.setup import run_main
from simdinov2.logging import append_json_lines
from simdinov2.utils.utils import bool_flag

logger = logging.getLogger("simdinov2")

FEATURE_FILES = ("trainfeat.pth", "testfeat.pth", "trainlabels.pth", "testlabels.pth")  # DINO's dump names


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "Evaluation with weighted k-NN on ImageNet", add_help=add_help, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--batch_size_per_gpu", default=128, type=int, help="images per process per forward pass"
    )
    parser.add_argument(
        "--nb_knn",
        default=[10, 20, 100, 200],
        nargs="+",
        type=int,
        help="numbers of nearest neighbours (20 is usually best); k above the training-set size is "
        "skipped with a warning",
    )
    parser.add_argument(
        "--temperature", default=0.07, type=float, help="temperature T of the exp(sim/T) vote"
    )
    parser.add_argument(
        "--use_cuda",
        default=True,
        type=bool_flag,
        help="keep the feature banks on the GPU and vote there; set to False if the banks do not "
        "fit in GPU memory. Without CUDA the CPU is used (one log line says so)",
    )
    add_model_args(parser)
    add_data_args(parser)
    parser.add_argument(
        "--dump_features",
        default=None,
        help="folder where the computed features are saved (trainfeat.pth, testfeat.pth, "
        "trainlabels.pth, testlabels.pth)",
    )
    parser.add_argument(
        "--load_features",
        default=None,
        help="folder of features saved by --dump_features: skips the model and the images",
    )
    parser.add_argument(
        "--output_dir",
        default=None,
        type=str,
        help="where knn_results.json (one JSON record per run with every k) is appended; default: "
        "the folder of --pretrained_weights, or --load_features",
    )
    return parser


def _storage_device(use_cuda: bool) -> torch.device:
    if use_cuda and not torch.cuda.is_available():
        logger.info(
            "--use_cuda true but CUDA is not available: features are kept and the k-NN runs on the CPU"
        )
    if use_cuda and torch.cuda.is_available():
        return distributed.get_device() if distributed.get_device().type == "cuda" else torch.device("cuda")
    return torch.device("cpu")


def compute_features(
    args: argparse.Namespace, storage: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train features, test features, train labels, test labels), features L2-normalised."""
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
    return (
        train_features.to(storage),
        test_features.to(storage),
        train_labels.to(storage),
        test_labels.to(storage),
    )


def _load_bank(path: str) -> Tensor:
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise UserError(
            f"--load_features: {path} is corrupt or cut short ({' '.join(str(e).split())[:120]}); "
            "dump the features again with --dump_features"
        ) from None
    if not isinstance(tensor, Tensor):
        raise UserError(
            f"--load_features: {path} holds a {type(tensor).__name__}, not a tensor; dump the features "
            "again with --dump_features"
        )
    return tensor


def load_features(folder: str, storage: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    missing = [name for name in FEATURE_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise MissingFileError(
            f"--load_features {folder} lacks {', '.join(missing)} (written by --dump_features)"
        )
    tensors = [_load_bank(os.path.join(folder, name)) for name in FEATURE_FILES]
    train_features, test_features, train_labels, test_labels = (t.to(storage) for t in tensors)
    if (
        train_features.ndim != 2
        or test_features.ndim != 2
        or train_features.shape[1] != test_features.shape[1]
        or len(train_labels) != len(train_features)
        or len(test_labels) != len(test_features)
    ):
        raise UserError(
            f"--load_features {folder}: the features are not two [N, D] banks of one width with one "
            "label per row; dump them again with --dump_features"
        )
    # Idempotent for our dumps; makes upstream dumps and hand-made banks valid cosine-similarity inputs.
    return (
        F.normalize(train_features.float(), dim=1),
        F.normalize(test_features.float(), dim=1),
        train_labels.long(),
        test_labels.long(),
    )


def main(args: argparse.Namespace) -> dict[int, tuple[float, float]]:
    if args.temperature <= 0:
        raise UserError(f"--temperature must be > 0 (got {args.temperature})")
    at_least(1)("--batch_size_per_gpu", args.batch_size_per_gpu)
    if args.output_dir and distributed.is_main_process():
        make_output_dir(args.output_dir)  # before any work: an unusable folder is found at once
    start = time.time()
    storage = _storage_device(args.use_cuda)
    if args.load_features:
        train_features, test_features, train_labels, test_labels = load_features(args.load_features, storage)
    else:
        train_features, test_features, train_labels, test_labels = compute_features(args, storage)
        if args.dump_features and distributed.is_main_process():
            make_output_dir(args.dump_features)
            for name, tensor in zip(
                FEATURE_FILES, (train_features, test_features, train_labels, test_labels), strict=True
            ):
                atomic_torch_save(
                    tensor.cpu(), os.path.join(args.dump_features, name)
                )  # a full disk: one line
            logger.info("features saved to %s", args.dump_features)
    logger.info(
        "Features are ready! Starting k-NN classification (%d train, %d test, dim %d).",
        train_features.shape[0],
        test_features.shape[0],
        train_features.shape[1],
    )
    ks = feasible_ks(args.nb_knn, train_features.shape[0])
    results = knn_classify_sharded(
        train_features, train_labels, test_features, test_labels, ks, args.temperature
    )
    if distributed.is_main_process():
        for k, (top1, top5) in results.items():
            print(format_knn_result(k, top1, top5), flush=True)
        output_dir = args.output_dir or os.path.dirname(
            os.path.abspath(args.load_features or args.pretrained_weights)
        )
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
        append_json_lines(os.path.join(output_dir, "knn_results.json"), [record])
        logger.info(
            "k-NN done in %.0f s; record appended to %s",
            time.time() - start,
            os.path.join(output_dir, "knn_results.json"),
        )
    distributed.barrier()
    return results


def cli(argv: Sequence[str] | None = None) -> int:
    """Parse, join the process group (torchrun / SLURM / none), run `main`; a user error is one line."""
    run_cli("eval_knn.py", run_main, main, get_args_parser().parse_args(argv), log_to_output_dir=False)
    return 0


if __name__ == "__main__":
    cli()
