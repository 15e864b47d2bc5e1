"""Linear probing of frozen features: the one linear-probe core of both trees, and the v2 CLI.

Core (used by the v1 tree's linear evaluation and by this module's CLI):
- `ModelWithIntermediateLayers`: frozen backbone returning `(patch_tokens, cls)` of its last n blocks
  (final norm applied, as DINO and DINOv2 probe them), without gradients.
- `create_linear_input`: concatenated CLS tokens of the last `use_n_blocks` blocks, plus the mean patch
  token of the last block with `use_avgpool` (DINO's `--n_last_blocks` / `--avgpool_patchtokens`).
- `LinearClassifier`, `AllClassifiers`, `setup_linear_classifiers`: one linear layer per grid point
  (learning rate × blocks × avgpool); the backbone runs once per batch and every classifier reads the
  same features.
- `AttentiveClassifier` (`--attentive`): upstream's attentive probe, a learned query pooling each block's
  patch tokens (`AttentivePooling`) before the linear layer; same grid, same training.
- `train_step`, `evaluate_classifiers`: one SGD step on the summed cross-entropies; exact top-1/top-5
  over a sharded, unpadded evaluation set, under any metric type and class mapping, through the one
  evaluation loop `simdinov2.eval.metrics.evaluate`.

CLI (v2, DINOv2 flags): `python simdinov2/eval/linear.py --config-file D/config.yaml
--pretrained-weights W --output-dir L --train-dataset S --val-dataset S [--epochs 10] [--batch-size 128]
[--epoch-length N] [--learning-rates ...] [--save-checkpoint-frequency E] [--eval-period-iterations N]
[--full-grid]`. Defaults are upstream SimDINOv2's script, whose reported linear numbers come from it: 8
learning rates × last {1, 2} blocks × avgpool only, 1250 iterations per epoch and between evaluations
(`--epoch-length 0`: one pass over the training set). `--full-grid` trains DINOv2's richer grid instead
(13 learning rates × last {1, 4} blocks × avgpool {no, yes}). The grid trains for `epochs × epoch_length`
iterations (SGD momentum 0.9, cosine to 0, lr scaled by global batch / 256), resumes from
`L/linear_checkpoint.pth`, and appends one JSON line per evaluation to `L/results_eval_linear.json`
(best classifier on the validation set and the accuracy of every classifier). `--test-datasets A B ...`
(`--val-metric-type`, `--test-metric-types`, class-mapping files; `simdinov2.eval.metrics`) adds the best
classifier's results on every set to the final line's `eval_sets`. `--train-backbone-lr 0.005` also trains the
backbone in the same SGD (its lr not scaled), which is what upstream's `finetune.py` does.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
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
from simdinov2.eval.features import make_eval_loader
from simdinov2.eval.metrics import (
    EvalSet,
    MetricType,
    add_eval_set_args,
    evaluate,
    load_eval_sets,
    num_dataset_classes,
    set_results,
)
from simdinov2.logging import LengthEstimate, MetricLogger, append_json_lines, resume_records
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
    "CLS" is its pooled output and whose single patch token is that same vector. With `trainable` the
    backbone keeps its gradients (`linear.py --train-backbone-lr`, upstream's finetune.py); it stays in
    eval mode either way."""

    def __init__(self, feature_model: nn.Module, n_last_blocks: int, autocast_dtype: torch.dtype | None = None,
                 trainable: bool = False):  # fmt: skip
        super().__init__()
        self.feature_model = feature_model
        self.feature_model.eval()
        self.feature_model.requires_grad_(trainable)
        self.trainable = bool(trainable)
        self.n_last_blocks = int(n_last_blocks)
        self.autocast_dtype = autocast_dtype

    def train(self, mode: bool = True) -> ModelWithIntermediateLayers:  # the backbone stays in eval mode
        return self

    def forward(self, images: Tensor) -> tuple[tuple[Tensor, Tensor], ...]:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()), \
                autocast(images.device, self.autocast_dtype, cuda_only=True):  # fmt: skip
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


class AttentivePooling(nn.Module):
    """A learned query attending over one block's patch tokens (upstream's attentive block): multi-head
    attention with bias-free q/k/v projections, queries and keys RMS-normalised per head, no output
    projection. (Upstream also applies a rotary embedding computed for the query's length, 1, i.e. at
    position 0 for every token: the identity, so none is applied here.)"""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise UserError(f"--attentive-num-heads {num_heads} does not divide the feature width {dim}")
        self.num_heads = int(num_heads)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)

    def forward(self, query: Tensor, tokens: Tensor) -> Tensor:
        (batch, _, dim), head_dim = tokens.shape, tokens.shape[-1] // self.num_heads

        def heads(x: Tensor) -> Tensor:  # [B, T, D] -> [B, heads, T, head_dim]
            return x.view(batch, x.shape[1], self.num_heads, head_dim).transpose(1, 2)

        q = F.rms_norm(heads(self.q(query)), (head_dim,))
        k = F.rms_norm(heads(self.k(tokens)), (head_dim,))
        pooled = F.scaled_dot_product_attention(q, k, heads(self.v(tokens)))  # [B, heads, 1, head_dim]
        return pooled.transpose(1, 2).reshape(batch, dim)


class AttentiveClassifier(LinearClassifier):
    """Upstream's attentive probe (`--attentive`): for each of the last `use_n_blocks` blocks, a shared
    learned query (N(0, 1)) pools the patch tokens with that block's `AttentivePooling`; the pooled vectors
    (each preceded by the block's CLS token with `concat_cls`), then the mean patch token of the last block
    with `use_avgpool`, feed one linear layer."""

    def __init__(self, embed_dim: int, use_n_blocks: int = 1, use_avgpool: bool = True, num_classes: int = 1000,
                 num_heads: int = 8, concat_cls: bool = False) -> None:  # fmt: skip
        in_dim = embed_dim * (use_n_blocks * (1 + int(concat_cls)) + int(use_avgpool))
        super().__init__(in_dim, use_n_blocks, use_avgpool, num_classes)
        self.concat_cls = bool(concat_cls)
        self.query_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.poolers = nn.ModuleList(AttentivePooling(embed_dim, num_heads) for _ in range(use_n_blocks))

    def forward(self, x_tokens_list: TokensList) -> Tensor:
        blocks = x_tokens_list[-self.use_n_blocks :]
        query = self.query_token.expand(blocks[0][0].shape[0], -1, -1)
        parts: list[Tensor] = []
        for (patch, cls), pooler in zip(blocks, self.poolers, strict=True):
            parts += [cls, pooler(query, patch)] if self.concat_cls else [pooler(query, patch)]
        if self.use_avgpool:
            parts.append(blocks[-1][0].mean(dim=1))
        return self.linear(torch.cat(parts, dim=-1).float())


def scale_lr(base_lr: float, batch_size_per_process: int) -> float:
    """DINO's linear scaling rule: lr × global batch / 256."""
    return base_lr * batch_size_per_process * distributed.get_world_size() / 256.0


def stretch_cosine_schedule(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, total_steps: int) -> None:
    """After resuming a run whose length changed (more epochs): continue on the cosine of the new length,
    setting each group's lr to that curve's value at the resumed step. Without this the restored
    schedule keeps the old `T_max` and, past it, `CosineAnnealingLR` climbs back up from 0."""
    if scheduler.T_max == total_steps:
        return
    logger.info(
        "schedule length changed from %d to %d steps: the cosine learning rate follows the new length",
        scheduler.T_max,
        total_steps,
    )
    scheduler.T_max = total_steps
    progress = min(scheduler.last_epoch / total_steps, 1.0)
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = scheduler.eta_min + (base_lr - scheduler.eta_min) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )


def classifier_name(use_n_blocks: int, use_avgpool: bool, lr: float) -> str:
    return f"classifier_{use_n_blocks}_blocks_avgpool_{use_avgpool}_lr_{lr:.5f}".replace(".", "_")


def setup_linear_classifiers(
    sample_output: TokensList,
    n_last_blocks_list: Sequence[int],
    avgpool_list: Sequence[bool],
    learning_rates: Sequence[float],
    batch_size: int,
    num_classes: int,
    attentive: dict[str, Any] | None = None,
) -> tuple[AllClassifiers, list[dict[str, Any]]]:
    """The grid and one optimizer parameter group per classifier with its scaled lr (`lr` of the group;
    `base_lr` keeps the unscaled grid value). With `attentive` (AttentiveClassifier's `num_heads`,
    `concat_cls`) every grid point is an attentive probe instead of a linear one."""
    classifiers: dict[str, LinearClassifier] = {}
    groups: list[dict[str, Any]] = []
    for n_blocks in n_last_blocks_list:
        for avgpool in avgpool_list:
            out_dim = create_linear_input(sample_output, n_blocks, avgpool).shape[-1]
            for lr in learning_rates:
                name = classifier_name(n_blocks, avgpool, lr)
                if attentive is None:
                    classifier = LinearClassifier(out_dim, n_blocks, avgpool, num_classes)
                else:
                    embed_dim = sample_output[-1][0].shape[-1]
                    classifier = AttentiveClassifier(embed_dim, n_blocks, avgpool, num_classes, **attentive)
                classifiers[name] = classifier
                groups.append(
                    {
                        "params": classifier.parameters(),
                        "lr": scale_lr(lr, batch_size),
                        "base_lr": lr,
                        "name": name,
                    }
                )
    return AllClassifiers(classifiers), groups


def train_step(
    feature_model: nn.Module,
    classifiers: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
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


def evaluate_classifiers(
    feature_model: nn.Module,
    classifiers: nn.Module,
    loader: DataLoader,
    device: torch.device,
    print_freq: int = 20,
    metric_type: MetricType = MetricType.MEAN_ACCURACY,
    class_mapping: Tensor | None = None,
) -> dict[str, dict[str, Any]]:
    """Top-1 / top-5 accuracy (percent, under `metric_type`) and mean loss of each classifier on `loader`'s
    dataset, through the one evaluation loop (`simdinov2.eval.metrics.evaluate`; `loader` unpadded)."""
    if isinstance(classifiers, nn.parallel.DistributedDataParallel):
        classifiers = classifiers.module
    classifiers.eval()
    heads = (
        list(classifiers.classifiers_dict.values())
        if isinstance(classifiers, AllClassifiers)
        else [classifiers]
    )
    num_classes = len(class_mapping) if class_mapping is not None else int(heads[0].num_classes)
    names = (
        sorted(classifiers.classifiers_dict) if isinstance(classifiers, AllClassifiers) else ["classifier"]
    )
    counts = evaluate(lambda images: classifiers(feature_model(images)), loader, device, num_classes, class_mapping,
                      names, print_freq)  # fmt: skip
    return {name: c.result(metric_type) for name, c in counts.items()}


# ---------------------------------------------------------------------------------------------- v2 CLI
def get_args_parser(
    add_help: bool = True,
    parents: Sequence[argparse.ArgumentParser] | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """DINOv2's linear-probe flags on top of the shared set-up flags."""
    description = description or "Linear probing of a SimDINOv2 teacher (grid over lr × blocks × avgpool)"
    parser = eval_setup.get_eval_args_parser(
        description, add_help, parents, val_role="validation (selects the best classifier)"
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=128, help="images per process per iteration")
    parser.add_argument(
        "--epoch-length",
        type=int,
        default=DEFAULT_EPOCH_LENGTH,
        help="iterations per epoch (upstream's 1250; <= 0: one pass over the training set, "
        "len(dataset) // global batch)",
    )
    parser.add_argument(
        "--save-checkpoint-frequency",
        type=int,
        default=20,
        help="save the resumable checkpoint every this many epochs (and at the end)",
    )
    parser.add_argument(
        "--eval-period-iterations",
        type=int,
        default=DEFAULT_EPOCH_LENGTH,
        help="evaluate every this many iterations (upstream's 1250; <= 0: once per epoch)",
    )
    parser.add_argument(
        "--learning-rates",
        nargs="+",
        type=float,
        default=None,
        help="grid of base learning rates, each scaled by global batch / 256 (default: upstream "
        f"SimDINOv2's {DEFAULT_LEARNING_RATES}; DINOv2's with --full-grid)",
    )
    parser.add_argument(
        "--n-last-blocks",
        nargs="+",
        type=int,
        default=None,
        help="grid of how many last blocks' CLS tokens are concatenated (default: "
        f"{DEFAULT_N_LAST_BLOCKS}; {FULL_GRID_N_LAST_BLOCKS} with --full-grid)",
    )
    parser.add_argument(
        "--full-grid",
        action="store_true",
        help="DINOv2's richer grid: 13 learning rates x last {1, 4} blocks x avgpool {no, yes}",
    )
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing linear_checkpoint.pth")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="crop size (default: crops.global_crops_size of the config)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the classifier init and data order")
    _add_attentive_and_backbone_args(parser)
    add_eval_set_args(parser)
    return parser


def _add_attentive_and_backbone_args(parser: argparse.ArgumentParser) -> None:
    """Upstream's attentive probe, and training the backbone along with the probe."""
    parser.add_argument(
        "--attentive",
        action="store_true",
        help="upstream's attentive probe: each grid point pools the patch tokens of each of its "
        "last blocks with a learned query (multi-head attention) before its linear layer",
    )
    parser.add_argument(
        "--attentive-concat-cls",
        "--attentive_concat_cls",
        dest="attentive_concat_cls",
        action="store_true",
        help="attentive probe: also feed each block's CLS token",
    )
    parser.add_argument(
        "--attentive-num-heads",
        type=int,
        default=None,
        help="attentive probe: attention heads (default: the backbone's)",
    )
    parser.add_argument(
        "--train-backbone-lr",
        type=float,
        default=None,
        help="also train the backbone in the same SGD at this (unscaled) lr, as upstream's "
        "finetune.py does with 0.005 (default: frozen backbone)",
    )


RESULTS_NAME = "results_eval_linear.json"


def _checkpoint_path(output_dir: str) -> str:
    return os.path.join(output_dir, "linear_checkpoint.pth")


def _append_results(output_dir: str, record: dict[str, Any]) -> None:
    if distributed.is_main_process():
        append_json_lines(os.path.join(output_dir, RESULTS_NAME), [record])


def _summarise(
    iteration: int, results: dict[str, dict[str, float]], classifiers: AllClassifiers
) -> dict[str, Any]:
    best_name = max(results, key=lambda n: results[n]["top1"])
    best = classifiers.classifiers_dict[best_name]
    return {
        "iteration": iteration,
        "best_classifier": {
            "name": best_name,
            "n_last_blocks": best.use_n_blocks,
            "avgpool": best.use_avgpool,
            **results[best_name],
        },
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


def _grid(args: argparse.Namespace) -> list[bool]:
    """Fill the grid defaults (upstream SimDINOv2's, DINOv2's with --full-grid); the avgpool choices."""
    for flag in ("epochs", "batch_size", "save_checkpoint_frequency"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1 (got {getattr(args, flag)})")
    full = bool(getattr(args, "full_grid", False))
    if args.learning_rates is None:
        args.learning_rates = list(FULL_GRID_LEARNING_RATES if full else DEFAULT_LEARNING_RATES)
    if args.n_last_blocks is None:
        args.n_last_blocks = list(FULL_GRID_N_LAST_BLOCKS if full else DEFAULT_N_LAST_BLOCKS)
    if not args.learning_rates or min(args.learning_rates) <= 0:
        raise UserError("--learning-rates must be positive numbers")
    return list(FULL_GRID_AVGPOOL if full else DEFAULT_AVGPOOL)


def _attentive_options(args: argparse.Namespace, model: nn.Module) -> dict[str, Any] | None:
    """AttentiveClassifier's options with --attentive (heads: the backbone's unless given), else None."""
    if not getattr(args, "attentive", False):
        return None
    num_heads = getattr(args, "attentive_num_heads", None) or int(getattr(model, "num_heads", 8))
    return {"num_heads": num_heads, "concat_cls": bool(getattr(args, "attentive_concat_cls", False))}


def _build_probe(args: argparse.Namespace, avgpool_list: Sequence[bool]) -> SimpleNamespace:
    """Backbone, training set, evaluation sets (all checked before training) and the classifier grid."""
    model, autocast_dtype, config = eval_setup.setup_and_build_model(args)
    device = distributed.get_device()
    image_size = eval_setup.eval_image_size(args.image_size, config, getattr(args, "config_file", None))
    train_dataset = make_dataset(
        args.train_dataset_str, transform=make_classification_train_transform(crop_size=image_size)
    )
    check_global_batch(len(train_dataset), args.batch_size, distributed.get_world_size())
    num_classes = num_dataset_classes(train_dataset)
    eval_sets = load_eval_sets(args, make_classification_eval_transform(crop_size=image_size), num_classes)
    depth = getattr(model, "depth", max(args.n_last_blocks))
    n_last_blocks_list = sorted({n for n in args.n_last_blocks if 1 <= n <= depth})
    if not n_last_blocks_list:
        raise UserError(f"--n-last-blocks must lie in [1, {depth}] (got {args.n_last_blocks})")
    feature_model = ModelWithIntermediateLayers(model, max(n_last_blocks_list), autocast_dtype,
                                                trainable=bool(args.train_backbone_lr))  # fmt: skip
    with torch.no_grad():
        sample = feature_model(train_dataset[0][0][None].to(device))
    classifiers, groups = setup_linear_classifiers(
        sample, n_last_blocks_list, avgpool_list, args.learning_rates, args.batch_size, num_classes,
        attentive=_attentive_options(args, model),
    )  # fmt: skip
    classifiers.to(device)
    if args.train_backbone_lr:  # upstream's finetune.py: the backbone in the same SGD, its lr not scaled
        groups.append({"params": model.parameters(), "lr": args.train_backbone_lr, "base_lr": args.train_backbone_lr,
                       "name": "backbone"})  # fmt: skip
    return SimpleNamespace(feature_model=feature_model, classifiers=classifiers, groups=groups, device=device,
                           train_dataset=train_dataset, eval_sets=eval_sets, image_size=image_size,
                           num_classes=num_classes)  # fmt: skip


def _restore(path: str, probe: SimpleNamespace, optimizer, scheduler, max_iter: int) -> int:
    """The iteration `path` (the probe's resumable checkpoint) stopped at, its state loaded; 0 without one."""
    if not os.path.isfile(path):
        return 0
    classifiers, backbone = probe.classifiers, probe.feature_model
    state = safe_torch_load(path)
    if not isinstance(state, dict) or not {"classifiers", "optimizer", "scheduler", "iteration"} <= set(
        state
    ):
        raise UserError(
            f"{path} is not a linear-probe checkpoint of this program; use --no-resume or another --output-dir"
        )
    if set(state["classifiers"]) != set(classifiers.state_dict()):
        raise UserError(f"{path} holds another classifier grid; use --no-resume or another --output-dir")
    if (state.get("backbone") is not None) != backbone.trainable:
        raise UserError(
            f"{path} was written {'without' if backbone.trainable else 'with'} --train-backbone-lr; "
            "keep the flag as it was, or --no-resume"
        )
    if backbone.trainable:
        backbone.feature_model.load_state_dict(state["backbone"])
    classifiers.load_state_dict(state["classifiers"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    stretch_cosine_schedule(scheduler, max_iter)
    logger.info("resumed the linear probe from %s at iteration %d", path, int(state["iteration"]))
    return int(state["iteration"])


def _schedule(args: argparse.Namespace, n_images: int) -> tuple[int, int, int, int]:
    """(epoch length, total iterations, evaluation period, checkpoint period) in iterations."""
    global_batch = args.batch_size * distributed.get_world_size()
    epoch_length = (
        args.epoch_length if args.epoch_length and args.epoch_length > 0 else max(n_images // global_batch, 1)
    )
    eval_period = (
        args.eval_period_iterations
        if args.eval_period_iterations and args.eval_period_iterations > 0
        else None
    )
    return (
        epoch_length,
        args.epochs * epoch_length,
        eval_period or epoch_length,
        args.save_checkpoint_frequency * epoch_length,
    )


def evaluate_sets(probe: SimpleNamespace, eval_sets: Sequence[EvalSet], args: argparse.Namespace,
                  best_name: str | None = None) -> list[dict[str, dict[str, Any]]]:  # fmt: skip
    """Every classifier's results on each evaluation set (its metric type and class mapping)."""
    results = []
    for eval_set in eval_sets:
        logger.info("evaluating on %s (%s)", eval_set.dataset_str, eval_set.metric_type)
        loader = make_eval_loader(eval_set.dataset, args.batch_size, args.num_workers, pad=False)
        results.append(
            evaluate_classifiers(
                probe.feature_model,
                probe.classifiers,
                loader,
                probe.device,
                metric_type=eval_set.metric_type,
                class_mapping=eval_set.class_mapping,
            )
        )
    return results


def _length_estimate(
    args: argparse.Namespace, probe: SimpleNamespace, epoch_length: int, left: int
) -> LengthEstimate:
    """The size of the training (said now) and, after its first iterations, how long the rest takes."""
    global_batch = args.batch_size * distributed.get_world_size()
    n_images, max_iter = len(probe.train_dataset), args.epochs * epoch_length
    return LengthEstimate(
        "attentive probe" if args.attentive else "linear probe",
        f"{len(probe.classifiers)} classifiers, {args.epochs} epochs x {epoch_length} iterations = {max_iter} iterations "
        f"of {global_batch} images ({n_images} training images: one pass is {max(n_images // global_batch, 1)})", left,
        f"shorten with --epoch-length 0 (one pass per epoch) or fewer --epochs (upstream's {DEFAULT_EPOCH_LENGTH} x 10 "
        "stay the defaults)",
    )  # fmt: skip


def _train(args, probe: SimpleNamespace, optimizer, scheduler, start_iteration: int, save) -> int:
    """Train the grid from `start_iteration` to the end, saving and evaluating on the validation set
    periodically; returns the last iteration."""
    epoch_length, max_iter, eval_period, checkpoint_period = _schedule(args, len(probe.train_dataset))
    trained: nn.Module = probe.classifiers
    features: nn.Module = probe.feature_model
    if distributed.get_world_size() > 1:
        trained = nn.parallel.DistributedDataParallel(probe.classifiers)
        if probe.feature_model.trainable:
            features = nn.parallel.DistributedDataParallel(probe.feature_model)
    estimate = _length_estimate(args, probe, epoch_length, max_iter - start_iteration)
    iteration = start_iteration
    if start_iteration >= max_iter:
        return iteration
    # Endless sharded stream, advanced past the batches a resumed run already trained on.
    batches = make_data_loader(
        probe.train_dataset, args.batch_size, args.num_workers, shuffle=True, seed=args.seed,
        sampler_type="infinite", sampler_advance=start_iteration * args.batch_size, drop_last=True,
    )  # fmt: skip
    trained.train()
    metric_logger = MetricLogger(delimiter="  ")
    for images, labels in metric_logger.log_every(batches, 10, header="Training", n_iterations=max_iter,
                                                  start_iteration=start_iteration):  # fmt: skip
        labels = torch.as_tensor(labels).to(probe.device, non_blocking=True)
        loss = train_step(features, trained, optimizer, images.to(probe.device, non_blocking=True), labels)
        scheduler.step()
        iteration += 1
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite linear-probe loss at iteration {iteration}; lower --learning-rates"
            )
        metric_logger.update(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        estimate.tick()
        # The row before the checkpoint: a kill between them re-runs (and re-writes) the iteration.
        if iteration % eval_period == 0 and iteration != max_iter:
            results = evaluate_sets(probe, probe.eval_sets[:1], args)[0]
            _append_results(args.output_dir, _summarise(iteration, results, probe.classifiers))
            trained.train()
        if iteration % checkpoint_period == 0 or iteration == max_iter:
            save(iteration)
    return iteration


def run_linear_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Train the grid, evaluate it on the validation set (which picks the best classifier) and on every
    test set; returns the final summary record."""
    avgpool_list = _grid(args)
    fix_random_seeds(args.seed)
    probe = _build_probe(args, avgpool_list)
    classifiers = probe.classifiers
    _, max_iter, _, _ = _schedule(args, len(probe.train_dataset))
    optimizer = torch.optim.SGD(probe.groups, momentum=0.9, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_iter, eta_min=0.0)
    make_output_dir(args.output_dir)
    checkpoint_path = _checkpoint_path(args.output_dir)
    start_iteration = (
        0 if args.no_resume else _restore(checkpoint_path, probe, optimizer, scheduler, max_iter)
    )
    if distributed.is_main_process():  # rows after the checkpoint (and a finished run's summary) come again
        resume_records(
            args.output_dir, RESULTS_NAME, "iteration", start_iteration + (start_iteration < max_iter)
        )

    def save(iteration: int) -> None:
        if distributed.is_main_process():
            backbone = probe.feature_model.feature_model.state_dict() if args.train_backbone_lr else None
            atomic_torch_save(
                {
                    "classifiers": classifiers.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "iteration": iteration,
                    "num_classes": probe.num_classes,
                    "backbone": backbone,
                },
                checkpoint_path,
            )

    iteration = _train(args, probe, optimizer, scheduler, start_iteration, save)
    per_set = evaluate_sets(probe, probe.eval_sets, args)
    summary = _summarise(iteration, per_set[0], classifiers)
    best_name = summary["best_classifier"]["name"]
    summary.update(
        {
            "final": True,
            "pretrained_weights": str(args.pretrained_weights),
            "train_dataset": args.train_dataset_str,
            "val_dataset": args.val_dataset_str,
            "image_size": probe.image_size,
            "attentive": bool(args.attentive),
            "eval_sets": set_results(
                [(s, r[best_name]) for s, r in zip(probe.eval_sets, per_set, strict=True)]
            ),
        }
    )
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
