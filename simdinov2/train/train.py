"""The v2 training entry point: `simdinov2/train/train.py --config-file F --output-dir D key=value ...`.

Launch it with `torchrun` (gloo on CPU, nccl on CUDA, chosen by `simdinov2.distributed`), under SLURM
(`simdinov2/run/train/train.py` submits `main` with submitit) or as a plain `python` process. This
module owns the training loop: configuration set-up, the dataset and its epoch length
(len(dataset) // global batch), the per-iteration schedules (lr, weight decay, teacher momentum and
temperature, last-layer freeze, iBOT weight, coding-rate eps / coeff), the optimizer step with
gradient clipping, the teacher EMA, logging (`training_metrics.json`, console with ETA, optional wandb),
resumable checkpoints and the teacher snapshots under `eval/training_<iteration>/`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script path (`python simdinov2/train/train.py`): make the repository importable without
    # relying on an editable install, and keep this folder from shadowing top-level modules.
    _SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _SCRIPT_DIR]
    sys.path.insert(0, os.path.dirname(os.path.dirname(_SCRIPT_DIR)))

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from simdinov2 import distributed
from simdinov2.checkpoint import Checkpointer, save_teacher_snapshot
from simdinov2.configs import apply_actions, apply_scaling_rules_to_cfg, get_cfg, scheduled_actions, write_config
from simdinov2.fsdp import resolve_sharding
from simdinov2.logging import MetricLogger, SmoothedValue, setup_logging
from simdinov2.train.optim import apply_optim_schedule
from simdinov2.train.recipe_keys import (
    NonFiniteGuard,
    backbone_frozen,
    build_optimizer_by_name,
    clip_grad_schedule,
    compile_enabled,
    epoch_length,
    snapshot_period,
)
from simdinov2.train.ssl_meta_arch import SSLMetaArch, ibot_enabled
from simdinov2.utils.schedules import CosineScheduler
from simdinov2.utils.utils import fix_random_seeds

logger = logging.getLogger("simdinov2")

USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("SimDINOv2 training", add_help=add_help)
    parser.add_argument("--config-file", "--config_file", default="", metavar="FILE", help="path to a config file")
    parser.add_argument(
        "--no-resume", "--no_resume", action="store_true", help="start from scratch even if checkpoints exist"
    )
    parser.add_argument(
        "--eval-only", "--eval_only", action="store_true",
        help="write eval/training_<it>/teacher_checkpoint.pth from the latest checkpoint and exit",
    )
    parser.add_argument("--output-dir", "--output_dir", default="", type=str, help="output folder (train.output_dir)")
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER, help="config overrides: key=value (e.g. optim.epochs=10)"
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

    Raises one clear ValueError when the dataset holds fewer images than one global batch."""
    from simdinov2.data import DataAugmentationDINO, MaskingGenerator, collate_data_and_cast, make_dataset

    transform = DataAugmentationDINO(
        global_crops_scale=cfg.crops.global_crops_scale,
        local_crops_scale=cfg.crops.local_crops_scale,
        local_crops_number=int(cfg.crops.local_crops_number),
        global_crops_size=int(cfg.crops.global_crops_size),
        local_crops_size=int(cfg.crops.local_crops_size),
    )
    dataset = make_dataset(str(cfg.train.dataset_path), transform=transform)
    global_batch = int(cfg.train.batch_size_per_gpu) * distributed.get_world_size()
    epoch_len = epoch_length(len(dataset), global_batch, int(cfg.train.OFFICIAL_EPOCH_LENGTH))
    if epoch_len < 1:
        raise ValueError(
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
            float(optim.lr), float(optim.min_lr), total, warmup_iters=int(optim.warmup_epochs) * epoch_len,
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
        float(optim.lr), float(optim.min_lr), total, warmup_iters=int(optim.warmup_epochs) * epoch_len,
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
def reduce_loss_dict(loss_dict: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of every loss part over processes (one all-reduce), as floats for logging."""
    names = sorted(loss_dict)
    values = torch.stack([loss_dict[k].detach().float().reshape(()) for k in names])
    values = distributed.all_reduce_mean(values)
    return dict(zip(names, values.tolist()))


def train_step(
    model: SSLMetaArch,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    values: dict[str, float],
    clip_grad: float,
    scaler: Any = None,
    nan_guard: NonFiniteGuard | None = None,
    freeze_backbone: bool = False,
    iteration: int = 0,
) -> dict[str, float]:
    """One optimisation step with the schedule `values` of this iteration; returns the reduced losses.

    A non-finite loss raises FloatingPointError before touching the weights, or with `ignore_nan`
    (`nan_guard`) skips the step; `freeze_backbone` leaves the student backbone unchanged."""
    apply_optim_schedule(optimizer, values["lr"], values["wd"], values["last_layer_lr"])
    model.set_mcr_schedule(values.get("mcr_eps"), values.get("mcr_coeff"))
    optimizer.zero_grad(set_to_none=True)
    loss, loss_dict = model.forward_losses(batch, values["teacher_temp"], values["ibot_loss_weight"])
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    reduced = reduce_loss_dict(loss_dict)
    if not (nan_guard or NonFiniteGuard(False)).check(reduced, iteration):
        optimizer.zero_grad(set_to_none=True)
        return reduced
    if freeze_backbone:
        model.release_backbone_gradients()
    clip_grad = values.get("clip_grad", clip_grad)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad > 0:
        reduced.update(model.clip_gradients(clip_grad))
    # Upstream only stepped when clip_grad > 0; clip_grad=0 means "no clipping", never "no training".
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    model.update_teacher(values["mom"])
    return reduced


def _snapshot_path(output_dir: str | Path, iteration: int) -> Path:
    return Path(output_dir) / "eval" / f"training_{iteration}" / "teacher_checkpoint.pth"


def _init_wandb(cfg: DictConfig) -> Any:
    if not bool(cfg.train.wandb) or not distributed.is_main_process():
        return None
    try:
        import wandb
    except ImportError as exc:
        raise ValueError("train.wandb=true needs the wandb package: pip install wandb (or set train.wandb=false)") from exc
    return wandb.init(
        project=str(cfg.train.wandb_project),
        name=Path(cfg.train.output_dir).name,
        dir=str(cfg.train.output_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
        resume="allow",
    )


def do_train(
    cfg: DictConfig, model: SSLMetaArch, resume: bool = True, data: tuple[Any, int, Any] | None = None
) -> dict[str, Any]:
    """Train until `optim.epochs` epochs; resumes from the latest checkpoint unless `resume=False`.

    `data` is `build_data(cfg)` when the caller built it already."""
    from simdinov2.data import make_data_loader

    output_dir = Path(cfg.train.output_dir)
    dataset, epoch_len, collate_fn = data if data is not None else build_data(cfg)
    max_iter = int(cfg.optim.epochs) * epoch_len
    optimizer = build_optimizer_by_name(str(cfg.optim.opt), model.get_params_groups(), cfg.optim.kwargs)
    scaler = build_grad_scaler(cfg, model)
    schedules = build_schedulers(cfg, epoch_len)
    checkpointer = Checkpointer(output_dir / "ckpt", model, optimizer, max_to_keep=int(cfg.checkpointing.max_to_keep))
    period = int(cfg.checkpointing.period)
    period = epoch_len if period <= 0 else period
    eval_period = snapshot_period(
        int(cfg.evaluation.eval_period_epochs), int(cfg.evaluation.eval_period_iterations), epoch_len
    )
    actions = scheduled_actions(cfg)
    nan_guard = NonFiniteGuard(bool(cfg.ignore_nan), int(cfg.train.max_nan_steps))

    start_iter = 0
    latest = checkpointer.latest()
    if latest is not None and resume:
        state = checkpointer.load(latest)
        start_iter = int(state["iteration"]) + 1
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        logger.info("resumed from %s: continuing at iteration %d", latest, start_iter)
    elif latest is not None:
        logger.info("--no-resume: ignoring the checkpoints in %s (they are replaced as training saves)", latest.parent)
    logger.info(
        "dataset: %d images, %d iterations per epoch of %d x %d images, %d epochs = %d iterations",
        len(dataset), epoch_len, int(cfg.train.batch_size_per_gpu), distributed.get_world_size(),
        int(cfg.optim.epochs), max_iter,
    )
    if start_iter >= max_iter:
        logger.info("training already complete (%d of %d iterations); raise optim.epochs to continue", start_iter, max_iter)
        return {"iteration": start_iter - 1, "epoch_len": epoch_len}

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
    if latest is not None and resume:
        # After the loader's iterator exists (creating it draws from torch's RNG): the resumed run
        # continues the saved random streams exactly.
        Checkpointer.restore_rng(latest)

    # A resumed run first re-applies the actions of the epochs it already started.
    for past_epoch in range(-(-start_iter // epoch_len)) if actions else ():
        apply_actions(cfg, actions, past_epoch)
    wandb_run = _init_wandb(cfg)
    metric_logger = MetricLogger(delimiter="  ", output_file=output_dir / "training_metrics.json")
    # One value per iteration in training_metrics.json (no smoothing window), running mean on the console.
    metric_logger.meters = defaultdict(lambda: SmoothedValue(window_size=1, fmt="{value:.4f} ({global_avg:.4f})"))
    clip_grad = float(cfg.optim.clip_grad)  # after the actions above, which may set it
    model.train()
    iteration = start_iter
    for batch in metric_logger.log_every(
        data_iter, int(cfg.train.print_freq), "Training", n_iterations=max_iter, start_iteration=start_iter
    ):
        values = {name: schedule[iteration] for name, schedule in schedules.items()}
        if actions and iteration % epoch_len == 0:
            for key, value in apply_actions(cfg, actions, iteration // epoch_len).items():
                logger.info("train.actions: %s=%s from epoch %d", key, value, iteration // epoch_len)
            clip_grad = float(cfg.optim.clip_grad)
        frozen = backbone_frozen(iteration, epoch_len, int(cfg.student.freeze_backbone_epochs))
        try:
            losses = train_step(model, optimizer, batch, values, clip_grad, scaler, nan_guard, frozen, iteration)
        except FloatingPointError as exc:
            raise FloatingPointError(
                f"{exc} at iteration {iteration}: training stopped; lower optim.base_lr or raise dino.mcr.eps and "
                f"resume from the last checkpoint in {checkpointer.root} (or start over with --no-resume)"
            ) from None
        record = {k: v for k, v in values.items() if k != "teacher_temp" or model.uses_cross_entropy}
        metric_logger.update(**record, **losses)
        if wandb_run is not None:
            wandb_run.log({**record, **losses}, step=iteration)
        if (iteration + 1) % period == 0 or iteration + 1 == max_iter:
            trainer_state = {"epoch_len": epoch_len, "epoch": (iteration + 1) / epoch_len}
            if scaler is not None:
                trainer_state["grad_scaler"] = scaler.state_dict()
            checkpointer.save(iteration, trainer_state)
        if eval_period > 0 and (iteration + 1) % eval_period == 0:
            save_teacher_snapshot(model.teacher_for_snapshot(), _snapshot_path(output_dir, iteration))
        iteration += 1
    metric_logger.synchronize_between_processes()
    if wandb_run is not None:
        wandb_run.finish()
    logger.info("training done: %d iterations", iteration)
    return {"iteration": iteration - 1, "epoch_len": epoch_len}


def latest_checkpoint(cfg: DictConfig) -> Path:
    """The newest complete checkpoint of the run in `train.output_dir` (one clear error if none)."""
    root = Path(cfg.train.output_dir) / "ckpt"
    latest = Checkpointer(root, nn.Module()).latest()
    if latest is None:
        raise FileNotFoundError(
            f"--eval-only: no checkpoint in {root}; train first (without --eval-only) or give the "
            "--output-dir of a training run"
        )
    return latest


def do_eval_only(cfg: DictConfig, model: SSLMetaArch) -> Path:
    """Write the teacher snapshot of the latest checkpoint (`--eval-only`)."""
    latest = latest_checkpoint(cfg)
    state = Checkpointer(latest.parent, model).load(latest, with_optimizer=False)
    path = _snapshot_path(cfg.train.output_dir, int(state["iteration"]))
    save_teacher_snapshot(model.teacher_for_snapshot(), path)
    return path


def main(args: argparse.Namespace) -> dict[str, Any] | Path:
    """Train (or, with `--eval-only`, snapshot the latest checkpoint's teacher) as `args` say."""
    cfg = setup(args)
    if args.eval_only:
        latest_checkpoint(cfg)  # before building the model: no checkpoint is reported at once
        return do_eval_only(cfg, build_model(cfg))
    data = build_data(cfg)  # before the model: a dataset problem is reported without waiting for it
    model = build_model(cfg)
    return do_train(cfg, model, resume=not args.no_resume, data=data)


def run_cli(argv: list[str] | None = None) -> None:
    """Parse `argv`, run `main`, turn user errors into one line on stderr and exit status 1."""
    args = get_args_parser(add_help=True).parse_args(argv)
    try:
        main(args)
    except USER_ERRORS as exc:
        # One line from the main process; the other ranks exit quietly with the same status.
        message = f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        raise SystemExit(message if distributed.get_rank() == 0 else 1) from None
    finally:
        if distributed.is_enabled():
            try:
                distributed.destroy()
            except Exception:  # pragma: no cover - best effort at exit
                pass


if __name__ == "__main__":
    run_cli()
