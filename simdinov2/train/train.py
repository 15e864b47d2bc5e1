"""The v2 training entry point: `simdinov2/train/train.py --config-file F --output-dir D key=value ...`.

Launch it with `torchrun` (gloo on CPU, nccl on CUDA, chosen by `simdinov2.distributed`), under SLURM
(`simdinov2/run/train/train.py` submits `main` with submitit) or as a plain `python` process. This
module owns the v2 program: configuration set-up, the dataset and its epoch length
(len(dataset) // global batch), the per-iteration schedules (lr, weight decay, teacher momentum and
temperature, last-layer freeze, iBOT weight, coding-rate eps / coeff), and the iteration loop
(`TrainingLoop`), which drives the shared core: `simdinov2.train.step.train_step` (the optimisation step
of both trees), `simdinov2.train.clock.TrainingClock` (by iterations, or by `train.time_budget`
seconds), `simdinov2.trackers` (wandb), progress and `training_metrics.json`, resumable checkpoints and
the teacher snapshots under `eval/training_<iteration>/`.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

if importlib.util.find_spec("simdinov2") is None:  # pragma: no cover - run by path without the install
    raise SystemExit(
        "train.py: error: the simdinov2 package is not installed: `pip install -e .` from the repository root"
    )
from simdinov2 import cli, distributed
from simdinov2.checkpoint import Checkpointer, save_teacher_snapshot
from simdinov2.cli import agree_on_errors
from simdinov2.configs import (
    apply_actions,
    apply_scaling_rules_to_cfg,
    get_cfg,
    scheduled_actions,
    write_config,
)
from simdinov2.data import (
    DataAugmentationDINO,
    MaskingGenerator,
    collate_data_and_cast,
    make_data_loader,
    training_dataset,
)
from simdinov2.errors import MissingFileError, NonFiniteLossError, UserError
from simdinov2.eval.knn_monitor import KnnMonitor, append_metrics_row
from simdinov2.fsdp import resolve_sharding
from simdinov2.logging import MetricLogger, setup_logging
from simdinov2.logging.helpers import metrics_row_due
from simdinov2.precision import apply_cpu_precision, user_precision_keys
from simdinov2.trackers import ExperimentTrackers
from simdinov2.train.clock import TrainingClock
from simdinov2.train.health import probe_teacher, warn_if_rank_deficient_covariance
from simdinov2.train.interrupt import StopSignals
from simdinov2.train.recipe_keys import (
    NonFiniteGuard,
    backbone_frozen,
    build_optimizer_by_name,
    clip_grad_schedule,
    compile_enabled,
    epoch_length,
    snapshot_period,
)
from simdinov2.train.recovery import complete_iteration_end, snapshot_due, teacher_snapshot_path
from simdinov2.train.ssl_meta_arch import SSLMetaArch, ibot_enabled
from simdinov2.train.step import train_step
from simdinov2.utils.schedules import CosineScheduler
from simdinov2.utils.utils import fix_random_seeds

logger = logging.getLogger("simdinov2")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "SimDINOv2 training", add_help=add_help, formatter_class=cli.HelpFormatter
    )
    parser.add_argument(
        "--config-file", "--config_file", default="", metavar="FILE", help="path to a config file"
    )
    parser.add_argument(
        "--no-resume", "--no_resume", action="store_true", help="start from scratch even if checkpoints exist"
    )
    parser.add_argument(
        "--eval-only",
        "--eval_only",
        action="store_true",
        help="write eval/training_<it>/teacher_checkpoint.pth from the latest checkpoint and exit",
    )
    parser.add_argument(
        "--output-dir", "--output_dir", default="", type=str, help="output folder (train.output_dir)"
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config overrides: key=value (e.g. optim.epochs=10)",
    )
    return parser


# ---------------------------------------------------------------------------------------------- set-up
def setup(args: argparse.Namespace) -> DictConfig:
    """Configuration, process group, logging, seeds; writes `<output-dir>/config.yaml`."""
    cfg = get_cfg(args.config_file or None, args.opts)
    if args.output_dir:
        cfg.train.output_dir = args.output_dir
    cfg.train.output_dir = os.path.abspath(os.path.expanduser(str(cfg.train.output_dir)))
    distributed.init_distributed(str(cfg.train.device))
    setup_logging(cfg.train.output_dir)
    apply_cpu_precision(
        cfg,
        user_precision_keys(getattr(args, "opts", None), getattr(args, "config_file", None)),
        distributed.get_device(),
    )
    apply_scaling_rules_to_cfg(cfg, distributed.get_world_size())
    existing = Path(cfg.train.output_dir) / "config.yaml"
    if getattr(args, "eval_only", False) and existing.is_file():
        logger.info("--eval-only: keeping the training run's %s", existing)
    elif distributed.is_main_process():
        path = write_config(cfg, cfg.train.output_dir)
        logger.info("config written to %s", path)
    logger.info("command: %s", " ".join(sys.argv))
    return cfg


def build_data(cfg: DictConfig) -> tuple[Any, int, Any]:
    """(dataset, epoch length in iterations, collate function) for this run.

    Raises one clear `UserError` when the dataset holds fewer images than one global batch."""
    transform = DataAugmentationDINO(
        global_crops_scale=cfg.crops.global_crops_scale,
        local_crops_scale=cfg.crops.local_crops_scale,
        local_crops_number=int(cfg.crops.local_crops_number),
        global_crops_size=int(cfg.crops.global_crops_size),
        local_crops_size=int(cfg.crops.local_crops_size),
    )
    dataset = training_dataset(str(cfg.train.dataset_path), transform, option="train.dataset_path")
    global_batch = int(cfg.train.batch_size_per_gpu) * distributed.get_world_size()
    epoch_len = epoch_length(len(dataset), global_batch, int(cfg.train.OFFICIAL_EPOCH_LENGTH))
    if epoch_len < 1:
        raise UserError(
            f"dataset {cfg.train.dataset_path} has {len(dataset)} images, fewer than one global batch of "
            f"{cfg.train.batch_size_per_gpu} x {distributed.get_world_size()} process(es) = {global_batch}: "
            "lower train.batch_size_per_gpu or use more images"
        )
    grid = int(cfg.crops.global_crops_size) // int(cfg.student.patch_size)
    mask_generator = MaskingGenerator(input_size=(grid, grid), max_num_patches=0.5 * grid * grid)
    collate_fn = partial(
        collate_data_and_cast,
        mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
        mask_probability=(
            float(cfg.ibot.mask_sample_probability) if ibot_enabled(cfg) or cfg.student.drop_masks else 0.0
        ),
        n_tokens=grid * grid,
        mask_generator=mask_generator,
        dtype=torch.float32,
        drop_masks=bool(cfg.student.drop_masks),
    )
    return dataset, epoch_len, collate_fn


def build_schedulers(cfg: DictConfig, epoch_len: int) -> dict[str, CosineScheduler]:
    """Per-iteration schedules (cosine with warm-up) over `optim.epochs` epochs of `epoch_len` iterations."""
    total = int(cfg.optim.epochs) * epoch_len
    optim = cfg.optim
    peak_iters = int(optim.peak_epochs) * epoch_len
    schedules = {
        "lr": CosineScheduler(
            float(optim.lr),
            float(optim.min_lr),
            total,
            warmup_iters=int(optim.warmup_epochs) * epoch_len,
            peak_iters=peak_iters,
        ),
        "wd": CosineScheduler(float(optim.weight_decay), float(optim.weight_decay_end), total),
        "mom": CosineScheduler(
            float(cfg.teacher.momentum_teacher), float(cfg.teacher.final_momentum_teacher), total
        ),
        "teacher_temp": CosineScheduler(
            float(cfg.teacher.teacher_temp),
            float(cfg.teacher.teacher_temp),
            int(cfg.teacher.warmup_teacher_temp_epochs) * epoch_len,
            warmup_iters=int(cfg.teacher.warmup_teacher_temp_epochs) * epoch_len,
            start_warmup_value=float(cfg.teacher.warmup_teacher_temp),
        ),
    }
    # The prototype layer learns nothing during the first epoch(s) (DINO's collapse guard).
    last_layer_lr = CosineScheduler(
        float(optim.lr),
        float(optim.min_lr),
        total,
        warmup_iters=int(optim.warmup_epochs) * epoch_len,
        peak_iters=peak_iters,
    )
    last_layer_lr.schedule[: int(optim.freeze_last_layer_epochs) * epoch_len] = 0.0
    schedules["last_layer_lr"] = last_layer_lr
    ibot = cfg.ibot
    ibot_end = float(ibot.loss_weight_end) if float(ibot.loss_weight_end) != -1 else float(ibot.loss_weight)
    schedules["ibot_loss_weight"] = CosineScheduler(
        float(ibot.loss_weight),
        ibot_end,
        total,
        warmup_iters=int(ibot.loss_weight_warmup_epochs) * epoch_len,
        freeze_iters=int(ibot.loss_weight_freeze_epochs) * epoch_len,
    )
    mcr = cfg.dino.mcr
    if float(mcr.eps_end) != -1:
        schedules["mcr_eps"] = CosineScheduler(float(mcr.eps), float(mcr.eps_end), total)
    if float(mcr.coeff_end) != -1:
        schedules["mcr_coeff"] = CosineScheduler(float(mcr.coeff), float(mcr.coeff_end), total)
    if float(optim.clip_grad_end) > 0:
        schedules["clip_grad"] = clip_grad_schedule(float(optim.clip_grad), float(optim.clip_grad_end), total)
    return schedules


def build_model(cfg: DictConfig) -> SSLMetaArch:
    """The meta-architecture, identical on every rank, sharded / wrapped for this launch."""
    device = distributed.get_device()
    # Same seed on every rank for the weights (the shards and replicas must describe one model) ...
    fix_random_seeds(int(cfg.train.seed))
    model = SSLMetaArch(cfg)
    if model.do_dino and model.dino_use_mcr:
        out_dim = cfg.dino.head_bottleneck_dim if cfg.dino.remove_last_layer else cfg.dino.head_n_prototypes
        warn_if_rank_deficient_covariance(int(cfg.train.batch_size_per_gpu), int(out_dim), bool(int(cfg.dino.mcr.reduce_cov)),
                                          distributed.get_world_size(), "dino.mcr.reduce_cov=1")  # fmt: skip
    sharding = resolve_sharding(str(cfg.train.sharding), distributed.get_world_size())
    compile_blocks = compile_enabled(bool(cfg.compile), device)
    model.prepare_for_distributed_training(sharding, device, compile_blocks=compile_blocks)
    # ... a different one per rank for everything random afterwards (stochastic depth, ...).
    fix_random_seeds(int(cfg.train.seed) + distributed.get_rank())
    return model


def build_grad_scaler(cfg: DictConfig, model: SSLMetaArch) -> Any:
    """fp16 loss scaling on CUDA when some student module computes in fp16 (None otherwise)."""
    if not bool(cfg.compute_precision.grad_scaler) or model.device.type != "cuda":
        return None
    if torch.float16 not in model.compute_dtypes():
        return None
    # One scaler for every mode: torch.amp.GradScaler handles FSDP2's DTensor gradients too (its
    # inf check is reduced over the mesh), unlike FSDP1, which needed ShardedGradScaler.
    return torch.amp.GradScaler("cuda")


# ---------------------------------------------------------------------------------------------- training
def _resume(
    checkpointer: Checkpointer, scaler: Any, clock: TrainingClock, resume: bool
) -> tuple[int, Path | None]:
    """(first iteration to run, checkpoint resumed from or None); restores the scaler and the clock."""
    if resume:
        checkpointer.refuse_damaged()
    latest = checkpointer.latest()
    if latest is None or not resume:
        if latest is not None:
            logger.info(
                "--no-resume: ignoring the checkpoints in %s (they are replaced as training saves)",
                latest.parent,
            )
        return 0, None
    try:
        state = checkpointer.load(latest)
    except ValueError as exc:  # the checkpointer names the problem (corrupt, another model)
        raise UserError(
            f"cannot resume from {latest}: {exc}; start over with --no-resume or another --output-dir"
        ) from exc
    start_iter = int(state["iteration"]) + 1
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    clock.spent = float(state.get("train_seconds", 0.0))
    clock.iterations = start_iter
    logger.info("resumed from %s: continuing at iteration %d", latest, start_iter)
    return start_iter, latest


def _data_iterator(
    cfg: DictConfig, dataset: Any, collate_fn: Any, start_iter: int, latest: Path | None
) -> Any:
    """The infinite, seeded loader advanced past the `start_iter` iterations already trained."""
    data_loader = make_data_loader(
        dataset,
        batch_size=int(cfg.train.batch_size_per_gpu),
        num_workers=int(cfg.train.num_workers),
        shuffle=True,
        seed=int(cfg.train.seed),
        sampler_type="infinite",
        sampler_advance=start_iter * int(cfg.train.batch_size_per_gpu),
        drop_last=True,
        collate_fn=collate_fn,
    )
    data_iter = iter(data_loader)
    if latest is not None:
        # After the loader's iterator exists (creating it draws from torch's RNG): the resumed run
        # continues the saved random streams exactly.
        Checkpointer.restore_rng(latest)
    return data_iter


def start_trackers(cfg: DictConfig) -> ExperimentTrackers:
    """wandb (`train.wandb=true`) on the main process; a failure to start stops every rank."""
    with agree_on_errors("starting the experiment trackers"):
        return ExperimentTrackers(
            cfg.train.output_dir, OmegaConf.to_container(cfg, resolve=True), str(cfg.train.wandb_project),
            wandb=bool(cfg.train.wandb), flags={"wandb": "train.wandb=true", "swanlab": "swanlab"},
        )  # fmt: skip


def do_train(
    cfg: DictConfig, model: SSLMetaArch, resume: bool = True, data: tuple[Any, int, Any] | None = None
) -> dict[str, Any]:
    """Train until `optim.epochs` epochs (or `train.time_budget` seconds); resumes from the latest
    checkpoint unless `resume=False`. `data` is `build_data(cfg)` when the caller built it already."""
    output_dir = Path(cfg.train.output_dir)
    dataset, epoch_len, collate_fn = data if data is not None else build_data(cfg)
    max_iter = int(cfg.optim.epochs) * epoch_len
    optimizer = build_optimizer_by_name(str(cfg.optim.opt), model.get_params_groups(), cfg.optim.kwargs)
    scaler = build_grad_scaler(cfg, model)
    checkpointer = Checkpointer(
        output_dir / "ckpt", model, optimizer, max_to_keep=int(cfg.checkpointing.max_to_keep)
    )
    clock = TrainingClock(float(cfg.train.time_budget), total_iterations=max_iter, niter_per_epoch=epoch_len)
    start_iter, latest = _resume(checkpointer, scaler, clock, resume)
    complete_iteration_end(cfg, model, checkpointer, latest, clock)
    logger.info(
        "dataset: %d images, %d iterations per epoch of %d x %d images, %d epochs = %d iterations",
        len(dataset), epoch_len, int(cfg.train.batch_size_per_gpu), distributed.get_world_size(),
        int(cfg.optim.epochs), max_iter,
    )  # fmt: skip
    if start_iter >= max_iter or clock.exhausted(clock.spent):
        logger.info(
            "training already complete (%d of %d iterations); raise optim.epochs to continue",
            start_iter,
            max_iter,
        )
        return {"iteration": start_iter - 1, "epoch_len": epoch_len, "train_seconds": clock.spent}
    data_iter = _data_iterator(cfg, dataset, collate_fn, start_iter, latest)
    actions = scheduled_actions(cfg)
    # A resumed run first re-applies the actions of the epochs it already started.
    for past_epoch in range(-(-start_iter // epoch_len)) if actions else ():
        apply_actions(cfg, actions, past_epoch)
    trackers = start_trackers(cfg)
    try:
        loop = TrainingLoop(
            cfg, model, optimizer, scaler, build_schedulers(cfg, epoch_len), checkpointer, trackers, clock
        )
        iteration = loop.run(data_iter, start_iter)
    finally:
        trackers.finish()
    logger.info("training done: %d iterations", iteration)
    return {"iteration": iteration - 1, "epoch_len": epoch_len, "train_seconds": clock.spent}


class TrainingLoop:
    """The v2 iteration loop: schedules (by iteration or by the time budget), `train_step`, progress,
    metrics, periodic checkpoints and teacher snapshots."""

    def __init__(
        self, cfg: DictConfig, model: SSLMetaArch, optimizer: torch.optim.Optimizer, scaler: Any,
        schedules: dict[str, CosineScheduler], checkpointer: Checkpointer, trackers: ExperimentTrackers,
        clock: TrainingClock,
    ) -> None:  # fmt: skip
        self.cfg, self.model, self.optimizer, self.scaler = cfg, model, optimizer, scaler
        self.schedules, self.checkpointer, self.trackers, self.clock = (
            schedules,
            checkpointer,
            trackers,
            clock,
        )
        self.epoch_len = clock.niter_per_epoch
        period = int(cfg.checkpointing.period)
        self.period = self.epoch_len if period <= 0 else period
        self.eval_period = snapshot_period(
            int(cfg.evaluation.eval_period_epochs), int(cfg.evaluation.eval_period_iterations), self.epoch_len
        )
        self.actions = scheduled_actions(cfg)
        self.nan_guard = NonFiniteGuard(bool(cfg.ignore_nan), int(cfg.train.max_nan_steps))
        self.output_dir = Path(cfg.train.output_dir)
        self.probe = probe_teacher(model)
        monitor_path = str(cfg.evaluation.knn_monitor_path or "")
        self.monitor = KnnMonitor(monitor_path, int(cfg.crops.global_crops_size), int(cfg.train.batch_size_per_gpu),
                                  option="evaluation.knn_monitor_path") if monitor_path else None  # fmt: skip

    def save(self, iteration: int, metrics: dict[str, float]) -> None:
        trainer_state = {
            "epoch_len": self.epoch_len,
            "epoch": (iteration + 1) / self.epoch_len,
            **self.clock.state_dict(),
        }
        # the iteration's metrics row, written after the save: resuming writes it if a kill came first
        trainer_state["metrics"] = {name: float(value) for name, value in metrics.items()}
        if self.scaler is not None:
            trainer_state["grad_scaler"] = self.scaler.state_dict()
        self.checkpointer.save(iteration, trainer_state)

    def snapshot(self, iteration: int) -> None:
        """The teacher snapshot for evaluation, and the k-NN monitor's top-1 of that teacher."""
        save_teacher_snapshot(
            self.model.teacher_for_snapshot(), teacher_snapshot_path(self.output_dir, iteration)
        )
        if self.monitor is not None:
            values = self.monitor(self.model.teacher.backbone)
            self.clock.exclude(values["knn_monitor_seconds"])  # the budget is for training
            self.trackers.log(values, step=iteration)
            append_metrics_row(self.output_dir / "training_metrics.json", iteration, values)

    def step(self, batch: dict[str, Any], iteration: int, index: int) -> dict[str, float]:
        """One `train_step` at schedule position `index`; returns what is logged for the iteration."""
        values = {name: schedule[index] for name, schedule in self.schedules.items()}
        if self.actions and iteration % self.epoch_len == 0:
            for key, value in apply_actions(self.cfg, self.actions, iteration // self.epoch_len).items():
                logger.info("train.actions: %s=%s from epoch %d", key, value, iteration // self.epoch_len)
        frozen = backbone_frozen(iteration, self.epoch_len, int(self.cfg.student.freeze_backbone_epochs))
        values["freeze_backbone"] = float(frozen)
        try:
            # optim.clip_grad is read at every step: train.actions may change it.
            losses = train_step(
                self.model, self.optimizer, batch, values, float(self.cfg.optim.clip_grad), self.scaler
            )
            self.nan_guard.passed()
        except NonFiniteLossError as exc:
            if self.nan_guard.skip(exc, iteration):  # ignore_nan=true: the weights are untouched, go on
                return {**values, "skipped_nan_steps": float(self.nan_guard.skipped)}
            raise NonFiniteLossError(
                f"{exc} at iteration {iteration}: training stopped; lower optim.base_lr or raise dino.mcr.eps and "
                f"resume from the last checkpoint in {self.checkpointer.root} (or start over with --no-resume)",
                report=exc.report,
            ) from None
        record = {
            k: v for k, v in values.items()
            if k != "freeze_backbone" and (k != "teacher_temp" or self.model.uses_cross_entropy)
        }  # fmt: skip
        return {**record, **losses}

    def _stop(self, stop: StopSignals, progress: Any, iteration: int, metrics: dict[str, float]) -> None:
        """A stop signal: the checkpoint of the last iteration done (unless just saved), then one line."""
        progress.close()  # the metrics row of the last iteration done (a resume drops it when not due)
        if iteration % self.period != 0:
            self.save(iteration - 1, metrics)
        stop.finish(
            f"checkpoint of iteration {iteration - 1} in {self.checkpointer.root}; run the same command to resume"
        )

    def run(self, data_iter: Any, start_iter: int) -> int:
        """Train from `start_iter`; returns the number of iterations done (resumed ones included)."""
        clock, max_iter = self.clock, self.clock.total_iterations
        metric_logger = MetricLogger(delimiter="  ", output_file=self.output_dir / "training_metrics.json")
        images = int(self.cfg.train.batch_size_per_gpu) * distributed.get_world_size()
        progress = metric_logger.log_every(
            data_iter, int(self.cfg.train.print_freq), "Training", n_iterations=max_iter, start_iteration=start_iter,
            images_per_iteration=images, eta=clock.eta if clock.budget else None,
        )  # fmt: skip
        self.model.train()
        clock.start()
        iteration = start_iter
        with StopSignals() as stop:
            for batch in progress:
                elapsed = clock.synchronized_elapsed(self.model.device)
                if clock.exhausted(elapsed):
                    clock.stopped = True
                    break
                metrics = self.step(batch, iteration, clock.schedule_index(iteration, elapsed))
                clock.iterations += 1
                if metrics_row_due(iteration, int(self.cfg.train.print_freq), max_iter):
                    metrics.update(
                        self.probe.measure()
                    )  # one small SVD, on the iterations the progress line shows
                metric_logger.update(**metrics)
                self.trackers.log(metrics, step=iteration)
                if (iteration + 1) % self.period == 0 or iteration + 1 == max_iter:
                    self.save(iteration, metrics)
                if snapshot_due(iteration, self.eval_period):
                    self.snapshot(iteration)
                iteration += 1
                if iteration < max_iter and stop.requested(self.model.device):
                    self._stop(stop, progress, iteration, metrics)
        if clock.stopped and iteration > start_iter:
            # The budget's end is the run's end: its checkpoint and the teacher snapshot for evaluation.
            logger.info(
                "time budget of %.0f s reached after %d iterations: training stops here",
                clock.budget,
                iteration,
            )
            if iteration % self.period != 0:
                self.save(iteration - 1, metrics)
            if self.eval_period <= 0 or iteration % self.eval_period != 0:
                self.snapshot(iteration - 1)
        metric_logger.synchronize_between_processes()
        return iteration


def latest_checkpoint(cfg: DictConfig) -> Path:
    """The newest complete checkpoint of the run in `train.output_dir` (one clear error if none)."""
    root = Path(cfg.train.output_dir) / "ckpt"
    latest = Checkpointer(root, nn.Module()).latest()
    if latest is None:
        raise MissingFileError(
            f"--eval-only: no checkpoint in {root}; train first (without --eval-only) or give the "
            "--output-dir of a training run"
        )
    return latest


def do_eval_only(cfg: DictConfig, model: SSLMetaArch) -> Path:
    """Write the teacher snapshot of the latest checkpoint (`--eval-only`)."""
    latest = latest_checkpoint(cfg)
    state = Checkpointer(latest.parent, model).load(latest, with_optimizer=False)
    path = teacher_snapshot_path(cfg.train.output_dir, int(state["iteration"]))
    save_teacher_snapshot(model.teacher_for_snapshot(), path)
    return path


def main(args: argparse.Namespace) -> dict[str, Any] | Path:
    """Train (or, with `--eval-only`, snapshot the latest checkpoint's teacher) as `args` say."""
    cfg = setup(args)
    if args.eval_only:
        latest_checkpoint(cfg)  # before building the model: no checkpoint is reported at once
        return do_eval_only(cfg, build_model(cfg))
    with agree_on_errors("reading the dataset"):
        data = build_data(cfg)  # before the model: a dataset problem is reported without waiting for it
    model = build_model(cfg)
    return do_train(cfg, model, resume=not args.no_resume, data=data)


def run_cli(argv: list[str] | None = None) -> int:
    """Parse `argv` and run `main` (console entry point `simdinov2-train`); a user error ends every rank
    with one line and exit status 1."""
    cli.run_cli("", main, get_args_parser(add_help=True).parse_args(argv))
    return 0


if __name__ == "__main__":
    run_cli()
