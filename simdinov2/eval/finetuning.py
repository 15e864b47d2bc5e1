"""End-to-end fine-tuning of a pretrained backbone with a linear head (the DeiT / BEiT recipe), v2 CLI.

Which upstream programs this covers: upstream ships two. Its `finetuning.py` (the whole backbone and a
linear head on the final-norm CLS token, trained with the recipe below) is this program. Its
`finetune.py` is its linear-probe program (the grid of linear heads on the last blocks) with the
backbone's parameters added to the same SGD optimiser at learning rate 0.005: that is `linear.py`'s
grid, so it lives there as `python simdinov2/eval/linear.py ... --train-backbone-lr 0.005`.

The recipe (upstream's flags and their defaults): AdamW (`--opt`, weight decay 0.05 on matrices only),
learning rate 1.2e-3 (not scaled by the batch) with layer-wise decay 0.9 (block i = 0..L-1 gets
0.9^(L-i) of it, the patch embedding and tokens 0.9^(L+1), the final norm and head all of it; parameter
groups by timm's `param_groups_layer_decay`), linear warm-up (20 epochs) then cosine to 1e-6 per iteration, drop path 0.1
(growing linearly with depth), timm's Mixup/CutMix (alphas 0.8 / 1.0, probability 1.0, switch 0.5,
per batch) with label smoothing 0.1 (`SoftTargetCrossEntropy`; `LabelSmoothingCrossEntropy` without
mixing), timm's training transform (random resized crop, flip, RandAugment `rand-m9-mstd0.5-inc1`,
bicubic, random erasing 0.25 per pixel), and model EMA (timm's `ModelEmaV3`, decay 0.7, upstream's
value; the EMA weights are the ones evaluated; `--no-model-ema` evaluates the trained weights).
Upstream's script then overrides batch size, epochs, learning rate, layer decay and drop path by a
per-size table for its `--net-type`: `--net-type small|base|large` applies that table here (flags given
explicitly still win), without it the flag defaults above apply.

Evaluation (`simdinov2.eval.metrics.evaluate`, the loop the linear probe uses): the validation set after
every epoch and at the end, then every `--test-datasets` set, each with its metric type and class
mapping. The input resolution is the config's training crop (`--image-size` to change it), the
architecture the checkpoint's (any layout the loader reads, v1 or v2).

Files in `--output-dir`: `finetuning_checkpoint.pth` (model, EMA, optimiser, scaler, iteration,
history; written atomically every `--save-checkpoint-frequency` epochs, at `--stop-at-iteration` and at
the end) from which a rerun resumes; `results_eval_finetuning.json` (atomic; the history of validation
results and the final record with `eval_sets`). Resuming continues exactly: the data stream is advanced
past the trained batches with per-position augmentation seeds, and each iteration's mixing and drop
path draw from a seed of (seed, rank, iteration).

CLI: `python simdinov2/eval/finetuning.py --config-file D/config.yaml --pretrained-weights W
--output-dir F --train-dataset S --val-dataset S [--test-datasets S ...] [--epochs N] [--batch-size B]`,
or with torchrun for several processes (DDP; gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from simdinov2 import distributed
from simdinov2.checkpoint import atomic_torch_save, atomic_write_text, safe_torch_load
from simdinov2.cli import make_output_dir
from simdinov2.data import make_classification_eval_transform, make_data_loader, make_dataset
from simdinov2.data.samplers import mix_seed, seeded_rng
from simdinov2.errors import NonFiniteLossError, UserError
from simdinov2.eval import setup as eval_setup
from simdinov2.eval.features import make_eval_loader
from simdinov2.eval.linear import check_global_batch
from simdinov2.eval.metrics import (
    EvalSet,
    add_eval_set_args,
    evaluate,
    load_eval_sets,
    num_dataset_classes,
    set_results,
)
from simdinov2.logging import MetricLogger
from simdinov2.precision import autocast
from simdinov2.utils.schedules import CosineScheduler
from simdinov2.utils.utils import fix_random_seeds

logger = logging.getLogger("simdinov2")

# Upstream's flag defaults for what its per-size table may override, and that table (`--net-type`).
FLAG_DEFAULTS = {
    "batch_size": 128,
    "epochs": 200,
    "learning_rate": 1.2e-3,
    "layer_decay": 0.9,
    "drop_path": 0.1,
    "warmup_epochs": 20,
}
NET_TYPE_RECIPES = {
    "small": {"batch_size": 256, "epochs": 200, "learning_rate": 2e-3, "layer_decay": 0.55, "drop_path": 0.1},
    "base": {"batch_size": 256, "epochs": 100, "learning_rate": 7e-4, "layer_decay": 0.4, "drop_path": 0.2},
    "large": {"batch_size": 256, "epochs": 50, "learning_rate": 1.8e-3, "layer_decay": 0.6, "drop_path": 0.2},
}
# Tokens and embeddings without weight decay (besides every 1-D parameter).
NO_WEIGHT_DECAY = (
    "backbone.pos_embed",
    "backbone.cls_token",
    "backbone.register_tokens",
    "backbone.mask_token",
)
CHECKPOINT_KEYS = {"model", "ema", "optimizer", "scaler", "iteration", "history"}


class FineTunedClassifier(nn.Module):
    """Backbone (its final-norm CLS token) → linear head; `group_matcher` numbers the layers for the
    layer-wise learning-rate decay: tokens and patch embedding first, then the blocks, final norm and head last."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.head = nn.Linear(int(backbone.embed_dim), self.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {
            "stem": r"^backbone\.(?:cls_token|pos_embed|register_tokens|mask_token|patch_embed)",
            # plain blocks `blocks.i.*`, chunked blocks `blocks.c.i.*` (i counts over all blocks)
            # the final norm and the head match nothing: the last layer (scale 1), as upstream
            "blocks": [(r"^backbone\.blocks\.(?:\d+\.)?(\d+)\.", None)],
        }


def get_args_parser(
    add_help: bool = True,
    parents: Sequence[argparse.ArgumentParser] | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Upstream's fine-tuning flags on top of the shared set-up and dataset flags."""
    parser = eval_setup.get_eval_args_parser(
        description or "Fine-tuning of a SimDINO / SimDINOv2 backbone",
        add_help,
        parents,
        val_role="validation",
    )
    _add_optimisation_flags(parser.add_argument)
    _add_augmentation_and_run_flags(parser.add_argument)
    add_eval_set_args(parser)
    return parser


def _add_optimisation_flags(add: Callable[..., Any]) -> None:
    """Recipe, schedule and optimiser flags."""
    add(
        "--net-type",
        choices=sorted(NET_TYPE_RECIPES),
        default=None,
        help="upstream's per-size recipe (batch, epochs, lr, layer decay, drop path; warm-up 10%% of the epochs)",
    )
    add("--epochs", type=int, default=None, help=f"training epochs (default {FLAG_DEFAULTS['epochs']})")
    add(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per process (default {FLAG_DEFAULTS['batch_size']})",
    )
    add(
        "--epoch-length",
        type=int,
        default=0,
        help="iterations per epoch (<= 0: len(train set) // global batch)",
    )
    add(
        "--learning-rate",
        type=float,
        default=None,
        help=f"peak lr, not scaled (default {FLAG_DEFAULTS['learning_rate']})",
    )
    add("--min-lr", type=float, default=1e-6, help="final lr of the cosine")
    add(
        "--warmup-epochs",
        type=int,
        default=None,
        help=f"linear warm-up epochs (default {FLAG_DEFAULTS['warmup_epochs']})",
    )
    add("--warmup-steps", type=int, default=-1, help="warm-up iterations; overrides --warmup-epochs when > 0")
    add(
        "--opt",
        choices=("adamw", "adam", "sgd", "momentum"),
        default="adamw",
        help="optimiser (sgd: Nesterov momentum, momentum: plain momentum)",
    )
    add(
        "--weight-decay",
        type=float,
        default=0.05,
        help="weight decay of matrices (not of biases, norms, tokens)",
    )
    add("--momentum", type=float, default=0.9, help="SGD momentum")
    add(
        "--layer-decay",
        type=float,
        default=None,
        help=f"layer-wise lr decay (default {FLAG_DEFAULTS['layer_decay']})",
    )
    add(
        "--drop-path",
        "--drop_path",
        dest="drop_path",
        type=float,
        default=None,
        help=f"stochastic-depth rate of the last block (default {FLAG_DEFAULTS['drop_path']})",
    )
    add(
        "--clip-grad",
        "--clip_grad",
        dest="clip_grad",
        type=float,
        default=None,
        help="gradient-norm clip (none)",
    )


def _add_augmentation_and_run_flags(add: Callable[..., Any]) -> None:
    """Label smoothing, mixing, the training transform, the EMA and checkpoint / stop flags."""
    add("--smoothing", type=float, default=0.1, help="label smoothing")
    add("--mixup", type=float, default=0.8, help="mixup alpha (on when > 0)")
    add("--cutmix", type=float, default=1.0, help="cutmix alpha (on when > 0)")
    add(
        "--cutmix-minmax",
        type=float,
        nargs=2,
        default=None,
        help="cutmix box ratio range (overrides --cutmix)",
    )
    add("--mixup-prob", type=float, default=1.0, help="probability of mixing a batch")
    add("--mixup-switch-prob", type=float, default=0.5, help="probability of cutmix when both are on")
    add(
        "--mixup-mode",
        choices=("batch", "pair", "elem"),
        default="batch",
        help="how mixing parameters are drawn",
    )
    add(
        "--aa",
        default="rand-m9-mstd0.5-inc1",
        help="RandAugment policy of the training transform ('' for none)",
    )
    add("--color-jitter", type=float, default=0.4, help="colour jitter (used by timm without --aa)")
    add("--train-interpolation", default="bicubic", help="training interpolation (random, bilinear, bicubic)")
    add("--reprob", type=float, default=0.25, help="random-erasing probability")
    add("--remode", default="pixel", help="random-erasing fill")
    add(
        "--model-ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep and evaluate an EMA of the model",
    )
    add("--model-ema-decay", type=float, default=0.7, help="EMA decay per iteration (upstream's 0.7)")
    add(
        "--image-size",
        "--input-size",
        dest="image_size",
        type=int,
        default=None,
        help="input size (default: crops.global_crops_size of the config)",
    )
    add(
        "--save-checkpoint-frequency",
        type=int,
        default=1,
        help="save the resumable checkpoint every this many epochs",
    )
    add(
        "--stop-at-iteration",
        type=int,
        default=None,
        help="save and stop at this iteration (as a preemption would); rerun without it to continue",
    )
    add("--no-resume", action="store_true", help="ignore an existing finetuning_checkpoint.pth")
    add("--seed", type=int, default=0, help="seed of the head init, data order, augmentation and mixing")


def resolve_recipe(args: argparse.Namespace) -> None:
    """Fill what the flags left unset: the `--net-type` table, then upstream's flag defaults; check ranges."""
    recipe = NET_TYPE_RECIPES.get(args.net_type or "", {})
    for key, default in FLAG_DEFAULTS.items():
        if getattr(args, key) is None:
            value = recipe.get(key, default)
            if key == "warmup_epochs" and "epochs" in recipe:
                value = int(args.epochs * 0.1)
            setattr(args, key, value)
    for flag in ("epochs", "batch_size", "save_checkpoint_frequency"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1 (got {getattr(args, flag)})")
    if args.learning_rate <= 0 or not 0 < args.layer_decay <= 1 or not 0 <= args.drop_path < 1:
        raise UserError("--learning-rate must be > 0, --layer-decay in (0, 1], --drop-path in [0, 1)")


def make_mixing(args: argparse.Namespace, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """(timm Mixup or None, criterion): soft targets with mixing, label smoothing without."""
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        if args.batch_size % 2:
            raise UserError(
                f"--batch-size {args.batch_size} is odd: timm's Mixup pairs images, pass an even size "
                "(or --mixup 0 --cutmix 0)"
            )
        mixup = Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob,
            switch_prob=args.mixup_switch_prob,
            mode=args.mixup_mode,
            label_smoothing=args.smoothing,
            num_classes=num_classes,
        )
        return mixup, SoftTargetCrossEntropy()
    if args.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return None, nn.CrossEntropyLoss()


def make_optimizer(args: argparse.Namespace, model: FineTunedClassifier) -> torch.optim.Optimizer:
    """Parameter groups with layer-wise lr scales (`lr_scale`) and weight decay on matrices only."""
    groups = param_groups_layer_decay(
        model,
        weight_decay=args.weight_decay,
        no_weight_decay_list=NO_WEIGHT_DECAY,
        layer_decay=args.layer_decay,
    )
    if args.opt == "adamw":
        return torch.optim.AdamW(groups, lr=args.learning_rate, eps=1e-8)
    if args.opt == "adam":
        return torch.optim.Adam(groups, lr=args.learning_rate, eps=1e-8)
    return torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum, nesterov=args.opt == "sgd")


def _build(args: argparse.Namespace) -> SimpleNamespace:
    """Model (trainable backbone + head), EMA, optimiser, schedule, data and evaluation sets."""
    backbone, autocast_dtype, config = eval_setup.setup_and_build_model(args, drop_path_rate=args.drop_path)
    backbone.requires_grad_(True)
    device = distributed.get_device()
    image_size = eval_setup.eval_image_size(args.image_size, config)
    train_transform = create_transform(
        image_size,
        is_training=True,
        color_jitter=args.color_jitter,
        auto_augment=args.aa or None,
        interpolation=args.train_interpolation,
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=1,
    )
    train_dataset = make_dataset(args.train_dataset_str, transform=train_transform)
    world = distributed.get_world_size()
    check_global_batch(len(train_dataset), args.batch_size, world)
    num_classes = num_dataset_classes(train_dataset)
    eval_sets = load_eval_sets(args, make_classification_eval_transform(crop_size=image_size), num_classes)
    model = FineTunedClassifier(backbone, num_classes).to(device)
    epoch_length = (
        args.epoch_length
        if args.epoch_length > 0
        else max(len(train_dataset) // (args.batch_size * world), 1)
    )
    max_iter = args.epochs * epoch_length
    warmup = args.warmup_steps if args.warmup_steps > 0 else args.warmup_epochs * epoch_length
    mixup, criterion = make_mixing(args, num_classes)
    scaler = torch.amp.GradScaler(
        device.type, enabled=device.type == "cuda" and autocast_dtype == torch.float16
    )
    return SimpleNamespace(
        model=model,
        ema=ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None,
        optimizer=make_optimizer(args, model),
        lr=CosineScheduler(args.learning_rate, args.min_lr, max_iter, warmup),
        mixup=mixup,
        criterion=criterion,
        scaler=scaler,
        device=device,
        autocast_dtype=autocast_dtype,
        train_dataset=train_dataset,
        eval_sets=eval_sets,
        image_size=image_size,
        num_classes=num_classes,
        epoch_length=epoch_length,
        max_iter=max_iter,
        history=[],
    )


def _checkpoint_path(output_dir: str) -> str:
    return os.path.join(output_dir, "finetuning_checkpoint.pth")


def _save(args: argparse.Namespace, run: SimpleNamespace, iteration: int) -> None:
    if distributed.is_main_process():
        atomic_torch_save(
            {
                "model": run.model.state_dict(),
                "ema": run.ema.module.state_dict() if run.ema else None,
                "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict(),
                "iteration": iteration,
                "history": run.history,
                "num_classes": run.num_classes,
            },
            _checkpoint_path(args.output_dir),
        )
    distributed.barrier()


def _restore(args: argparse.Namespace, run: SimpleNamespace) -> int:
    """The iteration the checkpoint in the output folder stopped at (its state loaded); 0 without one."""
    path = _checkpoint_path(args.output_dir)
    if args.no_resume or not os.path.isfile(path):
        return 0
    state = safe_torch_load(path)
    if not isinstance(state, dict) or not set(state) >= CHECKPOINT_KEYS:
        raise UserError(
            f"{path} is not a fine-tuning checkpoint of this program; use --no-resume or another --output-dir"
        )
    if set(state["model"]) != set(run.model.state_dict()) or state.get("num_classes") != run.num_classes:
        raise UserError(f"{path} holds another model or class count; use --no-resume or another --output-dir")
    if (state["ema"] is None) == bool(run.ema):
        raise UserError(
            f"{path} was written {'without' if run.ema else 'with'} --model-ema; keep the flag or --no-resume"
        )
    run.model.load_state_dict(state["model"])
    if run.ema:
        run.ema.module.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.history = list(state["history"])
    logger.info("resumed fine-tuning from %s at iteration %d", path, int(state["iteration"]))
    return int(state["iteration"])


def evaluate_model(
    run: SimpleNamespace, eval_sets: Sequence[EvalSet], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Results of the evaluated model (the EMA with --model-ema) on each set, through the shared loop."""
    model = run.ema.module if run.ema else run.model
    model.eval()

    def predict(images: Tensor) -> Tensor:
        with autocast(images.device, run.autocast_dtype, cuda_only=True):
            return model(images).float()

    results = []
    for eval_set in eval_sets:
        loader = make_eval_loader(eval_set.dataset, args.batch_size, args.num_workers, pad=False)
        num_scored = eval_set.num_scored_classes or run.num_classes
        counts = evaluate(predict, loader, run.device, num_scored, eval_set.class_mapping)["classifier"]
        results.append(counts.result(eval_set.metric_type))
        logger.info(
            "%s (%s): Top1 %.2f Top5 %.2f",
            eval_set.dataset_str,
            eval_set.metric_type,
            results[-1]["top1"],
            results[-1]["top5"],
        )
    run.model.train()
    return results


def _write_results(
    args: argparse.Namespace, run: SimpleNamespace, final: dict[str, Any] | None = None
) -> None:
    if distributed.is_main_process():
        record = {"history": run.history, **({"final": final} if final else {})}
        atomic_write_text(
            os.path.join(args.output_dir, "results_eval_finetuning.json"), json.dumps(record, indent=1)
        )


def _step(
    args: argparse.Namespace,
    run: SimpleNamespace,
    trained: nn.Module,
    images: Tensor,
    labels: Tensor,
    iteration: int,
) -> Tensor:
    """One optimiser step at `iteration` (lr set from the schedule × each group's layer scale); the
    mixing and drop path draw from a seed of (seed, rank, iteration), so a resumed run repeats them."""
    for group in run.optimizer.param_groups:
        group["lr"] = run.lr[iteration] * group.get("lr_scale", 1.0)
    with seeded_rng(mix_seed(args.seed, distributed.get_rank(), iteration)):
        if run.device.type == "cuda":
            torch.cuda.manual_seed(mix_seed(args.seed, distributed.get_rank(), iteration) & 0xFFFFFFFF)
        if run.mixup is not None:
            images, labels = run.mixup(images, labels)
        with autocast(run.device, run.autocast_dtype, cuda_only=True):
            loss = run.criterion(trained(images).float(), labels)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
    if args.clip_grad:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), args.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.ema is not None:
        run.ema.update(run.model, step=iteration)
    return loss.detach()


def _train(args: argparse.Namespace, run: SimpleNamespace, start_iteration: int) -> int:
    """Train from `start_iteration`; validate every epoch, checkpoint every --save-checkpoint-frequency
    epochs; returns the iteration reached (the end, or --stop-at-iteration)."""
    stop = min(args.stop_at_iteration or run.max_iter, run.max_iter)
    if start_iteration >= stop:
        return start_iteration
    trained: nn.Module = run.model
    if distributed.get_world_size() > 1:
        trained = nn.parallel.DistributedDataParallel(run.model, find_unused_parameters=True)
    batches = make_data_loader(
        run.train_dataset,
        args.batch_size,
        args.num_workers,
        shuffle=True,
        seed=args.seed,
        sampler_type="infinite",
        sampler_advance=start_iteration * args.batch_size,
        drop_last=True,
    )
    trained.train()
    metric_logger = MetricLogger(delimiter="  ")
    iteration = start_iteration
    for images, labels in metric_logger.log_every(
        batches, 10, header="Fine-tuning", n_iterations=stop, start_iteration=start_iteration
    ):
        labels = torch.as_tensor(labels).to(run.device, non_blocking=True)
        loss = _step(args, run, trained, images.to(run.device, non_blocking=True), labels, iteration)
        iteration += 1
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite fine-tuning loss at iteration {iteration}; lower --learning-rate"
            )
        metric_logger.update(loss=loss.item(), lr=max(g["lr"] for g in run.optimizer.param_groups))
        epoch, epoch_end = divmod(iteration, run.epoch_length)
        if epoch_end == 0 and iteration != run.max_iter:
            val = evaluate_model(run, run.eval_sets[:1], args)[0]
            run.history.append({"iteration": iteration, "epoch": epoch, "val": val})
            _write_results(args, run)
        if (epoch_end == 0 and epoch % args.save_checkpoint_frequency == 0) or iteration in (
            stop,
            run.max_iter,
        ):
            _save(args, run, iteration)
        if iteration >= stop:
            break
    return iteration


def run_finetuning(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune, then evaluate on the validation and test sets; returns the final record (or the state
    reached, `{"stopped_at": N}`, with --stop-at-iteration)."""
    resolve_recipe(args)
    fix_random_seeds(args.seed)
    run = _build(args)
    make_output_dir(args.output_dir)
    start_iteration = _restore(args, run)
    logger.info(
        "fine-tuning for %d iterations (%d per epoch, global batch %d), from iteration %d",
        run.max_iter,
        run.epoch_length,
        args.batch_size * distributed.get_world_size(),
        start_iteration,
    )
    start = time.time()
    iteration = _train(args, run, start_iteration)
    if iteration < run.max_iter:
        logger.info("stopped at iteration %d (--stop-at-iteration); rerun without it to continue", iteration)
        return {"stopped_at": iteration}
    results = evaluate_model(run, run.eval_sets, args)
    final = {
        "iteration": iteration,
        "top1": results[0]["top1"],
        "top5": results[0]["top5"],
        "eval_sets": set_results(list(zip(run.eval_sets, results, strict=True))),
        "model_ema": bool(args.model_ema),
        "pretrained_weights": str(args.pretrained_weights),
        "train_dataset": args.train_dataset_str,
        "val_dataset": args.val_dataset_str,
        "image_size": run.image_size,
        "net_type": args.net_type,
    }
    logger.info("fine-tuning done in %.0f s", time.time() - start)
    _write_results(args, run, final)
    distributed.barrier()
    return final


def main(args: argparse.Namespace) -> int:
    """Entry point of the launchers: process group and logging, then `run_finetuning`."""
    eval_setup.run_main(run_finetuning, args)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return eval_setup.eval_cli(get_args_parser(add_help=True), main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
