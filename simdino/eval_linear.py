#!/usr/bin/env python
"""SimDINO (v1) linear probing, DINO style: `cd simdino; python eval_linear.py --arch vit_base
--patch_size 16 --pretrained_weights D/checkpoint.pth --data_path P` or `torchrun --nproc_per_node=N
eval_linear.py ...`.

This script owns the v1 command line (upstream DINO's linear-probe flags plus `--img_size`) and the epoch
loop. The classifier, the frozen feature model and the train / evaluation steps are the shared core of
`simdinov2.eval.linear`; the backbone, weights and datasets come through `simdino.eval.setup`.

One linear layer on the concatenated CLS tokens of the last `--n_last_blocks` blocks (plus the mean
patch token with `--avgpool_patchtokens true`), SGD momentum 0.9, lr `--lr` × global batch / 256 with a
per-epoch cosine decay to 0. Files in `--output_dir`: `checkpoint.pth.tar` (`epoch` (next epoch),
`state_dict`, `optimizer`, `scheduler`, `best_acc`; written atomically, resumed automatically) and
`log.txt` (one JSON line per epoch). `--evaluate` only evaluates the classifier of
`output_dir/checkpoint.pth.tar` (or `--linear_weights`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from simdinov2.install_hint import exit_with_install_hint

with exit_with_install_hint("eval_linear.py"):
    from simdinov2 import distributed

import torch
from torch import nn

from simdino.eval.setup import add_data_args, add_model_args, build_v1_eval_model, image_folder
from simdinov2 import data
from simdinov2.checkpoint import atomic_torch_save, safe_torch_load
from simdinov2.cli import HelpFormatter, make_output_dir, run_cli
from simdinov2.errors import MissingFileError, NonFiniteLossError, UserError
from simdinov2.eval import linear as probe
from simdinov2.eval.backbone import default_output_dir, read_checkpoint, training_crop_size
from simdinov2.eval.features import make_eval_loader
from simdinov2.eval.setup import run_main
from simdinov2.logging import LengthEstimate, MetricLogger, append_json_lines, resume_records
from simdinov2.utils.utils import bool_flag, fix_random_seeds

logger = logging.getLogger("simdinov2")

CHECKPOINT_NAME = "checkpoint.pth.tar"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "Evaluation with linear classification on ImageNet", add_help=add_help, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--n_last_blocks",
        default=4,
        type=int,
        help="concatenate the CLS tokens of the last n blocks (DINO: 4 for ViT-S, 1 for ViT-B)",
    )
    parser.add_argument(
        "--avgpool_patchtokens",
        default=False,
        type=bool_flag,
        help="also concatenate the mean patch token of the last block (DINO: False for ViT-S, "
        "True for ViT-B)",
    )
    add_model_args(parser)
    add_data_args(parser)
    parser.add_argument("--epochs", default=100, type=int, help="number of training epochs")
    parser.add_argument(
        "--lr",
        default=0.001,
        type=float,
        help="learning rate at batch size 256 (scaled linearly with the global batch size)",
    )
    parser.add_argument(
        "--batch_size_per_gpu", default=128, type=int, help="images per process per iteration"
    )
    parser.add_argument("--val_freq", default=1, type=int, help="epoch frequency of the validation")
    parser.add_argument(
        "--output_dir",
        default=None,
        help="where checkpoint.pth.tar and log.txt are written (default: eval_linear/ next to "
        "--pretrained_weights, e.g. OUTPUT_DIR/eval_linear for OUTPUT_DIR/checkpoint.pth)",
    )
    parser.add_argument(
        "--num_labels",
        default=None,
        type=int,
        help="number of classes of the linear layer (default: the number of class folders of "
        "the dataset; a different value is refused)",
    )
    parser.add_argument(
        "--evaluate",
        dest="evaluate",
        action="store_true",
        help="only evaluate the trained classifier (output_dir/checkpoint.pth.tar or --linear_weights)",
    )
    parser.add_argument(
        "--linear_weights",
        default=None,
        type=str,
        help="classifier checkpoint for --evaluate (default: output_dir/checkpoint.pth.tar)",
    )
    parser.add_argument("--seed", default=0, type=int, help="seed of the classifier init and data order")
    return parser


def _validate(args: argparse.Namespace) -> None:
    for flag in ("epochs", "batch_size_per_gpu", "val_freq", "num_labels", "n_last_blocks"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be >= 1 (got {getattr(args, flag)})")
    if args.lr <= 0:
        raise UserError(f"--lr must be > 0 (got {args.lr})")


def _classifier_state(checkpoint: dict) -> dict:
    """The classifier weights, without the `module.` prefix DDP-saved (upstream) checkpoints carry."""
    return {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}


def _load_checkpoint(path: str, needed: tuple[str, ...] = ("state_dict",)) -> dict:
    checkpoint = safe_torch_load(path)
    missing = [key for key in needed if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise UserError(f"{path} is not a linear-probe checkpoint (no {', '.join(missing)} entry)")
    return checkpoint


def _load_classifier(classifier: probe.LinearClassifier, state: dict, source: str) -> None:
    try:
        classifier.load_state_dict(state)
    except RuntimeError:
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        raise UserError(
            f"{source} holds a classifier of shape {shapes.get('linear.weight')} but this run needs "
            f"{tuple(classifier.linear.weight.shape)} (check --num_labels, --n_last_blocks, --avgpool_patchtokens, "
            "--arch)"
        ) from None


def resolve_num_labels(args: argparse.Namespace, train_dataset, val_dataset) -> int:
    """The classifier's number of classes: the dataset's class folders, which a given --num_labels must
    match (a larger head trains silently on absent classes; a smaller one cannot take the labels)."""
    reference = train_dataset if train_dataset is not None else val_dataset
    if train_dataset is not None and list(train_dataset.classes) != list(val_dataset.classes):
        only_train = sorted(set(train_dataset.classes) - set(val_dataset.classes))[:3]
        only_val = sorted(set(val_dataset.classes) - set(train_dataset.classes))[:3]
        raise UserError(
            f"{args.data_path}/train has {len(train_dataset.classes)} class folders and {args.data_path}/val "
            f"{len(val_dataset.classes)}, not the same ones (only in train: {only_train or 'none'}, only in val: "
            f"{only_val or 'none'}); both need the same class sub-folders"
        )
    found = len(reference.classes)
    if args.num_labels is None:
        logger.info(
            "%d classes in %s: a %d-way linear classifier (--num_labels changes it)",
            found,
            reference.root,
            found,
        )
        return found
    if args.num_labels != found:
        raise UserError(
            f"--num_labels {args.num_labels} does not match the {found} class folders of {reference.root}: drop "
            f"--num_labels (the dataset's count is used) or pass --num_labels {found}"
        )
    return found


def _build_probe(args: argparse.Namespace, device: torch.device, train_dataset, val_dataset):
    """(frozen feature model, classifier) for the backbone of `--pretrained_weights`: a convnet gives one
    pooled feature (no blocks to concatenate, no patch tokens to average)."""
    model = build_v1_eval_model(args, device)
    is_vit = hasattr(model, "get_intermediate_layers")
    n_last_blocks = args.n_last_blocks if is_vit else 1
    avgpool = args.avgpool_patchtokens if is_vit else False
    if is_vit and n_last_blocks > model.depth:
        raise UserError(f"--n_last_blocks {n_last_blocks} exceeds the {model.depth} blocks of {args.arch}")
    feature_model = probe.ModelWithIntermediateLayers(model, n_last_blocks)
    num_labels = resolve_num_labels(args, train_dataset, val_dataset)
    sample = feature_model(val_dataset[0][0][None].to(device))
    embed_dim = probe.create_linear_input(sample, n_last_blocks, avgpool).shape[-1]
    # Upstream v1's feature order, so its trained classifiers predict the same here.
    classifier = probe.LinearClassifier(
        embed_dim, n_last_blocks, avgpool, num_classes=num_labels, dino_v1_order=True
    ).to(device)
    return feature_model, classifier


def _evaluate_only(
    args: argparse.Namespace, feature_model, classifier, val_loader, device, checkpoint_path
) -> float:
    """--evaluate: the accuracy of the trained classifier (`--linear_weights` or the run's checkpoint)."""
    source = args.linear_weights or checkpoint_path
    if not os.path.isfile(source):
        raise MissingFileError(
            f"--evaluate needs a trained classifier: {source} does not exist (train first, "
            "or pass --linear_weights)"
        )
    _load_classifier(classifier, _classifier_state(_load_checkpoint(source)), source)
    stats = probe.evaluate_classifiers(feature_model, classifier, val_loader, device)["classifier"]
    if distributed.is_main_process():
        print(
            f"Accuracy of the network on the {len(val_loader.dataset)} test images: {stats['top1']:.1f}%",
            flush=True,
        )
    return stats["top1"]


def _train_epoch(args, epoch: int, feature_model, trained, optimizer, train_loader, device, estimate) -> dict:
    """One epoch of SGD on the classifier; returns the epoch's averaged `train_*` statistics."""
    train_loader.sampler.set_epoch(epoch)
    trained.train()
    metric_logger = MetricLogger(delimiter="  ")
    for images, labels in metric_logger.log_every(train_loader, 20, header=f"Epoch: [{epoch}]"):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = probe.train_step(feature_model, trained, optimizer, images, labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite linear-probe loss in epoch {epoch}; lower --lr")
        metric_logger.update(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        estimate.tick()
    metric_logger.synchronize_between_processes()
    return {f"train_{name}": meter.global_avg for name, meter in metric_logger.meters.items()}


def _datasets(args: argparse.Namespace):
    """(train, val) image folders; train is None with --evaluate."""
    if args.img_size is None and args.pretrained_weights and os.path.exists(args.pretrained_weights):
        # The transforms need the evaluation crop now: the training crop stored in the checkpoint, else 224.
        args.img_size = training_crop_size(read_checkpoint(args.pretrained_weights)) or 224
    val_dataset = image_folder(
        args.data_path, "val", data.make_classification_eval_transform(crop_size=args.img_size)
    )
    train_dataset = None
    if not args.evaluate:
        train_dataset = image_folder(
            args.data_path, "train", data.make_classification_train_transform(crop_size=args.img_size)
        )
    return train_dataset, val_dataset


def _resume(checkpoint_path: str, classifier, optimizer, scheduler, epochs: int) -> tuple[int, float]:
    """(start epoch, best accuracy so far): from the probe's checkpoint when there is one, else (0, 0.0)."""
    if not os.path.isfile(checkpoint_path):
        return 0, 0.0
    checkpoint = _load_checkpoint(checkpoint_path, ("state_dict", "optimizer", "scheduler", "epoch"))
    _load_classifier(classifier, _classifier_state(checkpoint), checkpoint_path)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    start_epoch, best_acc = int(checkpoint["epoch"]), float(checkpoint.get("best_acc", 0.0))
    probe.stretch_cosine_schedule(scheduler, epochs)
    logger.info(
        "Resumed from %s at epoch %d (best accuracy so far %.2f%%)", checkpoint_path, start_epoch, best_acc
    )
    return start_epoch, best_acc


def _validate_epoch(epoch: int, feature_model, classifier, val_loader, device, best_acc: float) -> dict:
    """Validation accuracy and loss after `epoch` (printed by the main process), as the log's test_* keys."""
    test_stats = probe.evaluate_classifiers(feature_model, classifier, val_loader, device)["classifier"]
    if distributed.is_main_process():
        print(
            f"Accuracy at epoch {epoch} of the network on the {len(val_loader.dataset)} test images: "
            f"{test_stats['top1']:.1f}%",
            flush=True,
        )
        print(f"Max accuracy so far: {max(best_acc, test_stats['top1']):.2f}%", flush=True)
    return {"test_acc1": test_stats["top1"], "test_acc5": test_stats["top5"], "test_loss": test_stats["loss"]}


def main(args: argparse.Namespace) -> float:
    """Train (or with --evaluate only evaluate) the linear probe; returns the best validation top-1."""
    _validate(args)
    if args.output_dir is not None and distributed.is_main_process():
        make_output_dir(args.output_dir)  # before any work: an unusable folder is found at once
    fix_random_seeds(args.seed)
    device = distributed.get_device()
    if args.output_dir is None:
        args.output_dir = default_output_dir(args.pretrained_weights, "eval_linear")
        logger.info(
            "--output_dir not given: writing to %s (next to the evaluated checkpoint)", args.output_dir
        )
    train_dataset, val_dataset = _datasets(args)
    feature_model, classifier = _build_probe(args, device, train_dataset, val_dataset)
    val_loader = make_eval_loader(val_dataset, args.batch_size_per_gpu, args.num_workers, pad=False)
    checkpoint_path = os.path.join(args.output_dir, CHECKPOINT_NAME)
    if args.evaluate:
        return _evaluate_only(args, feature_model, classifier, val_loader, device, checkpoint_path)

    trained: nn.Module = classifier
    if distributed.get_world_size() > 1:
        trained = nn.parallel.DistributedDataParallel(classifier)
    train_loader = data.make_data_loader(
        train_dataset,
        args.batch_size_per_gpu,
        args.num_workers,
        shuffle=True,
        seed=args.seed,
        sampler_type="distributed",
        drop_last=False,
    )
    logger.info("Data loaded with %d train and %d val imgs.", len(train_dataset), len(val_dataset))
    optimizer = torch.optim.SGD(
        trained.parameters(),
        lr=probe.scale_lr(args.lr, args.batch_size_per_gpu),
        momentum=0.9,
        weight_decay=0.0,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=0.0)
    start_epoch, best_acc = _resume(checkpoint_path, classifier, optimizer, scheduler, args.epochs)
    make_output_dir(args.output_dir)
    if distributed.is_main_process():  # the epochs after the checkpoint are trained (and logged) again
        resume_records(args.output_dir, "log.txt", "epoch", start_epoch)

    estimate = LengthEstimate(
        "linear probe", f"{args.epochs} epochs x {len(train_loader)} iterations of {args.batch_size_per_gpu} images per "
        f"process ({len(train_dataset)} training images)", (args.epochs - start_epoch) * len(train_loader),
        "shorten with fewer --epochs (upstream's 100 stay the default)",
    )  # fmt: skip
    for epoch in range(start_epoch, args.epochs):
        log_stats = _train_epoch(
            args, epoch, feature_model, trained, optimizer, train_loader, device, estimate
        )
        scheduler.step()
        log_stats["epoch"] = epoch
        if epoch % args.val_freq == 0 or epoch == args.epochs - 1:
            test_stats = _validate_epoch(epoch, feature_model, classifier, val_loader, device, best_acc)
            best_acc = max(best_acc, test_stats["test_acc1"])
            log_stats.update(test_stats)
        if distributed.is_main_process():
            append_json_lines(os.path.join(args.output_dir, "log.txt"), [log_stats])
            atomic_torch_save(
                {
                    "epoch": epoch + 1,
                    "state_dict": classifier.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_acc": best_acc,
                },
                checkpoint_path,
            )
        distributed.barrier()
    if distributed.is_main_process():
        print(
            "Training of the supervised linear classifier on frozen features completed.\n"
            f"Top-1 test accuracy: {best_acc:.1f}",
            flush=True,
        )
    return best_acc


def cli(argv: Sequence[str] | None = None) -> int:
    """Parse, join the process group (torchrun / SLURM / none), run `main`; a user error is one line."""
    run_cli("eval_linear.py", run_main, main, get_args_parser().parse_args(argv), log_to_output_dir=False)
    return 0


if __name__ == "__main__":
    cli()
