"""v1's training program pieces, DINO style, composed by `simdino/main_dino.py`'s `train_dino(args)`.

Owns what the loop reads of the flags (`LoopSettings`), the training data (`build_dataset`,
`build_data_loader`), the per-iteration schedules of the upstream flags (`build_schedules`: lr with the linear scaling rule,
weight decay, teacher momentum; DINO's per-epoch teacher temperature), the per-(epoch, rank) seed
(`epoch_seed`), the network set-up for a launch (`prepare_networks`: device, SyncBatchNorm, compile,
DDP) and the epoch loop (`EpochLoop`, `train_one_epoch`, `run_epoch`), whose every step is
`simdinov2.train.step.train_step`. A stop signal (`EpochLoop.stop`) ends an epoch after the iteration under
way; `run_epoch(..., resume=)` finishes such an epoch from its mid-epoch checkpoint.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from simdino.train.epoch_checkpoint import MidEpoch, resumed_batches
from simdino.train.multicrop import MultiCropStudentTeacher
from simdinov2 import distributed
from simdinov2.data.datasets import UnreadableImageError
from simdinov2.data.loaders import training_dataset
from simdinov2.data.samplers import seed_loader_worker, usable_num_workers
from simdinov2.errors import NonFiniteLossError, UserError
from simdinov2.logging import MetricLogger
from simdinov2.logging.helpers import metrics_row_due
from simdinov2.trackers import ExperimentTrackers
from simdinov2.train.clock import TrainingClock
from simdinov2.train.interrupt import StopSignals
from simdinov2.train.step import train_step
from simdinov2.utils.schedules import cosine_scheduler_epochs

logger = logging.getLogger("simdinov2")

PRINT_FREQ = 10  # iterations between progress lines / training_metrics.json records (upstream's)


@dataclass(frozen=True)
class LoopSettings:
    """What v1's loop reads of the command line (upstream's flags, same names), built once from the flags
    by `simdino/main_dino.py`."""

    epochs: int
    batch_size_per_gpu: int
    num_workers: int
    seed: int
    # schedules
    lr: float
    min_lr: float
    warmup_epochs: int
    weight_decay: float
    weight_decay_end: float
    momentum_teacher: float
    teacher_temp: float
    warmup_teacher_temp: float
    warmup_teacher_temp_epochs: int
    # step and networks
    clip_grad: float
    use_bn_in_head: bool
    compile: bool


def build_dataset(data_path: str | None, transform: Any) -> Dataset:
    """The training images of `--data_path`: a folder (class sub-folders or not), a `.txt` list of image
    paths, or any dataset string `make_dataset` knows (e.g. `FashionMNIST:split=TRAIN`)."""
    return training_dataset(data_path or "", transform, option="--data_path")


def build_data_loader(settings: LoopSettings, dataset: Dataset, device: torch.device) -> DataLoader:
    """Shuffled per epoch with seed + epoch (`set_epoch`), in one process as well: a resumed run sees the
    same order as an uninterrupted one. Refuses a dataset smaller than one step."""
    world_size = distributed.get_world_size()
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=distributed.get_rank(), shuffle=True, seed=settings.seed
    )
    loader = DataLoader(
        dataset, sampler=sampler, batch_size=settings.batch_size_per_gpu,
        num_workers=usable_num_workers(settings.num_workers), pin_memory=device.type == "cuda", drop_last=True,
        worker_init_fn=seed_loader_worker,
        persistent_workers=False,
    )  # fmt: skip
    if len(loader) == 0:
        raise UserError(
            f"{len(dataset)} images are fewer than one step needs ({settings.batch_size_per_gpu} per process x "
            f"{world_size} processes): lower --batch_size_per_gpu or add images"
        )
    logger.info(f"Data loaded: there are {len(dataset)} images ({len(loader)} iterations per epoch).")
    return loader


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the augmentation / drop-path RNG of one (epoch, rank): a resumed run replays it exactly."""
    return seed + 1000 * epoch + rank


def build_schedules(settings: LoopSettings, niter_per_ep: int) -> dict[str, np.ndarray]:
    """Upstream's schedules: per iteration `lr`, `wd`, `mom`; per epoch `teacher_temp`."""
    world_size = distributed.get_world_size()
    warmup_temp_epochs = min(settings.warmup_teacher_temp_epochs, settings.epochs)
    return {
        "lr": cosine_scheduler_epochs(
            settings.lr * (settings.batch_size_per_gpu * world_size) / 256.0,  # linear scaling rule
            settings.min_lr,
            settings.epochs,
            niter_per_ep,
            warmup_epochs=settings.warmup_epochs,
        ),  # fmt: skip
        "wd": cosine_scheduler_epochs(
            settings.weight_decay, settings.weight_decay_end, settings.epochs, niter_per_ep
        ),
        # momentum parameter is increased to 1. during training with a cosine schedule
        "mom": cosine_scheduler_epochs(settings.momentum_teacher, 1.0, settings.epochs, niter_per_ep),
        "teacher_temp": np.concatenate(
            (
                np.linspace(settings.warmup_teacher_temp, settings.teacher_temp, warmup_temp_epochs),
                np.ones(settings.epochs - warmup_temp_epochs) * settings.teacher_temp,
            )
        ),  # fmt: skip
    }


def prepare_networks(
    settings: LoopSettings, student: nn.Module, teacher: nn.Module, device: torch.device
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Move, convert, compile and wrap the pair for this launch: (student, student_without_ddp, teacher)."""
    world_size = distributed.get_world_size()
    student.to(device)
    teacher.to(device)
    if settings.use_bn_in_head and world_size > 1:
        if device.type == "cuda":
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        else:
            logger.warning(
                "--use_bn_in_head with several CPU processes: BatchNorm statistics stay per process"
            )
    student_without_ddp = student
    if settings.compile:
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
            student,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False,
        )
        # DDP broadcast rank 0's initial weights: the teacher starts from exactly those.
        teacher.load_state_dict(student_without_ddp.state_dict())
    return student, student_without_ddp, teacher


def _budget_line(clock: TrainingClock, elapsed: float, images_per_step: int) -> str:
    return (
        f"time budget: {elapsed:.0f} of {clock.budget:.0f} s used ({100 * elapsed / clock.budget:.0f}%), "
        f"{clock.iterations * images_per_step} images seen, "
        f"{datetime.timedelta(seconds=int(clock.budget - elapsed))} left"
    )


@dataclass
class EpochLoop:
    """Everything an epoch of training uses, gathered once before the first epoch."""

    pair: MultiCropStudentTeacher
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    data_loader: DataLoader
    schedules: dict[str, np.ndarray]
    settings: LoopSettings
    device: torch.device
    trackers: ExperimentTrackers
    checkpoint_path: Path  # the last good checkpoint, named when a loss turns non-finite
    clock: TrainingClock
    stop: StopSignals | None = None  # a stop signal ends the epoch after the iteration under way


def train_one_epoch(loop: EpochLoop, epoch: int, resume: MidEpoch | None = None) -> dict[str, float]:
    """One pass over `data_loader` (or until `clock`'s time budget is spent, or `loop.stop` got a signal:
    then `stop.position` says where); returns the epoch averages (over all processes) of the metrics.
    Progress lines show the run's iteration, images/s, the loss parts, lr and the ETA of the whole run (of
    the budget with one); `training_metrics.json` gets the values at that iteration. `resume`: the epoch
    continues where a stop signal ended it."""
    pair, optimizer, data_loader, device, clock = (
        loop.pair,
        loop.optimizer,
        loop.data_loader,
        loop.device,
        loop.clock,
    )
    checkpoint_path, stop = loop.checkpoint_path, loop.stop
    metric_logger = MetricLogger(delimiter="  ", output_file=checkpoint_path.parent / "training_metrics.json")
    n_iter, first_step = len(data_loader), resume.step if resume else 0
    if resume is not None and distributed.is_main_process():  # the epoch's sums so far, over all processes
        for name, (total, count) in resume.meters.items():
            metric_logger.meters[name].total, metric_logger.meters[name].count = total, int(count)
    images_per_step = loop.settings.batch_size_per_gpu * distributed.get_world_size()
    progress = metric_logger.log_every(
        resumed_batches(data_loader, resume), PRINT_FREQ, f"Epoch: [{epoch}/{loop.settings.epochs}]",
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
        values = {name: float(loop.schedules[name][it]) for name in ("lr", "wd", "mom")}
        values.update(
            teacher_temp=float(loop.schedules["teacher_temp"][schedule_epoch]), epoch=schedule_epoch
        )
        images = [im.to(device, non_blocking=True) for im in images]
        try:
            losses = train_step(pair, optimizer, images, values, loop.settings.clip_grad, loop.scaler)
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
        metrics = {
            **losses,
            "lr": optimizer.param_groups[0]["lr"],
            "wd": optimizer.param_groups[0]["weight_decay"],
        }
        if metrics_row_due(global_it, PRINT_FREQ, clock.total_iterations) or step == n_iter - 1:
            metrics.update(pair.probe.measure())  # one small SVD, on the iterations the progress line shows
        metric_logger.update(**metrics)
        if step % PRINT_FREQ == 0:
            loop.trackers.log(metrics, step=global_it)
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


def run_epoch(loop: EpochLoop, epoch: int, resume: MidEpoch | None = None) -> dict[str, float]:
    """`train_one_epoch`, with an unreadable image reported as the one line of its error (a loader
    worker wraps the message in its traceback, whose last line is the original one)."""
    try:
        return train_one_epoch(loop, epoch, resume)
    except UnreadableImageError as e:
        last_line = str(e).strip().splitlines()[-1]
        raise UserError(last_line.split("UnreadableImageError: ", 1)[-1]) from e
