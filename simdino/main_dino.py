#!/usr/bin/env python
"""SimDINO (v1) pre-training script, DINO style: `cd simdino; torchrun ... main_dino.py --arch vit_base ...`.

This module owns the v1 training program only: its command line (REFERENCE.md §2), the student/teacher
`MultiCropWrapper`, the epoch loop and the upstream output files (`checkpoint.pth`,
`checkpoint{epoch:04}.pth`, `log.txt`, `args.log`, `output.log`). Every building block comes from
`simdinov2` (ViT, heads, the coding-rate loss, DINO's loss, augmentation, schedules, optimizers, logging,
process groups); see docs/DESIGN.md.

Launch modes: `torchrun --nproc_per_node=N` (gloo on CPU, nccl on CUDA), SLURM / submitit (see
`run_with_submitit.py`) or a plain `python main_dino.py` in one process without a process group.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import logging
import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

# Run from inside `simdino/` without `pip install -e .`: make the repository root importable.
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if importlib.util.find_spec("simdinov2") is None:  # pragma: no cover - depends on the install
    sys.path.insert(0, _REPO_ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, DistributedSampler  # noqa: E402

from simdinov2 import distributed  # noqa: E402
from simdinov2.checkpoint import atomic_torch_save  # noqa: E402
from simdinov2.data.augmentations import DataAugmentationDINO  # noqa: E402
from simdinov2.data.datasets.image_folder import UnreadableImageError  # noqa: E402
from simdinov2.layers import DINOHead  # noqa: E402
from simdinov2.logging import MetricLogger, setup_logging  # noqa: E402
from simdinov2.loss import DINOLoss, MCRLoss  # noqa: E402
from simdinov2.models import ARCHS, DinoVisionTransformer, build_vit  # noqa: E402
from simdinov2.train.optim import (  # noqa: E402
    build_optimizer,
    cancel_gradients_last_layer,
    clip_gradients,
    ema_update,
    param_groups,
    resolve_amp,
)
from simdinov2.utils.schedules import cosine_scheduler_epochs  # noqa: E402
from simdinov2.utils.utils import bool_flag, fix_random_seeds, get_sha  # noqa: E402

logger = logging.getLogger("simdinov2")

VIT_ARCHS = list(ARCHS)
# torchvision families whose classifier is a `fc` Linear (DINO's ResNet-50 runs use these).
_TORCHVISION_FAMILIES = ("resnet", "resnext", "wide_resnet", "regnet")


def _torchvision_archs() -> list[str]:
    try:
        import torchvision.models as tvm

        names = tvm.list_models(module=tvm)
    except Exception:  # pragma: no cover - torchvision missing or broken
        return []
    return sorted(n for n in names if n.startswith(_TORCHVISION_FAMILIES))


TORCHVISION_ARCHS = _torchvision_archs()


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The v1 command line: every flag and default of upstream SimDINO's main_dino.py, plus crop sizes,
    device and AMP choices. `add_help=False` lets launchers (run_with_submitit.py) use it as a parent."""
    parser = argparse.ArgumentParser("SimDINO", add_help=add_help)

    # Model parameters
    parser.add_argument("--arch", default="vit_small", type=str, choices=VIT_ARCHS + TORCHVISION_ARCHS,
                        help="""Name of architecture to train: one of the ViTs (vit_tiny, vit_small, vit_base,
        vit_large, vit_giant2) or a torchvision convnet (resnet50, ...). For a quick start, use vit_tiny
        or vit_small.""")
    parser.add_argument("--patch_size", default=16, type=int, help="""Size in pixels of input square patches -
        default 16 (for 16x16 patches). Using smaller values leads to better performance but requires more
        memory. Applies only for ViTs. If <16, we recommend disabling mixed precision training
        (--use_fp16 false) to avoid instabilities.""")
    parser.add_argument("--depth", default=0, type=int, help="""Number of transformer blocks of the ViT
        (0: the arch's own, e.g. 12 for vit_tiny). Width and heads stay the arch's; a shallower network
        trains faster, e.g. on small images with a small compute budget (the CPU demo uses 6).""")
    parser.add_argument("--out_dim", default=65536, type=int, help="""Dimensionality of the DINO head output
        (number of prototypes). Only used by the DINO baseline (--use_simdino false): SimDINO has no
        prototype layer and feeds the --z_dim features to the coding-rate loss.""")
    parser.add_argument("--norm_last_layer", default=True, type=bool_flag,
                        help="""Whether or not to weight normalize the last layer of the DINO head (DINO
        baseline only). Not normalizing leads to better performance but can make the training unstable.
        In DINO's experience, the parameter is set to False with vit_small and True with vit_base.""")
    parser.add_argument("--momentum_teacher", default=0.996, type=float, help="""Base EMA parameter for the
        teacher update. The value is increased to 1 during training with a cosine schedule. We recommend
        setting a higher value with small batches: for example use 0.9995 with batch size of 256.""")
    parser.add_argument("--use_bn_in_head", default=False, type=bool_flag,
                        help="Whether to use batch normalizations in the projection head (Default: False)")
    parser.add_argument("--z_dim", default=256, type=int, help="""Dimension of the projection head output
        (its bottleneck): the L2-normalised features of the coding-rate loss in SimDINO, the input of the
        prototype layer in the DINO baseline.""")
    parser.add_argument("--hidden_dim", default=2048, type=int, help="Hidden dimension of the projection head MLP.")
    parser.add_argument("--use_simdino", default=True, type=bool_flag, help="""Train SimDINO (coding-rate loss,
        no prototypes, no centering, no sharpening; default). False trains the DINO baseline: prototype
        layer of --out_dim, centered and sharpened teacher softmax, last layer frozen for
        --freeze_last_layer epochs.""")

    # Temperature teacher parameters (DINO baseline)
    parser.add_argument("--warmup_teacher_temp", default=0.04, type=float, help="""Initial value for the
        teacher temperature (DINO baseline): 0.04 works well in most cases. Try decreasing it if the
        training loss does not decrease.""")
    parser.add_argument("--teacher_temp", default=0.04, type=float, help="""Final value (after linear warmup)
        of the teacher temperature (DINO baseline). For most experiments, anything above 0.07 is unstable.
        We recommend starting with the default value of 0.04 and increase this slightly if needed.""")
    parser.add_argument("--warmup_teacher_temp_epochs", default=0, type=int,
                        help="Number of warmup epochs for the teacher temperature (Default: 0).")

    # Training/Optimization parameters
    parser.add_argument("--compile", default=True, type=bool_flag, help="""Whether to torch.compile the student
        and teacher networks. Honoured on CUDA only; on CPU it is skipped (logged once).""")
    parser.add_argument("--use_fp16", type=bool_flag, default=True, help="""Whether or not to use half precision
        for training (autocast). On CUDA: float16 with a gradient scaler unless --amp_dtype bfloat16; on
        CPU: bfloat16. Improves training time and memory requirements, but can provoke instability and
        slight decay of performance. We recommend disabling mixed precision if the loss is unstable, if
        reducing the patch size or if training with bigger ViTs.""")
    parser.add_argument("--amp_dtype", default="auto", type=str, choices=["auto", "float16", "bfloat16"],
                        help="""Autocast dtype when --use_fp16 is true: auto = float16 (+ grad scaler) on CUDA,
        bfloat16 on CPU. float16 requested on CPU runs as bfloat16.""")
    parser.add_argument("--device", default="auto", type=str, choices=["auto", "cpu", "cuda"],
                        help="Where to train: auto = CUDA when available, else CPU.")
    parser.add_argument("--weight_decay", type=float, default=0.04, help="""Initial value of the
        weight decay. With ViT, a smaller value at the beginning of training works well.""")
    parser.add_argument("--weight_decay_end", type=float, default=0.4, help="""Final value of the
        weight decay. We use a cosine schedule for WD and using a larger decay by the end of training
        improves performance for ViTs.""")
    parser.add_argument("--clip_grad", type=float, default=3.0, help="""Maximal parameter
        gradient norm if using gradient clipping. Clipping with norm .3 ~ 1.0 can
        help optimization for larger ViT architectures. 0 for disabling.""")
    parser.add_argument("--batch_size_per_gpu", default=64, type=int,
                        help="Per-process batch-size: number of distinct images loaded on one GPU (or CPU process).")
    parser.add_argument("--epochs", default=100, type=int, help="Number of epochs of training.")
    parser.add_argument("--time_budget", default=0.0, type=float, help="""Wall-clock budget of the training
        loop in seconds (0: none, train for --epochs). With a budget, training stops cleanly (checkpoint,
        log.txt) at the first iteration that would start after it, and the lr, weight-decay and teacher-momentum
        schedules (and the DINO baseline's per-epoch ones) advance with the elapsed fraction of the budget
        instead of the iteration count, so they end exactly at the budget whatever the machine's speed.
        --epochs is then an upper bound, and --warmup_epochs / --epochs the warmup fraction of the budget.""")
    parser.add_argument("--freeze_last_layer", default=1, type=int, help="""Number of epochs
        during which we keep the output layer fixed (DINO baseline). Typically doing so during
        the first epoch helps training. Try increasing this value if the loss does not decrease.""")
    parser.add_argument("--lr", default=0.0005, type=float, help="""Learning rate at the end of
        linear warmup (highest LR used during training). The learning rate is linearly scaled
        with the batch size, and specified here for a reference batch size of 256.""")
    parser.add_argument("--warmup_epochs", default=10, type=int,
                        help="Number of epochs for the linear learning-rate warm up.")
    parser.add_argument("--min_lr", type=float, default=1e-6, help="""Target LR at the
        end of optimization. We use a cosine LR schedule with linear warmup.""")
    parser.add_argument("--optimizer", default="adamw", type=str, choices=["adamw", "sgd", "lars"],
                        help="""Type of optimizer. We recommend using adamw with ViTs.""")
    parser.add_argument("--drop_path_rate", type=float, default=0.1, help="stochastic depth rate")

    # Multi-crop parameters
    parser.add_argument("--global_crops_scale", type=float, nargs=2, default=(0.4, 1.0),
                        help="""Scale range of the cropped image before resizing, relatively to the origin image.
        Used for large global view cropping. When disabling multi-crop (--local_crops_number 0), we
        recommend using a wider range of scale ("--global_crops_scale 0.14 1." for example)""")
    parser.add_argument("--local_crops_number", type=int, default=8, help="""Number of small
        local views to generate. Set this parameter to 0 to disable multi-crop training.
        When disabling multi-crop we recommend to use "--global_crops_scale 0.14 1." """)
    parser.add_argument("--local_crops_scale", type=float, nargs=2, default=(0.05, 0.4),
                        help="""Scale range of the cropped image before resizing, relatively to the origin image.
        Used for small local view cropping of multi-crop.""")
    parser.add_argument("--global_crops_size", type=int, default=224,
                        help="Side in pixels of the 2 global crops (and of the ViT position embedding).")
    parser.add_argument("--local_crops_size", type=int, default=96,
                        help="Side in pixels of the local crops (small images need small crops).")

    # Misc
    parser.add_argument("--data_path", default=None, type=str,
                        help="Please specify path to the ImageNet training data (an ImageFolder tree: one folder per class).")
    parser.add_argument("--output_dir", default=".", type=str, help="Path to save logs and checkpoints.")
    parser.add_argument("--saveckp_freq", default=10, type=int, help="Save checkpoint{epoch:04}.pth every x epochs (0: never).")
    parser.add_argument("--seed", default=0, type=int, help="Random seed.")
    parser.add_argument("--num_workers", default=10, type=int, help="Number of data loading workers per GPU.")
    parser.add_argument("--dist_url", default="env://", type=str, help="""url used to set up
        distributed training (kept for compatibility: the rendezvous is env://, set by torchrun or SLURM).""")
    parser.add_argument("--local_rank", "--local-rank", default=0, type=int,
                        help="Please ignore and do not set this argument (set by old launchers; torchrun uses LOCAL_RANK).")
    parser.add_argument("--track_wandb", action="store_true",
                        help="Log metrics to Weights & Biases (honours WANDB_MODE=offline; needs `pip install wandb`).")
    parser.add_argument("--track_swan", action="store_true",
                        help="Log metrics to SwanLab (needs `pip install swanlab`).")

    # SimDINO coding-rate loss
    parser.add_argument("--coeff", default=1.0, type=float,
                        help="Weight of the compression (teacher/student alignment) term of the coding-rate loss.")
    parser.add_argument("--eps", default=0.5, type=float, help="""Precision eps of the coding rate
        R = 1/2 logdet(I + p/(m N eps) Z^T Z); must be > 0. A smaller eps expands the features more
        (the released ViT-B/16 run uses 0.05).""")
    parser.add_argument("--reduce_cov", default=0, type=int, choices=[0, 1], help="""1: sum the feature
        covariance over all processes (all_reduce) before the coding rate; useful with small per-GPU batches.""")
    parser.add_argument("--expa_type", default=1, type=int, choices=[0, 1], help="""Features of the
        expansion term: 0 = student global views, 1 = (student + teacher) / 2 per global view (smoother).""")
    return parser


# ----------------------------------------------------------------------------------------------- model
class MultiCropWrapper(nn.Module):
    """Backbone + projection head over a list of crops of possibly different resolutions.

    Consecutive crops of the same size are concatenated into one batch (2 global, then the locals), so
    the backbone runs once per resolution; the head runs once on all CLS embeddings. Output rows are
    view-major: `out.chunk(len(crops))` gives one [B, out] tensor per crop. The state-dict layout is
    `backbone.*` / `head.*`, as in DINO's checkpoints.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Tensor | list[Tensor]) -> Tensor:
        if isinstance(crops, Tensor):
            crops = [crops]
        groups: list[Tensor] = []
        start = 0
        for end in range(1, len(crops) + 1):
            if end == len(crops) or crops[end].shape[-2:] != crops[start].shape[-2:]:
                groups.append(torch.cat(crops[start:end]))
                start = end
        if isinstance(self.backbone, DinoVisionTransformer):
            # A list input runs each size group through the blocks; going through __call__ (not
            # forward_features) keeps nn.Module.compile() effective.
            embeddings = self.backbone(groups)
        else:
            embeddings = [self.backbone(group) for group in groups]
        return self.head(torch.cat(embeddings))


def build_backbone(args: argparse.Namespace, drop_path_rate: float) -> tuple[nn.Module, int]:
    """The DINO v1 ViT (no mask token, position embedding sized for the global crops) or a torchvision
    convnet with its classifier removed. Returns (backbone, embedding dim)."""
    if args.arch in ARCHS:
        depth = {"depth": args.depth} if getattr(args, "depth", 0) else {}  # 0 / absent: the arch's
        model = build_vit(
            args.arch, patch_size=args.patch_size, v1=True,
            img_size=args.global_crops_size, drop_path_rate=drop_path_rate, **depth,
        )  # fmt: skip
        return model, model.embed_dim
    import torchvision.models as tvm

    model = tvm.get_model(args.arch)
    embed_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, embed_dim


def build_head(args: argparse.Namespace, embed_dim: int, student: bool) -> DINOHead:
    if args.use_simdino:
        # SimDINO: L2-normalised z_dim features straight into the coding-rate loss (no prototypes).
        return DINOHead(
            embed_dim, out_dim=args.z_dim, hidden_dim=args.hidden_dim, bottleneck_dim=args.z_dim,
            use_bn=args.use_bn_in_head, normalize=True, remove_last_layer=True,
        )  # fmt: skip
    return DINOHead(
        embed_dim, out_dim=args.out_dim, hidden_dim=args.hidden_dim, bottleneck_dim=args.z_dim,
        use_bn=args.use_bn_in_head, normalize=True, remove_last_layer=False,
        norm_last_layer=args.norm_last_layer if student else True,
    )  # fmt: skip


def build_student_teacher(args: argparse.Namespace) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (with stochastic depth) and teacher (same weights, no drop path, no gradients)."""
    student_backbone, embed_dim = build_backbone(args, args.drop_path_rate)
    teacher_backbone, _ = build_backbone(args, 0.0)
    student = MultiCropWrapper(student_backbone, build_head(args, embed_dim, student=True))
    teacher = MultiCropWrapper(teacher_backbone, build_head(args, embed_dim, student=False))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    return student, teacher


# ------------------------------------------------------------------------------------------------ data
def _seed_numpy_in_worker(worker_id: int) -> None:
    # torch seeds `random` and torch in each worker from the loader's base seed, not numpy.
    np.random.seed(torch.initial_seed() % 2**32)


def build_dataset(data_path: str | None, transform: Any) -> Dataset:
    """ImageFolder tree at `data_path` (upstream), or any dataset string `make_dataset` knows
    (e.g. `FashionMNIST:split=TRAIN`). Raises FileNotFoundError / ValueError with a one-line fix."""
    from simdinov2.data import ImageFolderDataset, make_dataset

    if not data_path:
        raise ValueError("--data_path is missing: give the training images as an ImageFolder tree (one folder per class)")
    path = Path(data_path).expanduser()
    if path.is_dir():
        if not any(path.iterdir()):
            raise ValueError(f"--data_path {data_path} is an empty folder: it must hold one sub-folder of images per class")
        return ImageFolderDataset(str(path), transform=transform)
    if ":" in data_path and not path.exists():
        return make_dataset(data_path, transform=transform)
    if path.exists():
        raise ValueError(f"--data_path {data_path} is a file, not a folder: give the folder of class sub-folders")
    raise FileNotFoundError(f"--data_path {data_path} does not exist: give the folder of training images (ImageFolder tree)")


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the augmentation / drop-path RNG of one (epoch, rank): a resumed run replays it exactly."""
    return seed + 1000 * epoch + rank


# ---------------------------------------------------------------------------------------- experiment logs
def check_tracker_packages(args: argparse.Namespace) -> None:
    for flag, package in (("track_wandb", "wandb"), ("track_swan", "swanlab")):
        if getattr(args, flag) and importlib.util.find_spec(package) is None:
            raise ValueError(f"--{flag} needs the {package} package: pip install {package}")


class ExperimentTrackers:
    """Optional wandb / swanlab logging on the main process. Missing packages fail on every rank with one
    line naming the pip package, before any training starts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.wandb = None
        self.swanlab = None
        check_tracker_packages(args)
        if not distributed.is_main_process():
            return
        name = Path(args.output_dir).resolve().name
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
        if args.track_wandb:
            import wandb

            # One wandb run per output_dir: a resumed (e.g. requeued) job appends to the same run.
            id_file = Path(args.output_dir) / "wandb_run_id.txt"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
            try:
                self.wandb = wandb.init(
                    project="simdino", name=name, id=run_id, resume="allow", dir=args.output_dir, config=config
                )
            except Exception as e:
                raise ValueError(f"--track_wandb: wandb.init failed ({e}); log in, or set WANDB_MODE=offline") from e
        if args.track_swan:
            import swanlab

            try:
                swanlab.init(
                    project="simdino", experiment_name=name, config=config,
                    logdir=str(Path(args.output_dir) / "swanlog"),
                )  # fmt: skip
            except Exception as e:
                raise ValueError(f"--track_swan: swanlab.init failed ({e}); log in, or use offline mode") from e
            self.swanlab = swanlab  # the module logs to its current run

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.swanlab is not None:
            self.swanlab.log(metrics, step=step)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self.swanlab is not None:
            self.swanlab.finish()
            self.swanlab = None


# ------------------------------------------------------------------------------------------ checkpoints
def _load_checkpoint_file(path: Path) -> dict[str, Any]:
    from simdinov2.checkpoint import safe_torch_load  # lazy: the loader pulls in safetensors

    return safe_torch_load(str(path))


def restart_from_checkpoint(
    path: Path,
    args: argparse.Namespace,
    student: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    scaler: torch.amp.GradScaler | None,
    clock: TrainingClock | None = None,
) -> int:
    """Resume every piece of state from `path`; return the epoch to start from (0 without a checkpoint)."""
    if not path.is_file():
        return 0
    ckpt = _load_checkpoint_file(path)
    previous = ckpt.get("args")
    previous = vars(previous) if isinstance(previous, argparse.Namespace) else (previous or {})
    for key in ("arch", "patch_size", "depth", "use_simdino"):
        if key in previous and previous[key] != getattr(args, key):
            raise ValueError(
                f"cannot resume from {path}: it was trained with --{key} {previous[key]} but this run uses "
                f"--{key} {getattr(args, key)}; use the same setting or another --output_dir"
            )
    from simdinov2.checkpoint import strip_wrapper_prefixes

    try:
        student.load_state_dict(strip_wrapper_prefixes(ckpt["student"]))
        teacher.load_state_dict(strip_wrapper_prefixes(ckpt["teacher"]))
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ValueError(
            f"cannot resume from {path}: its weights do not fit this model ({detail}); "
            "use the settings it was trained with or another --output_dir"
        ) from e
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("dino_loss"):
        loss_fn.load_state_dict(ckpt["dino_loss"])
    if scaler is not None and ckpt.get("fp16_scaler") is not None:
        scaler.load_state_dict(ckpt["fp16_scaler"])
    if clock is not None:
        clock.load_state_dict(ckpt)
    start_epoch = int(ckpt.get("epoch", 0))
    logger.info(f"Found checkpoint at {path}: resuming from epoch {start_epoch}")
    return start_epoch


# ----------------------------------------------------------------------------------------------- training
class TrainingClock:
    """Wall time and iterations of a run (resumed parts included) and, with `--time_budget`, where the
    schedules stand.

    Without a budget the schedules are indexed by the global iteration, as upstream. With a budget of `B`
    seconds the index is `floor(elapsed / B * total_iterations)`: the same cosine curves, traversed in
    wall time, so warmup and annealing fit the budget on a fast or a slow (or shared, or suddenly busier)
    machine. `elapsed` is the maximum over processes (one all-reduce per iteration), so every rank sets the
    same learning rate and stops at the same iteration.
    """

    now = staticmethod(time.monotonic)  # the clock (tests replace it)

    def __init__(self, budget: float, total_iterations: int, niter_per_epoch: int) -> None:
        self.budget = float(budget)
        self.total_iterations = int(total_iterations)
        self.niter_per_epoch = int(niter_per_epoch)
        self.spent = 0.0  # seconds of training before this process started (from the checkpoint)
        self.iterations = 0  # optimisation steps of the whole run
        self.stopped = False  # set when the budget ended an epoch early
        self._spent_before = 0.0
        self._started_at: float | None = None

    def start(self) -> None:
        self._spent_before = self.spent
        self._started_at = self.now()

    def elapsed(self) -> float:
        """Training seconds so far on this process (`spent` at resume + time since `start`)."""
        if self._started_at is None:
            return self.spent
        self.spent = self._spent_before + self.now() - self._started_at
        return self.spent

    def synchronized_elapsed(self, device: torch.device) -> float:
        elapsed = self.elapsed()
        if self.budget and distributed.is_enabled():
            t = torch.tensor([elapsed], dtype=torch.float64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            elapsed = float(t.item())
        return elapsed

    def exhausted(self, elapsed: float) -> bool:
        return bool(self.budget) and elapsed >= self.budget

    def schedule_index(self, iteration: int, elapsed: float) -> int:
        """Index into the per-iteration schedules for the step about to run."""
        if not self.budget:
            return iteration
        return min(int(elapsed / self.budget * self.total_iterations), self.total_iterations - 1)

    def schedule_epoch(self, epoch: int, index: int) -> int:
        """Epoch of the per-epoch schedules (DINO's teacher temperature, frozen last layer)."""
        return index // self.niter_per_epoch if self.budget else epoch

    def state_dict(self) -> dict[str, float]:
        """Checkpoint entries: only with a budget (a budget-less checkpoint keeps upstream's exact keys)."""
        return {"train_seconds": self.spent, "iterations": self.iterations} if self.budget else {}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        self.spent = float(checkpoint.get("train_seconds", 0.0))
        # Without a budget every finished epoch was a full one.
        self.iterations = int(checkpoint.get("iterations", int(checkpoint.get("epoch", 0)) * self.niter_per_epoch))


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training stops (on every process) without writing a checkpoint."""


class UserInputError(Exception):
    """A problem with the command line or the data that the user must fix (reported as one line)."""


@contextlib.contextmanager
def user_errors():
    """Turn the ValueError / FileNotFoundError raised while setting up into `UserInputError`; errors of
    the training loop itself keep their traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        raise UserInputError(str(e)) from e


def validate_args(args: argparse.Namespace) -> None:
    """Checks that need no data or model; each failure is one line saying what to change."""
    if not args.eps > 0:
        raise ValueError(f"--eps must be > 0 (got {args.eps}): it divides the coding-rate scale p/(m·N·eps)")
    for name in ("batch_size_per_gpu", "epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    check_tracker_packages(args)
    if not getattr(args, "time_budget", 0.0) >= 0:
        raise ValueError(f"--time_budget must be >= 0 seconds (got {args.time_budget}); 0 means no budget")
    if args.local_crops_number < 0:
        raise ValueError(f"--local_crops_number must be >= 0 (got {args.local_crops_number})")
    if getattr(args, "depth", 0) < 0:
        raise ValueError(f"--depth must be >= 1 blocks, or 0 for the arch's own (got {args.depth})")
    if args.arch in ARCHS and args.global_crops_size % args.patch_size:
        logger.warning("--global_crops_size %d is not a multiple of --patch_size %d: border pixels are dropped",
                       args.global_crops_size, args.patch_size)


def train_dino(args: argparse.Namespace) -> dict[str, float]:
    """Train SimDINO (or the DINO baseline with --use_simdino false) as described by `args`.

    Returns a summary of the whole run (resumed parts included): `epochs`, `iterations`, `images_seen`
    (over all processes) and `train_seconds` (wall time of the training loops)."""
    with user_errors():
        validate_args(args)
        device = distributed.init_distributed(args.device)
    output_dir = Path(args.output_dir)
    if distributed.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir)
    fix_random_seeds(args.seed)
    logger.info(f"git:\n  {get_sha()}\n")
    args_text = "\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items()))
    logger.info(args_text)
    if distributed.is_main_process():
        (output_dir / "args.log").write_text(args_text + "\n")
    with user_errors():
        trackers = ExperimentTrackers(args)
    try:
        return _train(args, device, trackers)
    finally:
        trackers.finish()


def _train(args: argparse.Namespace, device: torch.device, trackers: ExperimentTrackers) -> dict[str, float]:
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    output_dir = Path(args.output_dir)
    backend = dist.get_backend() if distributed.is_enabled() else "none (single process)"
    logger.info(f"world size {world_size}, backend {backend}, device {device}")

    # ============ data ... ============
    transform = DataAugmentationDINO(
        args.global_crops_scale, args.local_crops_scale, args.local_crops_number,
        global_crops_size=args.global_crops_size, local_crops_size=args.local_crops_size, flat=True,
        blur="dino",  # DINO v1's PIL blur with the drawn radius, as upstream v1
    )  # fmt: skip
    with user_errors():
        dataset = build_dataset(args.data_path, transform)
        if len(dataset) == 0:
            raise ValueError(f"--data_path {args.data_path} holds no images (jpg, png, ...)")
    # Shuffled per epoch with seed + epoch (set_epoch), in one process as well: a resumed run sees the
    # same order as an uninterrupted one.
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed)
    data_loader = DataLoader(
        dataset,
        sampler=sampler,
        batch_size=args.batch_size_per_gpu,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        worker_init_fn=_seed_numpy_in_worker,
        persistent_workers=False,
    )
    if len(data_loader) == 0:
        raise UserInputError(
            f"{len(dataset)} images are fewer than one step needs ({args.batch_size_per_gpu} per process x "
            f"{world_size} processes): lower --batch_size_per_gpu or add images"
        )
    logger.info(f"Data loaded: there are {len(dataset)} images ({len(data_loader)} iterations per epoch).")

    # ============ building student and teacher networks ... ============
    student, teacher = build_student_teacher(args)
    student.to(device)
    teacher.to(device)
    if args.use_bn_in_head and world_size > 1:
        if device.type == "cuda":
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        else:
            logger.warning("--use_bn_in_head with several CPU processes: BatchNorm statistics stay per process")
    student_without_ddp, teacher_without_ddp = student, teacher
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
        teacher_without_ddp.load_state_dict(student_without_ddp.state_dict())
    n_params = sum(p.numel() for p in student_without_ddp.parameters())
    blocks = f" with {args.depth} blocks" if getattr(args, "depth", 0) else ""
    logger.info(f"Student and Teacher are built: they are both {args.arch} network{blocks} ({n_params / 1e6:.2f}M parameters).")

    # ============ preparing loss ... ============
    if args.use_simdino:
        loss_fn: nn.Module = MCRLoss(eps=args.eps, coeff=args.coeff, expa_type=args.expa_type, reduce_cov=args.reduce_cov)
    else:
        loss_fn = DINOLoss(args.out_dim, student_temp=0.1, center_momentum=0.9)
    loss_fn.to(device)

    # ============ preparing optimizer ... ============
    optimizer = build_optimizer(args.optimizer, param_groups(student_without_ddp))
    amp = resolve_amp(device, args.use_fp16, args.amp_dtype)
    scaler = amp.grad_scaler()

    # ============ init schedulers ... ============
    niter_per_ep = len(data_loader)
    lr_schedule = cosine_scheduler_epochs(
        args.lr * (args.batch_size_per_gpu * world_size) / 256.0,  # linear scaling rule
        args.min_lr, args.epochs, niter_per_ep, warmup_epochs=args.warmup_epochs,
    )  # fmt: skip
    wd_schedule = cosine_scheduler_epochs(args.weight_decay, args.weight_decay_end, args.epochs, niter_per_ep)
    # momentum parameter is increased to 1. during training with a cosine schedule
    momentum_schedule = cosine_scheduler_epochs(args.momentum_teacher, 1.0, args.epochs, niter_per_ep)
    warmup_temp_epochs = min(args.warmup_teacher_temp_epochs, args.epochs)
    teacher_temp_schedule = np.concatenate((
        np.linspace(args.warmup_teacher_temp, args.teacher_temp, warmup_temp_epochs),
        np.ones(args.epochs - warmup_temp_epochs) * args.teacher_temp,
    ))  # fmt: skip
    logger.info("Loss, optimizer and schedulers ready.")

    # ============ optionally resume training ... ============
    checkpoint_path = output_dir / "checkpoint.pth"
    clock = TrainingClock(args.time_budget, total_iterations=args.epochs * niter_per_ep, niter_per_epoch=niter_per_ep)
    with user_errors():
        start_epoch = restart_from_checkpoint(
            checkpoint_path, args, student_without_ddp, teacher_without_ddp, optimizer, loss_fn, scaler, clock
        )

    start_time = time.time()
    logger.info("Starting SimDINO training !" if args.use_simdino else "Starting DINO training !")
    if clock.budget:
        logger.info(f"Time budget: {clock.budget:.0f} s of training ({clock.spent:.0f} s already spent); "
                    f"schedules follow the elapsed fraction of it")
    clock.start()
    epochs_done = start_epoch
    for epoch in range(start_epoch, args.epochs):
        if clock.exhausted(clock.synchronized_elapsed(device)):
            break
        sampler.set_epoch(epoch)
        fix_random_seeds(epoch_seed(args.seed, epoch, rank))
        # ============ training one epoch of DINO ... ============
        try:
            train_stats = train_one_epoch(
                student, teacher_without_ddp, student_without_ddp, loss_fn, data_loader, optimizer,
                lr_schedule, wd_schedule, momentum_schedule, teacher_temp_schedule, epoch, amp, scaler,
                args, device, trackers, checkpoint_path, clock,
            )  # fmt: skip
        except UnreadableImageError as e:
            # Fatal by design (the data module does not skip files silently); a loader worker wraps the
            # message in its traceback, whose last line is the original one.
            last_line = str(e).strip().splitlines()[-1]
            raise UserInputError(last_line.split("UnreadableImageError: ", 1)[-1]) from e
        # ============ writing logs ... ============
        save_dict = {
            "student": student_without_ddp.state_dict(),
            "teacher": teacher_without_ddp.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "args": args,
            "dino_loss": loss_fn.state_dict(),
            **clock.state_dict(),
        }
        if scaler is not None:
            save_dict["fp16_scaler"] = scaler.state_dict()
        log_stats = {**{f"train_{k}": v for k, v in train_stats.items()}, "epoch": epoch}
        if distributed.is_main_process():
            atomic_torch_save(save_dict, checkpoint_path)
            if args.saveckp_freq and epoch % args.saveckp_freq == 0:
                atomic_torch_save(save_dict, output_dir / f"checkpoint{epoch:04}.pth")
            with (output_dir / "log.txt").open("a") as f:
                f.write(json.dumps(log_stats) + "\n")
            trackers.log({f"epoch/{k}": v for k, v in log_stats.items()}, step=(epoch + 1) * niter_per_ep)
        distributed.barrier()
        epochs_done = epoch + 1
        if clock.stopped:
            logger.info(f"Time budget of {clock.budget:.0f} s reached in epoch {epoch}: training stops here")
            break
    total_time = time.time() - start_time
    logger.info(f"Training time {datetime.timedelta(seconds=int(total_time))}")
    if clock.budget and not clock.stopped and clock.spent < clock.budget:
        logger.warning(f"--epochs {args.epochs} ended after {clock.spent:.0f} s, before the {clock.budget:.0f} s "
                       "budget: the schedules did not reach their end; raise --epochs")
    return {
        "epochs": float(epochs_done),
        "iterations": float(clock.iterations),
        "images_seen": float(clock.iterations * args.batch_size_per_gpu * world_size),
        "train_seconds": float(clock.spent),
    }


def _loss_parts_text(loss: Tensor, parts: dict[str, Tensor]) -> str:
    items = [f"loss={loss.item():.6g}"] + [f"{k}={v.item():.6g}" for k, v in parts.items()]
    return ", ".join(items)


def train_one_epoch(
    student: nn.Module,
    teacher: nn.Module,
    student_without_ddp: nn.Module,
    loss_fn: nn.Module,
    data_loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    lr_schedule: np.ndarray,
    wd_schedule: np.ndarray,
    momentum_schedule: np.ndarray,
    teacher_temp_schedule: np.ndarray,
    epoch: int,
    amp: Any,
    scaler: torch.amp.GradScaler | None,
    args: argparse.Namespace,
    device: torch.device,
    trackers: ExperimentTrackers,
    checkpoint_path: Path,
    clock: TrainingClock | None = None,
) -> dict[str, float]:
    """One pass over `data_loader` (or until `clock`'s time budget is spent); returns the epoch averages
    (over all processes) of the metrics."""
    if clock is None:
        clock = TrainingClock(0.0, len(lr_schedule), len(data_loader))
    # Per-iteration metrics (every 10 iterations) for loss curves: `python -m simdinov2.tools.plot_log OUTPUT_DIR`.
    metric_logger = MetricLogger(delimiter="  ", output_file=checkpoint_path.parent / "training_metrics.json")
    header = f"Epoch: [{epoch}/{args.epochs}]"
    n_iter = len(data_loader)
    student.train()
    teacher.train()
    for step, (images, _) in enumerate(metric_logger.log_every(data_loader, 10, header, json_iteration_offset=len(data_loader) * epoch)):
        elapsed = clock.synchronized_elapsed(device)
        if clock.exhausted(elapsed):
            clock.stopped = True
            break
        global_it = n_iter * epoch + step  # global training iteration
        # the position in the schedules: the iteration, or the elapsed fraction of the time budget
        it = clock.schedule_index(global_it, elapsed)
        schedule_epoch = clock.schedule_epoch(epoch, it)
        if clock.budget and step % 10 == 0:
            logger.info(f"time budget: {elapsed:.0f} of {clock.budget:.0f} s used ({100 * elapsed / clock.budget:.0f}%), "
                        f"{clock.iterations * args.batch_size_per_gpu * distributed.get_world_size()} images seen, "
                        f"{datetime.timedelta(seconds=int(clock.budget - elapsed))} left")
        for i, param_group in enumerate(optimizer.param_groups):
            param_group["lr"] = lr_schedule[it]
            if i == 0:  # only the first group is regularized
                param_group["weight_decay"] = wd_schedule[it]

        images = [im.to(device, non_blocking=True) for im in images]
        with amp.autocast():
            # only the 2 global views pass through the teacher
            with torch.no_grad():
                teacher_output = teacher(images[:2])
            student_output = student(images)
        if args.use_simdino:
            try:
                loss, parts = loss_fn(list(student_output.chunk(len(images))), list(teacher_output.chunk(2)))
            except FloatingPointError:
                # The coding rate cannot be evaluated on non-finite features: report it like a NaN loss
                # (below, on every process together) instead of a traceback on one of them.
                loss, parts = torch.tensor(float("nan"), device=device), {}
        else:
            loss = loss_fn.forward_v1(student_output, teacher_output, float(teacher_temp_schedule[schedule_epoch]))
            parts = {}

        # Every process stops together, otherwise the others would wait forever in the next all-reduce.
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if distributed.is_enabled():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            where = "" if math.isfinite(loss.item()) else " on this process"
            last = (
                f"last good checkpoint {checkpoint_path} left intact"
                if checkpoint_path.is_file() else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"non-finite loss{where} at iteration {global_it} (epoch {epoch}, step {step}/{n_iter}): "
                f"{_loss_parts_text(loss, parts)}; stopping training, {last}"
            )

        # student update
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            if args.clip_grad:
                clip_gradients(student, args.clip_grad)
            cancel_gradients_last_layer(schedule_epoch, student, args.freeze_last_layer)
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            if args.clip_grad:
                scaler.unscale_(optimizer)  # unscale the gradients of the optimizer's assigned params in-place
                clip_gradients(student, args.clip_grad)
            cancel_gradients_last_layer(schedule_epoch, student, args.freeze_last_layer)
            scaler.step(optimizer)
            scaler.update()

        # EMA update for the teacher
        ema_update(teacher.parameters(), student_without_ddp.parameters(), float(momentum_schedule[it]))
        clock.iterations += 1

        # logging
        metrics = {"loss": loss.item()}
        if args.use_simdino:
            metrics["expa_loss"] = parts["expa_loss"].item()
            metrics["comp_loss"] = parts["comp_loss"].item()
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["wd"] = optimizer.param_groups[0]["weight_decay"]
        metric_logger.update(**metrics)
        if step % 10 == 0:
            trackers.log(metrics, step=global_it)
    # gather the stats from all processes
    metric_logger.synchronize_between_processes()
    logger.info(f"Averaged stats: {metric_logger}")
    return {k: meter.global_avg for k, meter in metric_logger.meters.items()}


def main(args: argparse.Namespace | None = None) -> None:
    """CLI entry point (also called in-process by the submitit launcher): user errors end the program
    with one line and exit code 1; a non-finite loss too, leaving the last good checkpoint in place."""
    if args is None:
        args = get_args_parser().parse_args()
    try:
        train_dino(args)
    except (UserInputError, NonFiniteLossError) as e:
        raise SystemExit(f"main_dino.py: error: {e}") from None
    finally:
        distributed.destroy()


if __name__ == "__main__":
    main()
