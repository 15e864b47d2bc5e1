#!/usr/bin/env python
"""SimDINO (v1) pre-training script, DINO style: `cd simdino; torchrun ... main_dino.py --arch vit_base ...`.

This script owns the v1 program only: its command line (upstream SimDINO's flags and defaults, plus crop
sizes, depth, device, AMP dtype and a time budget) and `train_dino(args)`, which composes the training
core of `simdinov2/train/` (student/teacher pair, the one `train_step`, the schedule clock) into
upstream's outputs: `checkpoint.pth`, `checkpoint{epoch:04}.pth`, `log.txt`, `args.log`, `output.log`,
`training_metrics.json`. See docs/DESIGN.md for where each piece lives.

Launch modes: `torchrun --nproc_per_node=N` (gloo on CPU, nccl on CUDA), SLURM / submitit (see
`run_with_submitit.py`) or a plain `python main_dino.py` in one process without a process group.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import time
from pathlib import Path

from simdinov2.install_hint import exit_with_install_hint

with exit_with_install_hint("main_dino.py"):
    from simdinov2 import distributed

from simdino.train import dino_loop
from simdino.train.epoch_checkpoint import epoch_state, restart_from_checkpoint, save_epoch, save_mid_epoch
from simdino.train.multicrop import (
    TORCHVISION_ARCHS,
    VIT_ARCHS,
    MultiCropStudentTeacher,
    build_loss,
    build_student_teacher,
)
from simdinov2.cli import HelpFormatter, agree_on_errors, make_output_dir, run_cli
from simdinov2.configs.validate import check_v1_args
from simdinov2.data.augmentations import DataAugmentationDINO
from simdinov2.errors import UserError
from simdinov2.eval.knn_monitor import KnnMonitor, append_metrics_row
from simdinov2.logging import setup_logging
from simdinov2.precision import resolve_amp
from simdinov2.trackers import ExperimentTrackers, check_packages
from simdinov2.train.clock import TrainingClock
from simdinov2.train.health import warn_if_rank_deficient_covariance
from simdinov2.train.interrupt import StopSignals
from simdinov2.train.optim import build_optimizer, param_groups
from simdinov2.train.ssl_meta_arch import load_pretrained_backbone
from simdinov2.utils.utils import bool_flag, fix_random_seeds, get_sha

logger = logging.getLogger("simdinov2")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """Model: architecture and projection head."""
    parser.add_argument(
        "--arch",
        default="vit_small",
        type=str,
        choices=VIT_ARCHS + TORCHVISION_ARCHS,
        help="""Name of architecture to train: one of the ViTs (vit_tiny, vit_small, vit_base,
        vit_large, vit_giant2) or a torchvision convnet (resnet50, ...). For a quick start, use vit_tiny
        or vit_small.""",
    )
    parser.add_argument(
        "--patch_size",
        default=16,
        type=int,
        help="""Size in pixels of input square patches -
        default 16 (for 16x16 patches). Using smaller values leads to better performance but requires more
        memory. Applies only for ViTs. If <16, we recommend disabling mixed precision training
        (--use_fp16 false) to avoid instabilities.""",
    )
    parser.add_argument(
        "--depth",
        default=0,
        type=int,
        help="""Number of transformer blocks of the ViT
        (0: the arch's own, e.g. 12 for vit_tiny). Width and heads stay the arch's; a shallower network
        trains faster, e.g. on small images with a small compute budget (the CPU demo uses 6).""",
    )
    parser.add_argument(
        "--out_dim",
        default=65536,
        type=int,
        help="""Dimensionality of the DINO head output
        (number of prototypes). Only used by the DINO baseline (--use_simdino false): SimDINO has no
        prototype layer and feeds the --z_dim features to the coding-rate loss.""",
    )
    parser.add_argument(
        "--norm_last_layer",
        default=True,
        type=bool_flag,
        help="""Whether or not to weight normalize the last layer of the DINO head (DINO
        baseline only). Not normalizing leads to better performance but can make the training unstable.
        In DINO's experience, the parameter is set to False with vit_small and True with vit_base.""",
    )
    parser.add_argument(
        "--momentum_teacher",
        default=0.996,
        type=float,
        help="""Base EMA parameter for the
        teacher update. The value is increased to 1 during training with a cosine schedule. We recommend
        setting a higher value with small batches: for example use 0.9995 with batch size of 256.""",
    )
    parser.add_argument(
        "--use_bn_in_head",
        default=False,
        type=bool_flag,
        help="Whether to use batch normalizations in the projection head (Default: False)",
    )
    parser.add_argument(
        "--z_dim",
        default=256,
        type=int,
        help="""Dimension of the projection head output
        (its bottleneck): the L2-normalised features of the coding-rate loss in SimDINO, the input of the
        prototype layer in the DINO baseline.""",
    )
    parser.add_argument(
        "--hidden_dim", default=2048, type=int, help="Hidden dimension of the projection head MLP."
    )


def _add_init_args(parser: argparse.ArgumentParser) -> None:
    """Starting weights and the choice of loss (SimDINO or DINO)."""
    parser.add_argument(
        "--pretrained_weights",
        default="",
        type=str,
        help="""Backbone weights to start the
        student and teacher from (a released DINO / SimDINO checkpoint, a v2 teacher snapshot, a timm or hub
        checkpoint: any layout the evaluations read). Position embedding and patch kernel are resampled to
        this model's crop and patch size; the heads start fresh. A checkpoint.pth in --output_dir wins
        (the run resumes from it).""",
    )
    parser.add_argument(
        "--checkpoint_key",
        default="teacher",
        type=str,
        help='Which network of --pretrained_weights to take when it holds several (Default: "teacher").',
    )
    parser.add_argument(
        "--use_simdino",
        default=True,
        type=bool_flag,
        help="""Train SimDINO (coding-rate loss,
        no prototypes, no centering, no sharpening; default). False trains the DINO baseline: prototype
        layer of --out_dim, centered and sharpened teacher softmax, last layer frozen for
        --freeze_last_layer epochs.""",
    )


def _add_teacher_temperature_args(parser: argparse.ArgumentParser) -> None:
    """Teacher temperature (DINO baseline)."""
    parser.add_argument(
        "--warmup_teacher_temp",
        default=0.04,
        type=float,
        help="""Initial value for the
        teacher temperature (DINO baseline): 0.04 works well in most cases. Try decreasing it if the
        training loss does not decrease.""",
    )
    parser.add_argument(
        "--teacher_temp",
        default=0.04,
        type=float,
        help="""Final value (after linear warmup)
        of the teacher temperature (DINO baseline). For most experiments, anything above 0.07 is unstable.
        We recommend starting with the default value of 0.04 and increase this slightly if needed.""",
    )
    parser.add_argument(
        "--warmup_teacher_temp_epochs",
        default=0,
        type=int,
        help="Number of warmup epochs for the teacher temperature (Default: 0).",
    )


def _add_precision_args(parser: argparse.ArgumentParser) -> None:
    """Device, precision (fp16/bf16 autocast) and compilation."""
    parser.add_argument(
        "--compile",
        default=True,
        type=bool_flag,
        help="""Whether to torch.compile the student
        and teacher networks. Honoured on CUDA only; on CPU it is skipped (logged once).""",
    )
    parser.add_argument(
        "--use_fp16",
        type=bool_flag,
        default=None,
        help="""Whether or not to use half precision
        for training (autocast). Default: true on CUDA (float16 with a gradient scaler unless --amp_dtype
        bfloat16); on a CPU, bfloat16 only where it computes bf16 natively (AVX-512 BF16 / AMX), else fp32
        (logged; SIMDINO_CPU_BF16=0/1 overrides the detection). Improves training time and memory requirements,
        but can provoke instability and slight decay of performance. We recommend disabling mixed precision if
        the loss is unstable, if reducing the patch size or if training with bigger ViTs.""",
    )
    parser.add_argument(
        "--amp_dtype",
        default="auto",
        type=str,
        choices=["auto", "float16", "bfloat16"],
        help="""Autocast dtype when --use_fp16 is true: auto = float16 (+ grad scaler) on CUDA,
        bfloat16 on CPU. float16 requested on CPU runs as bfloat16.""",
    )
    parser.add_argument(
        "--device",
        default="auto",
        type=str,
        choices=["auto", "cpu", "cuda"],
        help="Where to train: auto = CUDA when available, else CPU.",
    )


def _add_optimization_args(parser: argparse.ArgumentParser) -> None:
    """Training / optimization: schedules, optimizer, batch size, budget."""
    parser.add_argument(
        "--weight_decay",
        type=float,
        default=0.04,
        help="""Initial value of the
        weight decay. With ViT, a smaller value at the beginning of training works well.""",
    )
    parser.add_argument(
        "--weight_decay_end",
        type=float,
        default=0.4,
        help="""Final value of the
        weight decay. We use a cosine schedule for WD and using a larger decay by the end of training
        improves performance for ViTs.""",
    )
    parser.add_argument(
        "--clip_grad",
        type=float,
        default=3.0,
        help="""Maximal parameter
        gradient norm if using gradient clipping. Clipping with norm .3 ~ 1.0 can
        help optimization for larger ViT architectures. 0 for disabling.""",
    )
    parser.add_argument(
        "--batch_size_per_gpu",
        default=64,
        type=int,
        help="Per-process batch-size: number of distinct images loaded on one GPU (or CPU process).",
    )
    parser.add_argument("--epochs", default=100, type=int, help="Number of epochs of training.")
    parser.add_argument(
        "--time_budget",
        default=0.0,
        type=float,
        help="""Wall-clock budget of the training
        loop in seconds (0: none, train for --epochs). With a budget, training stops cleanly (checkpoint,
        log.txt) at the first iteration that would start after it, and the lr, weight-decay and teacher-momentum
        schedules (and the DINO baseline's per-epoch ones) advance with the elapsed fraction of the budget
        instead of the iteration count, so they end exactly at the budget whatever the machine's speed.
        --epochs is then an upper bound, and --warmup_epochs / --epochs the warmup fraction of the budget.""",
    )
    parser.add_argument(
        "--freeze_last_layer",
        default=1,
        type=int,
        help="""Number of epochs
        during which we keep the output layer fixed (DINO baseline). Typically doing so during
        the first epoch helps training. Try increasing this value if the loss does not decrease.""",
    )
    parser.add_argument(
        "--lr",
        default=0.0005,
        type=float,
        help="""Learning rate at the end of
        linear warmup (highest LR used during training). The learning rate is linearly scaled
        with the batch size, and specified here for a reference batch size of 256.""",
    )
    parser.add_argument(
        "--warmup_epochs", default=10, type=int, help="Number of epochs for the linear learning-rate warm up."
    )
    parser.add_argument(
        "--min_lr",
        type=float,
        default=1e-6,
        help="""Target LR at the
        end of optimization. We use a cosine LR schedule with linear warmup.""",
    )
    parser.add_argument(
        "--optimizer",
        default="adamw",
        type=str,
        choices=["adamw", "sgd", "lars"],
        help="""Type of optimizer. We recommend using adamw with ViTs.""",
    )
    parser.add_argument("--drop_path_rate", type=float, default=0.1, help="stochastic depth rate")


def _add_multicrop_args(parser: argparse.ArgumentParser) -> None:
    """Multi-crop augmentation."""
    parser.add_argument(
        "--global_crops_scale",
        type=float,
        nargs=2,
        default=(0.4, 1.0),
        help="""Scale range of the cropped image before resizing, relatively to the origin image.
        Used for large global view cropping. When disabling multi-crop (--local_crops_number 0), we
        recommend using a wider range of scale ("--global_crops_scale 0.14 1." for example)""",
    )
    parser.add_argument(
        "--local_crops_number",
        type=int,
        default=8,
        help="""Number of small
        local views to generate. Set this parameter to 0 to disable multi-crop training.
        When disabling multi-crop we recommend to use "--global_crops_scale 0.14 1." """,
    )
    parser.add_argument(
        "--local_crops_scale",
        type=float,
        nargs=2,
        default=(0.05, 0.4),
        help="""Scale range of the cropped image before resizing, relatively to the origin image.
        Used for small local view cropping of multi-crop.""",
    )
    parser.add_argument(
        "--global_crops_size",
        type=int,
        default=224,
        help="Side in pixels of the 2 global crops (and of the ViT position embedding).",
    )
    parser.add_argument(
        "--local_crops_size",
        type=int,
        default=96,
        help="Side in pixels of the local crops (small images need small crops).",
    )


def _add_misc_args(parser: argparse.ArgumentParser) -> None:
    """Data, outputs, seeds, launch and trackers."""
    parser.add_argument(
        "--data_path",
        default=None,
        type=str,
        help="Please specify path to the ImageNet training data (an ImageFolder tree: one folder per class).",
    )
    parser.add_argument("--output_dir", default=".", type=str, help="Path to save logs and checkpoints.")
    parser.add_argument(
        "--saveckp_freq",
        default=10,
        type=int,
        help="Save checkpoint{epoch:04}.pth every x epochs (0: never).",
    )
    parser.add_argument("--seed", default=0, type=int, help="Random seed.")
    parser.add_argument("--num_workers", default=10, type=int, help="Number of data loading workers per GPU.")
    parser.add_argument(
        "--dist_url",
        default="env://",
        type=str,
        help="""url used to set up
        distributed training (kept for compatibility: the rendezvous is env://, set by torchrun or SLURM).""",
    )
    parser.add_argument(
        "--local_rank",
        "--local-rank",
        default=0,
        type=int,
        help="Please ignore and do not set this argument (set by old launchers; torchrun uses LOCAL_RANK).",
    )
    parser.add_argument(
        "--knn_monitor_path",
        default="",
        type=str,
        help="""Folder with labeled train/ and val/
        ImageFolder trees (a small set: a few thousand images): the teacher's weighted k-NN top-1 on it is
        logged as knn_monitor_top1 (log.txt, training_metrics.json, trackers) every --knn_monitor_freq epochs.""",
    )
    parser.add_argument(
        "--knn_monitor_freq",
        default=1,
        type=int,
        help="Epochs between k-NN monitor runs (and the last epoch).",
    )
    parser.add_argument(
        "--track_wandb",
        action="store_true",
        help="Log metrics to Weights & Biases (honours WANDB_MODE=offline; needs `pip install wandb`).",
    )
    parser.add_argument(
        "--track_swan", action="store_true", help="Log metrics to SwanLab (needs `pip install swanlab`)."
    )


def _add_coding_rate_args(parser: argparse.ArgumentParser) -> None:
    """SimDINO coding-rate loss."""
    parser.add_argument(
        "--coeff",
        default=1.0,
        type=float,
        help="Weight of the compression (teacher/student alignment) term of the coding-rate loss.",
    )
    parser.add_argument(
        "--eps",
        default=0.5,
        type=float,
        help="""Precision eps of the coding rate
        R = 1/2 logdet(I + p/(m N eps) Z^T Z); must be > 0. A smaller eps expands the features more
        (the released ViT-B/16 run uses 0.05).""",
    )
    parser.add_argument(
        "--reduce_cov",
        default=0,
        type=int,
        choices=[0, 1],
        help="""1: sum the feature
        covariance over all processes (all_reduce) before the coding rate; useful with small per-GPU batches.""",
    )
    parser.add_argument(
        "--expa_type",
        default=1,
        type=int,
        choices=[0, 1],
        help="""Features of the
        expansion term: 0 = student global views, 1 = (student + teacher) / 2 per global view (smoother).""",
    )


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The v1 command line: every flag and default of upstream SimDINO's main_dino.py, plus crop sizes,
    device and AMP choices. `add_help=False` lets launchers (run_with_submitit.py) use it as a parent."""
    parser = argparse.ArgumentParser("SimDINO", add_help=add_help, formatter_class=HelpFormatter)
    for add_group in (
        _add_model_args,
        _add_init_args,
        _add_teacher_temperature_args,
        _add_precision_args,
        _add_optimization_args,
        _add_multicrop_args,
        _add_misc_args,
        _add_coding_rate_args,
    ):
        add_group(parser)
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Checks of the flags that need no data or model; each failure is one line saying what to change."""
    check_v1_args(args)  # the ranges of the values both trees share
    for name in ("batch_size_per_gpu", "epochs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    check_packages(args.track_wandb, args.track_swan)
    if not getattr(args, "time_budget", 0.0) >= 0:
        raise UserError(f"--time_budget must be >= 0 seconds (got {args.time_budget}); 0 means no budget")
    if getattr(args, "depth", 0) < 0:
        raise UserError(f"--depth must be >= 1 blocks, or 0 for the arch's own (got {args.depth})")
    if args.arch in VIT_ARCHS:
        crops = [("global_crops_size", args.global_crops_size)]
        crops += [("local_crops_size", args.local_crops_size)] if args.local_crops_number else []
        for name, size in crops:
            if size < args.patch_size:
                raise UserError(
                    f"--{name} {size} is smaller than one patch (--patch_size {args.patch_size}): "
                    f"raise --{name} or lower --patch_size"
                )
    if args.arch in VIT_ARCHS and args.global_crops_size % args.patch_size:
        logger.warning(
            "--global_crops_size %d is not a multiple of --patch_size %d: border pixels are dropped",
            args.global_crops_size,
            args.patch_size,
        )
    if args.warmup_epochs >= args.epochs:
        logger.warning(
            f"--warmup_epochs {args.warmup_epochs} >= --epochs {args.epochs}: the learning rate never "
            "leaves its linear warm-up; lower --warmup_epochs"
        )


def loop_settings(args: argparse.Namespace) -> dino_loop.LoopSettings:
    """The flags the training loop reads, typed, taken once from the command line."""
    return dino_loop.LoopSettings(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(dino_loop.LoopSettings)}
    )


def start_run(args: argparse.Namespace) -> tuple[Path, ExperimentTrackers]:
    """Output folder, logs (`output.log`, `args.log`), seeds and trackers, on every rank."""
    output_dir = Path(args.output_dir)
    if distributed.is_main_process():
        make_output_dir(output_dir)
    setup_logging(output_dir)
    fix_random_seeds(args.seed)
    logger.info(f"git:\n  {get_sha()}\n")
    args_text = "\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items()))
    logger.info(args_text)
    if distributed.is_main_process():
        (output_dir / "args.log").write_text(args_text + "\n")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    with agree_on_errors("starting the experiment trackers"):
        trackers = ExperimentTrackers(
            output_dir, config, "simdino", wandb=args.track_wandb, swanlab=args.track_swan
        )
    return output_dir, trackers


def init_from_pretrained(args: argparse.Namespace, student, teacher, checkpoint_path: Path) -> None:
    """Both backbones from `--pretrained_weights` (resized as v2's `student.pretrained_weights`), unless the
    run resumes from `checkpoint_path`."""
    if not args.pretrained_weights:
        return
    if checkpoint_path.is_file():
        logger.info(
            f"--pretrained_weights {args.pretrained_weights} not loaded: {checkpoint_path} exists and the run resumes from it"
        )
        return
    if args.arch not in VIT_ARCHS:
        raise UserError(f"--pretrained_weights needs a ViT --arch ({', '.join(VIT_ARCHS)}), not {args.arch}")
    report = load_pretrained_backbone(
        student.backbone, args.pretrained_weights, checkpoint_key=args.checkpoint_key
    )
    teacher.backbone.load_state_dict(student.backbone.state_dict())
    logger.info(
        f"student and teacher backbones start from {args.pretrained_weights}: {report.summary()}; heads start fresh"
    )


def build_knn_monitor(args: argparse.Namespace) -> KnnMonitor | None:
    """The k-NN monitor of `--knn_monitor_path` (None without it)."""
    if not args.knn_monitor_path:
        return None
    if args.knn_monitor_freq < 1:
        raise UserError(f"--knn_monitor_freq must be >= 1 epoch (got {args.knn_monitor_freq})")
    with agree_on_errors("reading the k-NN monitor set"):
        return KnnMonitor(args.knn_monitor_path, args.global_crops_size, batch_size=args.batch_size_per_gpu)


def run_knn_monitor(monitor: KnnMonitor | None, args: argparse.Namespace, epoch: int, teacher, clock: TrainingClock,
                    output_dir: Path) -> dict[str, float]:  # fmt: skip
    """The teacher's k-NN top-1 after `epoch` when due (every --knn_monitor_freq epochs and the last), its row in
    training_metrics.json; its time is left out of the budget."""
    due = (epoch + 1) % args.knn_monitor_freq == 0 or epoch + 1 == args.epochs or clock.stopped
    if monitor is None or not due:
        return {}
    knn = monitor(teacher.backbone)
    clock.exclude(knn["knn_monitor_seconds"])
    append_metrics_row(output_dir / "training_metrics.json", clock.iterations - 1, {**knn, "epoch": epoch})
    return knn


def train_dino(args: argparse.Namespace) -> dict[str, float]:
    """Train SimDINO (or the DINO baseline with --use_simdino false) as described by `args`.

    Returns a summary of the whole run (resumed parts included): `epochs`, `iterations`, `images_seen`
    (over all processes) and `train_seconds` (wall time of the training loops)."""
    validate_args(args)
    device = distributed.init_distributed(args.device)
    output_dir, trackers = start_run(args)
    try:
        with (
            StopSignals() as stop
        ):  # SIGINT / SIGTERM / SIGUSR2: checkpoint of the iteration reached, one line
            return _train(args, device, output_dir, trackers, stop)
    finally:
        trackers.finish()


def _log_world(args: argparse.Namespace, world_size: int, device) -> None:
    logger.info(f"world size {world_size}, device {device}")
    if args.use_simdino:
        warn_if_rank_deficient_covariance(
            args.batch_size_per_gpu, args.z_dim, bool(args.reduce_cov), world_size, "--reduce_cov 1"
        )


def _build_data_loader(args: argparse.Namespace, settings: dino_loop.LoopSettings, device):
    transform = DataAugmentationDINO(
        args.global_crops_scale, args.local_crops_scale, args.local_crops_number,
        global_crops_size=args.global_crops_size, local_crops_size=args.local_crops_size, flat=True,
        blur="dino",  # DINO v1's PIL blur with the drawn radius, as upstream v1
    )  # fmt: skip
    with agree_on_errors("reading the dataset"):
        return dino_loop.build_data_loader(
            settings, dino_loop.build_dataset(args.data_path, transform), device
        )


def _build_networks(args: argparse.Namespace, settings: dino_loop.LoopSettings, output_dir: Path, device):
    """Student and teacher, started from --pretrained_weights when given, wrapped for this device and world."""
    student, teacher = build_student_teacher(args)
    init_from_pretrained(args, student, teacher, output_dir / "checkpoint.pth")
    student, student_without_ddp, teacher = dino_loop.prepare_networks(settings, student, teacher, device)
    n_params = sum(p.numel() for p in student_without_ddp.parameters())
    logger.info(
        f"Student and Teacher are built: they are both {args.arch} network ({n_params / 1e6:.2f}M parameters)."
    )
    return student, student_without_ddp, teacher


def _log_start(args: argparse.Namespace, clock: TrainingClock) -> None:
    logger.info("Starting SimDINO training !" if args.use_simdino else "Starting DINO training !")
    if clock.budget:
        logger.info(
            f"Time budget: {clock.budget:.0f} s of training ({clock.spent:.0f} s already spent); "
            f"schedules follow the elapsed fraction of it"
        )


def _train(
    args: argparse.Namespace, device, output_dir: Path, trackers: ExperimentTrackers, stop: StopSignals
) -> dict[str, float]:
    settings = loop_settings(args)
    world_size = distributed.get_world_size()
    _log_world(args, world_size, device)
    # ============ data ... ============
    data_loader = _build_data_loader(args, settings, device)
    monitor = build_knn_monitor(args)
    # ============ building student and teacher networks, loss, optimizer ... ============
    student, student_without_ddp, teacher = _build_networks(args, settings, output_dir, device)
    loss_fn = build_loss(args).to(device)
    optimizer = build_optimizer(args.optimizer, param_groups(student_without_ddp))
    amp = resolve_amp(device, args.use_fp16, args.amp_dtype)
    scaler = amp.grad_scaler()
    pair = MultiCropStudentTeacher(
        student, student_without_ddp, teacher, loss_fn, amp, args.use_simdino, args.freeze_last_layer
    )
    # ============ schedules, clock and resume ... ============
    niter_per_ep = len(data_loader)
    schedules = dino_loop.build_schedules(settings, niter_per_ep)
    clock = TrainingClock(
        args.time_budget, total_iterations=args.epochs * niter_per_ep, niter_per_epoch=niter_per_ep
    )
    checkpoint_path = output_dir / "checkpoint.pth"
    start_epoch, mid_epoch = restart_from_checkpoint(
        checkpoint_path, args, student_without_ddp, teacher, optimizer, loss_fn, scaler, clock
    )
    loop = dino_loop.EpochLoop(
        pair=pair,
        optimizer=optimizer,
        scaler=scaler,
        data_loader=data_loader,
        schedules=schedules,
        settings=settings,
        device=device,
        trackers=trackers,
        checkpoint_path=checkpoint_path,
        clock=clock,
        stop=stop,
    )
    # ============ training ... ============
    _log_start(args, clock)
    start_time = time.time()
    clock.start()
    epochs_done = start_epoch
    for epoch in range(start_epoch, args.epochs):
        if clock.exhausted(clock.synchronized_elapsed(device)):
            break
        data_loader.sampler.set_epoch(epoch)
        fix_random_seeds(dino_loop.epoch_seed(args.seed, epoch, distributed.get_rank()))
        train_stats = dino_loop.run_epoch(loop, epoch, resume=mid_epoch if epoch == start_epoch else None)
        if stop.position is not None:  # a stop signal within the epoch
            state = epoch_state(
                args, epoch - 1, student_without_ddp, teacher, optimizer, loss_fn, scaler, clock
            )
            save_mid_epoch(checkpoint_path, state, stop.position, stop.meters, clock.iterations)
            stop.finish(
                f"checkpoint of epoch {epoch}, iteration {stop.position} of {niter_per_ep}, written to "
                f"{checkpoint_path}; run the same command to resume"
            )
        # ============ writing logs ... ============
        log_stats = {**{f"train_{k}": v for k, v in train_stats.items()}, "epoch": epoch}
        log_stats.update(run_knn_monitor(monitor, args, epoch, teacher, clock, output_dir))
        if distributed.is_main_process():
            state = epoch_state(args, epoch, student_without_ddp, teacher, optimizer, loss_fn, scaler, clock)
            save_epoch(output_dir, epoch, state, log_stats, args.saveckp_freq)
            trackers.log({f"epoch/{k}": v for k, v in log_stats.items()}, step=(epoch + 1) * niter_per_ep)
        distributed.barrier()
        epochs_done = epoch + 1
        if epoch + 1 < args.epochs and stop.requested(device):
            stop.finish(
                f"checkpoint of epoch {epoch} written to {checkpoint_path}; run the same command to resume"
            )
        if clock.stopped:
            logger.info(f"Time budget of {clock.budget:.0f} s reached in epoch {epoch}: training stops here")
            break
    logger.info(f"Training time {datetime.timedelta(seconds=int(time.time() - start_time))}")
    return training_summary(args, clock, epochs_done, world_size)


def training_summary(
    args: argparse.Namespace, clock: TrainingClock, epochs_done: int, world_size: int
) -> dict[str, float]:
    """What `train_dino` returns (the whole run, resumed parts included); warns of a budget left unspent."""
    if clock.budget and not clock.stopped and clock.spent < clock.budget:
        logger.warning(
            f"--epochs {args.epochs} ended after {clock.spent:.0f} s, before the {clock.budget:.0f} s "
            "budget: the schedules did not reach their end; raise --epochs"
        )
    return {
        "epochs": float(epochs_done),
        "iterations": float(clock.iterations),
        "images_seen": float(clock.iterations * args.batch_size_per_gpu * world_size),
        "train_seconds": float(clock.spent),
    }


def main(args: argparse.Namespace | None = None) -> dict[str, float]:
    """CLI entry point (also what each task of `run_with_submitit.py` runs): user errors, a non-finite loss
    included, end the program with one line and exit code 1 on every rank."""
    if args is None:
        args = get_args_parser().parse_args()
    return run_cli("main_dino.py", train_dino, args)


def cli() -> int:
    """Console entry point (`simdino-train`)."""
    main()
    return 0


if __name__ == "__main__":
    main()
