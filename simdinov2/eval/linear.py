"""Linear probing of frozen features: the one linear-probe core of both trees, and the v2 CLI.

Core (used by `simdino/eval_linear.py` and by this module's CLI):
- `ModelWithIntermediateLayers`: frozen backbone returning `(patch_tokens, cls)` of its last n blocks
  (final norm applied, as DINO and DINOv2 probe them), without gradients.
- `create_linear_input`: concatenated CLS tokens of the last `use_n_blocks` blocks, plus the mean patch
  token of the last block with `use_avgpool` (DINO's `--n_last_blocks` / `--avgpool_patchtokens`).
- `LinearClassifier`, `AllClassifiers`, `setup_linear_classifiers`: one linear layer per grid point
  (learning rate × blocks × avgpool); the backbone runs once per batch and every classifier reads the
  same features.
- `train_step`, `evaluate_classifiers`: one SGD step on the summed cross-entropies; exact top-1/top-5
  over a sharded, unpadded evaluation set (counts summed over processes).

CLI (v2, DINOv2 flags): `python simdinov2/eval/linear.py --config-file D/config.yaml
--pretrained-weights W --output-dir L --train-dataset S --val-dataset S [--epochs 10] [--batch-size 128]
[--epoch-length N] [--learning-rates ...] [--save-checkpoint-frequency E] [--eval-period-iterations N]
[--full-grid]`. Defaults are upstream SimDINOv2's script, whose reported linear numbers come from it: 8
learning rates × last {1, 2} blocks × avgpool only, 1250 iterations per epoch and between evaluations
(`--epoch-length 0`: one pass over the training set). `--full-grid` trains DINOv2's richer grid instead
(13 learning rates × last {1, 4} blocks × avgpool {no, yes}). The grid trains for `epochs × epoch_length`
iterations
(SGD momentum 0.9, cosine to 0, lr scaled by global batch / 256), resumes from
`L/linear_checkpoint.pth`, and appends one JSON line per evaluation to `L/results_eval_linear.json`
(best classifier on the validation set and the accuracy of every classifier).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from simdinov2 import distributed
from simdinov2.checkpoint import atomic_torch_save, safe_torch_load
from simdinov2.cli import make_output_dir
from simdinov2.data import (
    make_classification_eval_transform,
    make_classification_train_transform,
    make_data_loader,
    make_dataset,
)
from simdinov2.errors import NonFiniteLossError, UserError
from simdinov2.eval import setup as eval_setup
from simdinov2.eval.features import dataset_labels, make_eval_loader
from simdinov2.logging import LengthEstimate, MetricLogger
from simdinov2.precision import autocast
from simdinov2.utils.utils import fix_random_seeds

logger = logging.getLogger("simdinov2")

# Grids (learning rates before scaling by global batch / 256, last-block counts, avgpool choices).
# Upstream SimDINOv2's linear probe (the default):
DEFAULT_LEARNING_RATES = [2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2]
DEFAULT_N_LAST_BLOCKS = [1, 2]
DEFAULT_AVGPOOL = [True]
# DINOv2's richer grid (`--full-grid`):
FULL_GRID_LEARNING_RATES = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1]
FULL_GRID_N_LAST_BLOCKS = [1, 4]
FULL_GRID_AVGPOOL = [False, True]
# Upstream's fixed epoch length and evaluation period (iterations).
DEFAULT_EPOCH_LENGTH = 1250

TokensList = Sequence[tuple[Tensor, Tensor]]


class ModelWithIntermediateLayers(nn.Module):
    """Frozen backbone → `((patch_tokens [B,N,D], cls [B,D]), ...)` for its last `n_last_blocks` blocks.

    A backbone without `get_intermediate_layers` (torchvision CNNs of the v1 tree) gives one pair whose
    "CLS" is its pooled output and whose single patch token is that same vector."""

    def __init__(self, feature_model: nn.Module, n_last_blocks: int, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.feature_model = feature_model
        self.feature_model.eval()
        self.feature_model.requires_grad_(False)
        self.n_last_blocks = int(n_last_blocks)
        self.autocast_dtype = autocast_dtype

    def train(self, mode: bool = True) -> ModelWithIntermediateLayers:  # the backbone stays in eval mode
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[tuple[Tensor, Tensor], ...]:
        with autocast(images.device, self.autocast_dtype, cuda_only=True):
            if hasattr(self.feature_model, "get_intermediate_layers"):
                outputs = self.feature_model.get_intermediate_layers(
                    images, self.n_last_blocks, return_class_token=True
                )
            else:
                pooled = self.feature_model(images)
                outputs = ((pooled[:, None, :], pooled),)
        return tuple((patch.float(), cls.float()) for patch, cls in outputs)


def create_linear_input(
    x_tokens_list: TokensList, use_n_blocks: int, use_avgpool: bool, dino_v1_order: bool = False
) -> Tensor:
    """[CLS of each of the last `use_n_blocks` blocks] ⊕ [mean patch token of the last block].

    `dino_v1_order` (v1 `eval_linear.py`): DINO v1 interleaves the CLS and mean-patch features channel by
    channel ([c0, m0, c1, m1, ...]) when it avgpools one block, so a classifier trained by upstream v1 reads
    its inputs in that order; with several blocks (which upstream v1 cannot avgpool) the order is ours."""
    if use_n_blocks > len(x_tokens_list):
        raise ValueError(f"use_n_blocks={use_n_blocks} but only {len(x_tokens_list)} blocks were extracted")
    intermediate = x_tokens_list[-use_n_blocks:]
    output = torch.cat([cls for _, cls in intermediate], dim=-1)
    if use_avgpool:
        mean_patch = intermediate[-1][0].mean(dim=1)
        if dino_v1_order and use_n_blocks == 1:
            output = torch.stack((output, mean_patch), dim=-1).flatten(1)
        else:
            output = torch.cat((output, mean_patch), dim=-1)
    return output.float()


class LinearClassifier(nn.Module):
    """One linear layer on `create_linear_input(...)`; N(0, 0.01) weights and zero bias (DINO)."""

    def __init__(
        self,
        out_dim: int,
        use_n_blocks: int = 1,
        use_avgpool: bool = False,
        num_classes: int = 1000,
        dino_v1_order: bool = False,
    ):
        super().__init__()
        self.out_dim = int(out_dim)
        self.use_n_blocks = int(use_n_blocks)
        self.use_avgpool = bool(use_avgpool)
        self.dino_v1_order = bool(dino_v1_order)
        self.num_classes = int(num_classes)
        self.linear = nn.Linear(self.out_dim, self.num_classes)
        self.linear.weight.data.normal_(mean=0.0, std=0.01)
        self.linear.bias.data.zero_()

    def forward(self, x_tokens_list: TokensList) -> Tensor:
        return self.linear(
            create_linear_input(x_tokens_list, self.use_n_blocks, self.use_avgpool, self.dino_v1_order)
        )


class AllClassifiers(nn.Module):
    """A named grid of `LinearClassifier`s evaluated on the same backbone outputs."""

    def __init__(self, classifiers: dict[str, LinearClassifier]) -> None:
        super().__init__()
        self.classifiers_dict = nn.ModuleDict(classifiers)

    def forward(self, x_tokens_list: TokensList) -> dict[str, Tensor]:
        return {name: classifier(x_tokens_list) for name, classifier in self.classifiers_dict.items()}

    def __len__(self) -> int:
        return len(self.classifiers_dict)


def scale_lr(base_lr: float, batch_size_per_process: int) -> float:
    """DINO's linear scaling rule: lr × global batch / 256."""
    return base_lr * batch_size_per_process * distributed.get_world_size() / 256.0


def stretch_cosine_schedule(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, total_steps: int) -> None:
    """After resuming a run whose length changed (more epochs): continue on the cosine of the new length,
    setting each group's lr to that curve's value at the resumed step. Without this the restored
    schedule keeps the old `T_max` and, past it, `CosineAnnealingLR` climbs back up from 0."""
    if scheduler.T_max == total_steps:
        return
    logger.info("schedule length changed from %d to %d steps: the cosine learning rate follows the new length",
                scheduler.T_max, total_steps)
    scheduler.T_max = total_steps
    progress = min(scheduler.last_epoch / total_steps, 1.0)
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base_lr - scheduler.eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def classifier_name(use_n_blocks: int, use_avgpool: bool, lr: float) -> str:
    return f"classifier_{use_n_blocks}_blocks_avgpool_{use_avgpool}_lr_{lr:.5f}".replace(".", "_")


def setup_linear_classifiers(
    sample_output: TokensList,
    n_last_blocks_list: Sequence[int],
    avgpool_list: Sequence[bool],
    learning_rates: Sequence[float],
    batch_size: int,
    num_classes: int,
) -> tuple[AllClassifiers, list[dict[str, Any]]]:
    """The grid and one optimizer parameter group per classifier with its scaled lr (`lr` of the group;
    `base_lr` keeps the unscaled grid value)."""
    classifiers: dict[str, LinearClassifier] = {}
    groups: list[dict[str, Any]] = []
    for n_blocks in n_last_blocks_list:
        for avgpool in avgpool_list:
            out_dim = create_linear_input(sample_output, n_blocks, avgpool).shape[-1]
            for lr in learning_rates:
                name = classifier_name(n_blocks, avgpool, lr)
                classifier = LinearClassifier(out_dim, n_blocks, avgpool, num_classes)
                classifiers[name] = classifier
                groups.append({"params": classifier.parameters(), "lr": scale_lr(lr, batch_size), "base_lr": lr,
                               "name": name})
    return AllClassifiers(classifiers), groups


def train_step(
    feature_model: nn.Module, classifiers: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor
) -> Tensor:
    """Backbone once, every classifier on its output, one step on the sum of their cross-entropies
    (the classifiers share no parameters, so each gets exactly its own loss's gradient)."""
    features = feature_model(images)
    outputs = classifiers(features)
    if isinstance(outputs, Tensor):
        outputs = {"classifier": outputs}
    loss = sum(F.cross_entropy(logits, labels) for logits in outputs.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[union-attr]
    optimizer.step()
    return loss.detach()  # type: ignore[union-attr]


@torch.no_grad()
def evaluate_classifiers(
    feature_model: nn.Module,
    classifiers: nn.Module,
    loader: DataLoader,
    device: torch.device,
    print_freq: int = 20,
) -> dict[str, dict[str, float]]:
    """Top-1 / top-5 accuracy (percent) and mean loss of each classifier on `loader`'s dataset.

    `loader` should shard the data without padding (`make_eval_loader(..., pad=False)`): each image is
    counted once; counts are summed over processes at the end only, so ranks may see unequal shards."""
    if isinstance(classifiers, nn.parallel.DistributedDataParallel):
        classifiers = classifiers.module
    classifiers.eval()
    totals: dict[str, Tensor] = {}
    seen = torch.zeros((), dtype=torch.float64, device=device)
    metric_logger = MetricLogger(delimiter="  ")
    for batch in metric_logger.log_every(loader, print_freq, header="Test:"):
        images, meta = batch[0], batch[1]
        labels = torch.as_tensor(meta[1] if isinstance(meta, (list, tuple)) else meta)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        outputs = classifiers(feature_model(images))
        if isinstance(outputs, Tensor):
            outputs = {"classifier": outputs}
        seen += labels.shape[0]
        for name, logits in outputs.items():
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top.eq(labels[:, None])
            row = torch.stack([
                hits[:, :1].any(dim=1).sum().double(),
                hits.any(dim=1).sum().double(),
                F.cross_entropy(logits.float(), labels, reduction="sum").double(),
            ])  # fmt: skip
            totals[name] = totals[name] + row if name in totals else row
    names = sorted(totals) if totals else _classifier_names(classifiers)
    stacked = torch.stack([totals.get(n, torch.zeros(3, dtype=torch.float64, device=device)) for n in names])
    stacked = torch.cat([stacked.flatten(), seen[None]])
    if distributed.get_world_size() > 1:
        stacked = stacked.to(distributed.get_device())
        dist.all_reduce(stacked)
    count = max(float(stacked[-1]), 1.0)
    table = stacked[:-1].view(len(names), 3).cpu()
    return {
        name: {"top1": 100.0 * float(row[0]) / count, "top5": 100.0 * float(row[1]) / count, "loss": float(row[2]) / count}
        for name, row in zip(names, table)
    }


def _classifier_names(classifiers: nn.Module) -> list[str]:
    if isinstance(classifiers, AllClassifiers):
        return sorted(classifiers.classifiers_dict)
    return ["classifier"]


# ---------------------------------------------------------------------------------------------- v2 CLI
def get_args_parser(
    add_help: bool = True, parents: Sequence[argparse.ArgumentParser] | None = None, description: str | None = None
) -> argparse.ArgumentParser:
    """DINOv2's linear-probe flags on top of the shared set-up flags."""
    description = description or "Linear probing of a SimDINOv2 teacher (grid over lr × blocks × avgpool)"
    parser = eval_setup.get_eval_args_parser(
        description, add_help, parents, val_role="validation (selects the best classifier)"
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=128, help="images per process per iteration")
    parser.add_argument("--epoch-length", type=int, default=DEFAULT_EPOCH_LENGTH,
                        help="iterations per epoch (upstream's 1250; <= 0: one pass over the training set, "
                             "len(dataset) // global batch)")
    parser.add_argument("--save-checkpoint-frequency", type=int, default=20,
                        help="save the resumable checkpoint every this many epochs (and at the end)")
    parser.add_argument("--eval-period-iterations", type=int, default=DEFAULT_EPOCH_LENGTH,
                        help="evaluate every this many iterations (upstream's 1250; <= 0: once per epoch)")
    parser.add_argument("--learning-rates", nargs="+", type=float, default=None,
                        help="grid of base learning rates, each scaled by global batch / 256 (default: upstream "
                             f"SimDINOv2's {DEFAULT_LEARNING_RATES}; DINOv2's with --full-grid)")
    parser.add_argument("--n-last-blocks", nargs="+", type=int, default=None,
                        help="grid of how many last blocks' CLS tokens are concatenated (default: "
                             f"{DEFAULT_N_LAST_BLOCKS}; {FULL_GRID_N_LAST_BLOCKS} with --full-grid)")
    parser.add_argument("--full-grid", action="store_true",
                        help="DINOv2's richer grid: 13 learning rates x last {1, 4} blocks x avgpool {no, yes}")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing linear_checkpoint.pth")
    parser.add_argument("--image-size", type=int, default=None,
                        help="crop size (default: crops.global_crops_size of the config)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the classifier init and data order")
    return parser


def _checkpoint_path(output_dir: str) -> str:
    return os.path.join(output_dir, "linear_checkpoint.pth")


def _append_results(output_dir: str, record: dict[str, Any]) -> None:
    if distributed.is_main_process():
        with open(os.path.join(output_dir, "results_eval_linear.json"), "a") as f:
            f.write(json.dumps(record) + "\n")


def _summarise(iteration: int, results: dict[str, dict[str, float]], classifiers: AllClassifiers) -> dict[str, Any]:
    best_name = max(results, key=lambda n: results[n]["top1"])
    best = classifiers.classifiers_dict[best_name]
    return {
        "iteration": iteration,
        "best_classifier": {"name": best_name, "n_last_blocks": best.use_n_blocks, "avgpool": best.use_avgpool,
                            **results[best_name]},
        "classifiers": {name: r["top1"] for name, r in results.items()},
    }


def check_global_batch(n_images: int, batch_size: int, processes: int) -> None:
    """The probe trains on whole global batches (drop_last): refuse a training set smaller than one, with
    the arithmetic and the fix."""
    global_batch = batch_size * processes
    if n_images < global_batch:
        fitting = n_images // processes
        fix = f"pass --batch-size {fitting} or less" if fitting >= 1 else "use fewer processes"
        if fitting >= 1 and processes > 1:
            fix += " (or use fewer processes)"
        raise UserError(
            f"--batch-size {batch_size} per process x {processes} process{'es' if processes != 1 else ''} = global batch {global_batch} > "
            f"{n_images} training images: {fix}"
        )


def run_linear_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate the grid; returns the final summary record."""
    for flag in ("epochs", "batch_size", "save_checkpoint_frequency"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1 (got {getattr(args, flag)})")
    full = bool(getattr(args, "full_grid", False))
    if args.learning_rates is None:
        args.learning_rates = list(FULL_GRID_LEARNING_RATES if full else DEFAULT_LEARNING_RATES)
    if args.n_last_blocks is None:
        args.n_last_blocks = list(FULL_GRID_N_LAST_BLOCKS if full else DEFAULT_N_LAST_BLOCKS)
    avgpool_list = FULL_GRID_AVGPOOL if full else DEFAULT_AVGPOOL
    if not args.learning_rates or min(args.learning_rates) <= 0:
        raise UserError("--learning-rates must be positive numbers")
    fix_random_seeds(args.seed)
    model, autocast_dtype, config = eval_setup.setup_and_build_model(args)
    device = distributed.get_device()
    image_size = eval_setup.eval_image_size(args.image_size, config)
    train_dataset = make_dataset(args.train_dataset_str, transform=make_classification_train_transform(crop_size=image_size))
    check_global_batch(len(train_dataset), args.batch_size, distributed.get_world_size())
    val_dataset = make_dataset(args.val_dataset_str, transform=make_classification_eval_transform(crop_size=image_size))
    train_labels = dataset_labels(train_dataset)
    if train_labels is None:
        train_labels = [int(train_dataset[i][1]) for i in range(len(train_dataset))]
    val_labels = dataset_labels(val_dataset) or []
    num_classes = int(max(list(train_labels) + list(val_labels))) + 1

    depth = getattr(model, "depth", max(args.n_last_blocks))
    n_last_blocks_list = sorted({n for n in args.n_last_blocks if 1 <= n <= depth})
    if not n_last_blocks_list:
        raise UserError(f"--n-last-blocks must lie in [1, {depth}] (got {args.n_last_blocks})")
    feature_model = ModelWithIntermediateLayers(model, max(n_last_blocks_list), autocast_dtype)
    sample = feature_model(train_dataset[0][0][None].to(device))
    classifiers, groups = setup_linear_classifiers(
        sample, n_last_blocks_list, avgpool_list, args.learning_rates, args.batch_size, num_classes
    )
    classifiers.to(device)
    trained: nn.Module = classifiers
    if distributed.get_world_size() > 1:
        trained = nn.parallel.DistributedDataParallel(classifiers)
    global_batch = args.batch_size * distributed.get_world_size()
    epoch_length = args.epoch_length if args.epoch_length and args.epoch_length > 0 else None
    epoch_length = epoch_length or max(len(train_dataset) // global_batch, 1)
    max_iter = args.epochs * epoch_length
    eval_period = args.eval_period_iterations if args.eval_period_iterations and args.eval_period_iterations > 0 else None
    eval_period = eval_period or epoch_length
    checkpoint_period = args.save_checkpoint_frequency * epoch_length
    optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_iter, eta_min=0.0)
    make_output_dir(args.output_dir)

    start_iteration = 0
    checkpoint_path = _checkpoint_path(args.output_dir)
    if not args.no_resume and os.path.isfile(checkpoint_path):
        state = safe_torch_load(checkpoint_path)
        if not isinstance(state, dict) or not {"classifiers", "optimizer", "scheduler", "iteration"} <= set(state):
            raise UserError(f"{checkpoint_path} is not a linear-probe checkpoint of this program; use --no-resume or "
                            "another --output-dir")
        if set(state["classifiers"]) != set(classifiers.state_dict()):
            raise UserError(f"{checkpoint_path} holds another classifier grid; use --no-resume or another --output-dir")
        classifiers.load_state_dict(state["classifiers"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stretch_cosine_schedule(scheduler, max_iter)
        start_iteration = int(state["iteration"])
        logger.info("resumed the linear probe from %s at iteration %d", checkpoint_path, start_iteration)

    def save(iteration: int) -> None:
        if distributed.is_main_process():
            atomic_torch_save({"classifiers": classifiers.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "iteration": iteration,
                               "num_classes": num_classes}, checkpoint_path)

    val_loader = make_eval_loader(val_dataset, args.batch_size, args.num_workers, pad=False)
    one_pass = max(len(train_dataset) // global_batch, 1)
    estimate = LengthEstimate(
        "linear probe", f"{len(classifiers)} classifiers, {args.epochs} epochs x {epoch_length} iterations = {max_iter} "
        f"iterations of {global_batch} images ({len(train_dataset)} training images: one pass is {one_pass})", max_iter - start_iteration,
        f"shorten with --epoch-length 0 (one pass per epoch) or fewer --epochs (upstream's {DEFAULT_EPOCH_LENGTH} x 10 stay the defaults)",
    )  # fmt: skip
    metric_logger = MetricLogger(delimiter="  ")
    summary: dict[str, Any] | None = None
    iteration = start_iteration
    if start_iteration < max_iter:
        # Endless sharded stream, advanced past the batches a resumed run already trained on.
        batches = make_data_loader(
            train_dataset, args.batch_size, args.num_workers, shuffle=True, seed=args.seed, sampler_type="infinite",
            sampler_advance=start_iteration * args.batch_size, drop_last=True,
        )  # fmt: skip
        trained.train()
        for images, labels in metric_logger.log_every(
            batches, 10, header="Training", n_iterations=max_iter, start_iteration=start_iteration
        ):
            images = images.to(device, non_blocking=True)
            labels = torch.as_tensor(labels).to(device, non_blocking=True)
            loss = train_step(feature_model, trained, optimizer, images, labels)
            scheduler.step()
            iteration += 1
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"non-finite linear-probe loss at iteration {iteration}; lower --learning-rates")
            metric_logger.update(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
            estimate.tick()
            if iteration % checkpoint_period == 0 or iteration == max_iter:
                save(iteration)
            if iteration % eval_period == 0 and iteration != max_iter:
                results = evaluate_classifiers(feature_model, classifiers, val_loader, device)
                _append_results(args.output_dir, _summarise(iteration, results, classifiers))
                trained.train()
    results = evaluate_classifiers(feature_model, classifiers, val_loader, device)
    summary = _summarise(iteration, results, classifiers)
    summary.update({"final": True, "pretrained_weights": str(args.pretrained_weights),
                    "train_dataset": args.train_dataset_str, "val_dataset": args.val_dataset_str,
                    "image_size": image_size})
    _append_results(args.output_dir, summary)
    best = summary["best_classifier"]
    logger.info("best classifier %s: Top1 %.2f Top5 %.2f", best["name"], best["top1"], best["top5"])
    distributed.barrier()
    return summary


def main(args: argparse.Namespace) -> int:
    """Entry point of the launchers: process group and logging, then `run_linear_probe`."""
    start = time.time()
    eval_setup.run_main(run_linear_probe, args)
    logger.info("linear evaluation done in %.0f s", time.time() - start)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return eval_setup.eval_cli(get_args_parser(add_help=True), main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
