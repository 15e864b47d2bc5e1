"""v1's training program pieces, DINO style, composed by `simdino/main_dino.py`'s `train_dino(args)`.

Owns the v1 set-up checks (`validate_args`), the training data (`build_dataset`, `build_data_loader`),
the per-iteration schedules of the upstream flags (`build_schedules`: lr with the linear scaling rule,
weight decay, teacher momentum; DINO's per-epoch teacher temperature), the per-(epoch, rank) seed
(`epoch_seed`), the network set-up for a launch (`prepare_networks`: device, SyncBatchNorm, compile,
DDP) and the epoch loop (`train_one_epoch`), whose every step is `simdinov2.train.step.train_step`.
"""

from __future__ import annotations

import argparse
import datetime
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from simdinov2 import distributed
from simdinov2.checkpoint.epoch_checkpoint import MidEpoch, resumed_batches
from simdinov2.data import ImageFolderDataset, make_dataset
from simdinov2.data.datasets import UnreadableImageError
from simdinov2.data.samplers import seed_loader_worker, usable_num_workers
from simdinov2.errors import NonFiniteLossError, UserError
from simdinov2.logging import MetricLogger
from simdinov2.trackers import ExperimentTrackers, check_packages
from simdinov2.train.clock import TrainingClock
from simdinov2.train.interrupt import StopSignals
from simdinov2.train.multicrop import VIT_ARCHS, MultiCropStudentTeacher
from simdinov2.train.step import train_step
from simdinov2.utils.schedules import cosine_scheduler_epochs

logger = logging.getLogger("simdinov2")

PRINT_FREQ = 10  # iterations between progress lines / training_metrics.json records (upstream's)


def validate_args(args: argparse.Namespace) -> None:
    """Checks that need no data or model; each failure is one line saying what to change."""
    if not args.eps > 0:
        raise UserError(f"--eps must be > 0 (got {args.eps}): it divides the coding-rate scale p/(m·N·eps)")
    for name in ("batch_size_per_gpu", "epochs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    check_packages(args.track_wandb, args.track_swan)
    if not getattr(args, "time_budget", 0.0) >= 0:
        raise UserError(f"--time_budget must be >= 0 seconds (got {args.time_budget}); 0 means no budget")
    if args.local_crops_number < 0:
        raise UserError(f"--local_crops_number must be >= 0 (got {args.local_crops_number})")
    if getattr(args, "depth", 0) < 0:
        raise UserError(f"--depth must be >= 1 blocks, or 0 for the arch's own (got {args.depth})")
    if args.arch in VIT_ARCHS:
        crops = [("global_crops_size", args.global_crops_size)]
        crops += [("local_crops_size", args.local_crops_size)] if args.local_crops_number else []
        for name, size in crops:
            if size < args.patch_size:
                raise UserError(f"--{name} {size} is smaller than one patch (--patch_size {args.patch_size}): "
                                f"raise --{name} or lower --patch_size")
    if args.arch in VIT_ARCHS and args.global_crops_size % args.patch_size:
        logger.warning("--global_crops_size %d is not a multiple of --patch_size %d: border pixels are dropped",
                       args.global_crops_size, args.patch_size)
    if args.warmup_epochs >= args.epochs:
        logger.warning(f"--warmup_epochs {args.warmup_epochs} >= --epochs {args.epochs}: the learning rate never "
                       "leaves its linear warm-up; lower --warmup_epochs")


def build_dataset(data_path: str | None, transform: Any) -> Dataset:
    """ImageFolder tree at `data_path` (upstream), or any dataset string `make_dataset` knows
    (e.g. `FashionMNIST:split=TRAIN`)."""
    if not data_path:
        raise UserError("--data_path is missing: give the training images as an ImageFolder tree (one folder per class)")
    path = Path(data_path).expanduser()
    if path.is_dir():
        if not any(path.iterdir()):
            raise UserError(f"--data_path {data_path} is an empty folder: it must hold one sub-folder of images per class")
        dataset = ImageFolderDataset(str(path), transform=transform)
    elif ":" in data_path and not path.exists():
        dataset = make_dataset(data_path, transform=transform)
    elif path.exists():
        raise UserError(f"--data_path {data_path} is a file, not a folder: give the folder of class sub-folders")
    else:
        raise UserError(f"--data_path {data_path} does not exist: give the folder of training images (ImageFolder tree)")
    if len(dataset) == 0:
        raise UserError(f"--data_path {data_path} holds no images (jpg, png, ...)")
    return dataset


def build_data_loader(args: argparse.Namespace, dataset: Dataset, device: torch.device) -> DataLoader:
    """Shuffled per epoch with seed + epoch (`set_epoch`), in one process as well: a resumed run sees the
    same order as an uninterrupted one. Refuses a dataset smaller than one step."""
    world_size = distributed.get_world_size()
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=distributed.get_rank(), shuffle=True, seed=args.seed
    )
    loader = DataLoader(
        dataset, sampler=sampler, batch_size=args.batch_size_per_gpu, num_workers=usable_num_workers(args.num_workers),
        pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=seed_loader_worker,
        persistent_workers=False,
    )  # fmt: skip
    if len(loader) == 0:
        raise UserError(
            f"{len(dataset)} images are fewer than one step needs ({args.batch_size_per_gpu} per process x "
            f"{world_size} processes): lower --batch_size_per_gpu or add images"
        )
    logger.info(f"Data loaded: there are {len(dataset)} images ({len(loader)} iterations per epoch).")
    return loader


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the augmentation / drop-path RNG of one (epoch, rank): a resumed run replays it exactly."""
    return seed + 1000 * epoch + rank


def build_schedules(args: argparse.Namespace, niter_per_ep: int) -> dict[str, np.ndarray]:
    """Upstream's schedules: per iteration `lr`, `wd`, `mom`; per epoch `teacher_temp`."""
    world_size = distributed.get_world_size()
    warmup_temp_epochs = min(args.warmup_teacher_temp_epochs, args.epochs)
    return {
        "lr": cosine_scheduler_epochs(
            args.lr * (args.batch_size_per_gpu * world_size) / 256.0,  # linear scaling rule
            args.min_lr, args.epochs, niter_per_ep, warmup_epochs=args.warmup_epochs,
        ),  # fmt: skip
        "wd": cosine_scheduler_epochs(args.weight_decay, args.weight_decay_end, args.epochs, niter_per_ep),
        # momentum parameter is increased to 1. during training with a cosine schedule
        "mom": cosine_scheduler_epochs(args.momentum_teacher, 1.0, args.epochs, niter_per_ep),
        "teacher_temp": np.concatenate((
            np.linspace(args.warmup_teacher_temp, args.teacher_temp, warmup_temp_epochs),
            np.ones(args.epochs - warmup_temp_epochs) * args.teacher_temp,
        )),  # fmt: skip
    }


def prepare_networks(
    args: argparse.Namespace, student: nn.Module, teacher: nn.Module, device: torch.device
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Move, convert, compile and wrap the pair for this launch: (student, student_without_ddp, teacher)."""
    world_size = distributed.get_world_size()
    student.to(device)
    teacher.to(device)
    if args.use_bn_in_head and world_size > 1:
        if device.type == "cuda":
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        else:
            logger.warning("--use_bn_in_head with several CPU processes: BatchNorm statistics stay per process")
    student_without_ddp = student
    if args.compile:
        if device.type == "cuda":
            # In place: parameter names (and so the checkpoint keys) stay those of the plain modules.
            for module in (student.backbone, student.head, teacher.backbone, teacher.head):
                module.compile()
        else:
            logger.info("--compile true is skipped on CPU (torch.compile is only used on CUDA)")
    if world_size > 1:
        # The prototype layer is used in every forward, so no parameter is unused (its gradient is only
        # dropped after the all-reduce while frozen): find_unused_parameters stays off.
        student = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
        )
        # DDP broadcast rank 0's initial weights: the teacher starts from exactly those.
        teacher.load_state_dict(student_without_ddp.state_dict())
    return student, student_without_ddp, teacher


def _budget_line(clock: TrainingClock, elapsed: float, images_per_step: int) -> str:
    return (f"time budget: {elapsed:.0f} of {clock.budget:.0f} s used ({100 * elapsed / clock.budget:.0f}%), "
            f"{clock.iterations * images_per_step} images seen, "
            f"{datetime.timedelta(seconds=int(clock.budget - elapsed))} left")


def train_one_epoch(
    pair: MultiCropStudentTeacher, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
    data_loader: DataLoader, schedules: dict[str, np.ndarray], epoch: int, args: argparse.Namespace,
    device: torch.device, trackers: ExperimentTrackers, checkpoint_path: Path, clock: TrainingClock,
    stop: StopSignals | None = None, resume: MidEpoch | None = None,
) -> dict[str, float]:  # fmt: skip
    """One pass over `data_loader` (or until `clock`'s time budget is spent, or `stop` got a signal: then
    `stop.position` says where); returns the epoch averages (over all processes) of the metrics. Progress
    lines show the run's iteration, images/s, the loss parts, lr and the ETA of the whole run (of the
    budget with one); `training_metrics.json` gets the values at that iteration. `resume`: the epoch
    continues where a stop signal ended it."""
    metric_logger = MetricLogger(delimiter="  ", output_file=checkpoint_path.parent / "training_metrics.json")
    n_iter, first_step = len(data_loader), resume.step if resume else 0
    if resume is not None and distributed.is_main_process():  # the epoch's sums so far, over all processes
        for name, (total, count) in resume.meters.items():
            metric_logger.meters[name].total, metric_logger.meters[name].count = total, int(count)
    images_per_step = args.batch_size_per_gpu * distributed.get_world_size()
    progress = metric_logger.log_every(
        resumed_batches(data_loader, resume), PRINT_FREQ, f"Epoch: [{epoch}/{args.epochs}]",
        n_iterations=clock.total_iterations, start_iteration=n_iter * epoch + first_step,
        images_per_iteration=images_per_step, eta=clock.eta if clock.budget else None,
    )  # fmt: skip
    pair.train()
    for step, (images, _) in enumerate(progress, start=first_step):
        elapsed = clock.synchronized_elapsed(device)
        if clock.exhausted(elapsed):
            clock.stopped = True
            break
        global_it = n_iter * epoch + step
        # the position in the schedules: the iteration, or the elapsed fraction of the time budget
        it = clock.schedule_index(global_it, elapsed)
        schedule_epoch = clock.schedule_epoch(epoch, it)
        if clock.budget and step % PRINT_FREQ == 0:
            logger.info(_budget_line(clock, elapsed, images_per_step))
        values = {name: float(schedules[name][it]) for name in ("lr", "wd", "mom")}
        values.update(teacher_temp=float(schedules["teacher_temp"][schedule_epoch]), epoch=schedule_epoch)
        images = [im.to(device, non_blocking=True) for im in images]
        try:
            losses = train_step(pair, optimizer, images, values, args.clip_grad, scaler)
        except NonFiniteLossError as e:
            last = (f"last good checkpoint {checkpoint_path} left intact" if checkpoint_path.is_file()
                    else "no checkpoint was written yet")  # fmt: skip
            raise NonFiniteLossError(
                f"{e} at iteration {global_it} (epoch {epoch}, step {step}/{n_iter}); stopping training, {last}",
                report=e.report,
            ) from None
        clock.iterations += 1
        if (over := clock.first_iteration_over_budget()) is not None:
            logger.warning(over)
        metrics = {**losses, "lr": optimizer.param_groups[0]["lr"], "wd": optimizer.param_groups[0]["weight_decay"]}
        metric_logger.update(**metrics)
        if step % PRINT_FREQ == 0:
            trackers.log(metrics, step=global_it)
        if stop is not None and step + 1 < n_iter and stop.requested(device):
            progress.close()  # the metrics row of this iteration (a resume drops it when not due)
            stop.position = step + 1
            break
    # gather the stats from all processes
    metric_logger.synchronize_between_processes()
    if stop is not None and stop.position is not None:
        stop.meters = {name: [meter.total, meter.count] for name, meter in metric_logger.meters.items()}
    logger.info(f"Averaged stats: {metric_logger}")
    return {k: meter.global_avg for k, meter in metric_logger.meters.items()}


def run_epoch(*args: Any, **kwargs: Any) -> dict[str, float]:
    """`train_one_epoch`, with an unreadable image reported as the one line of its error (a loader
    worker wraps the message in its traceback, whose last line is the original one)."""
    try:
        return train_one_epoch(*args, **kwargs)
    except UnreadableImageError as e:
        last_line = str(e).strip().splitlines()[-1]
        raise UserError(last_line.split("UnreadableImageError: ", 1)[-1]) from e
