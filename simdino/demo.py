#!/usr/bin/env python
"""`make demo`: SimDINO on Fashion-MNIST on a laptop-class CPU, within a fixed wall-clock budget.

`python -m simdino.demo --seconds 540 --output_dir outputs/demo [--data_path DIR] [--threads N]`

1. trains a small ViT with SimDINO (v1) on the 60k Fashion-MNIST training images for `--seconds` of wall
   time, running `python simdino/main_dino.py ... --time_budget S` (the budget makes the cosine schedules
   end at it; `simdino.run.trainer` runs the command and reads the run back);
2. k-NN-classifies the 10k test images (weighted vote, k=20, T=0.07, and the other DINO ks) from
   frozen features of three models: the trained teacher, the same network at its random initialisation
   (same seed), and raw pixels;
3. prints the table and writes into `output_dir`: `results.json`, `loss_curve.png` (loss, compression,
   expansion, lr, wd over iterations) and `attention.png` (last-block CLS attention per head on a few
   test images), next to main_dino's own files (`checkpoint.pth`, `log.txt`, `training_metrics.json`).

This module owns the demo recipe (`DEMO_RECIPE`: flags of `main_dino.py`, chosen by measurement on a
2-core CPU, see the README) and the glue above. The pieces are public so that longer runs (docs/RESULTS.md)
reuse them: `recipe_flags` (main_dino flags for any budget / overrides), `train_for_budget`,
`knn_evaluate` (k-NN of any feature function), `pixel_features`, `random_init_backbone`,
`trained_teacher`, `save_attention_figure`. Everything else comes from `simdinov2` (k-NN core, feature
extraction, datasets, plot tool, the v1 trainer's command line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from simdino.run import trainer as v1_trainer
from simdino.train.multicrop import build_backbone
from simdinov2 import distributed
from simdinov2.checkpoint import build_backbone_from_checkpoint
from simdinov2.data import FashionMNIST, ImageFolderDataset, make_classification_eval_transform
from simdinov2.data.augmentations import IMAGENET_MEAN, IMAGENET_STD
from simdinov2.data.datasets.fashion_mnist import (
    DEFAULT_FASHION_MNIST_ROOT,
    INSTALL_HINT,
    export_fashion_mnist_imagefolder,
    fashion_mnist_paths,
)
from simdinov2.errors import MissingFileError, UserError
from simdinov2.eval.attention_maps import cls_attention_maps
from simdinov2.eval.features import dataset_labels, extract_features, l2_normalized, make_eval_loader
from simdinov2.eval.knn import feasible_ks, knn_classify
from simdinov2.tools.plot_log import plot_run
from simdinov2.utils.utils import fix_random_seeds

logger = logging.getLogger("simdinov2")

DEFAULT_SECONDS = 540.0
KNN_KS = (10, 20, 100, 200)
KNN_K = 20  # the headline k (DINO's)
KNN_TEMPERATURE = 0.07
SHORT_RUN_SECONDS = 120.0
# What a demo run writes into its output_dir (main_dino's files, then the demo's).
RUN_FILES = (
    "checkpoint.pth", "log.txt", "training_metrics.json", "args.log", "output.log",
    "results.json", "loss_curve.png", "attention.png",
)  # fmt: skip

# main_dino flags of the demo (besides data, output, budget and workers), chosen on the 2-core CPU by
# k-NN top-1 (10k-image bank, 2k queries) after ~300 iterations of the demo's budget schedules, plus
# measured throughput (README, "The demo"):
# - 6 blocks of ViT-Ti width, patch 7: 16 tokens per 28 px image and 4 per 14 px local crop, so about one
#   pass over the 60k images fits in 9 minutes; at equal wall time 12 blocks gained +2.5 points over their
#   random init, 6 blocks +6;
# - eps 0.02: with upstream's v1 default 0.5 the expansion term let the features collapse to a few
#   directions in such short runs and k-NN ended below random init; 0.05 was 1.2 points below 0.02, 0.01
#   level with it; coeff 2 lost 4 points;
# - teacher momentum 0.98 (0.99 left the teacher 1.4 points behind its student), lr 0.002 (0.004 worse);
# - bf16 autocast: ~1.9x the fp32 step on this CPU (avx512_bf16; benchmarks/RESULTS.md §1). On a CPU without
#   bf16 instructions it is emulated and several times slower than fp32: there the demo trains in fp32
#   (`cpu_has_bf16`).
DEMO_RECIPE: dict[str, Any] = {
    "arch": "vit_tiny",
    "depth": 6,
    "patch_size": 7,
    "global_crops_size": 28,
    "local_crops_size": 14,
    "local_crops_number": 4,
    "global_crops_scale": (0.4, 1.0),
    "local_crops_scale": (0.1, 0.4),
    "batch_size_per_gpu": 128,
    "lr": 0.002,
    "min_lr": 1e-5,
    "warmup_epochs": 3,  # of --epochs 100 nominal: the first 3% of the budget (schedules follow the budget)
    "epochs": 100,
    "momentum_teacher": 0.98,
    "weight_decay": 0.04,
    "weight_decay_end": 0.2,
    "drop_path_rate": 0.0,
    "hidden_dim": 1024,
    "z_dim": 256,
    "eps": 0.02,
    "coeff": 1.0,
    "use_fp16": True,  # bf16 autocast on CPU
    "compile": False,
    "clip_grad": 3.0,
    "saveckp_freq": 0,
    "seed": 0,
}


# ------------------------------------------------------------------------------------------------ data
def resolve_data(data_path: str | None) -> tuple[str, Callable[..., Dataset], str]:
    """(training source for main_dino's --data_path, `make_split(split, transform)` building the labelled
    TRAIN / TEST datasets, a name for messages).

    Without `data_path`: Fashion-MNIST from the Debian package. With it: an ImageFolder tree holding
    `train/` and `val/` class folders (the layout of `eval_knn.py`). Missing data raises
    FileNotFoundError whose message is the one line telling what to install or pass."""
    if data_path is None:
        root = DEFAULT_FASHION_MNIST_ROOT
        missing = [
            p for split in ("TRAIN", "TEST") for p in fashion_mnist_paths(split, root) if not p.is_file()
        ]
        if missing:
            raise MissingFileError(
                f"Fashion-MNIST is not installed ({missing[0]} is missing): run '{INSTALL_HINT}', "
                "or pass --data_path DIR with DIR/train and DIR/val ImageFolder trees"
            )

        def fashion_mnist(split: str, transform: Any = None) -> Dataset:
            return FashionMNIST(split, root=root, transform=transform)

        return f"FashionMNIST:split=TRAIN:root={root}", fashion_mnist, "Fashion-MNIST"

    root_path = Path(data_path).expanduser()
    for sub in ("train", "val"):
        if not (root_path / sub).is_dir():
            raise MissingFileError(
                f"--data_path {data_path} must hold train/ and val/ ImageFolder trees (one folder per class); "
                f"{root_path / sub} is missing"
            )

    def image_folder(split: str, transform: Any = None) -> Dataset:
        return ImageFolderDataset(
            str(root_path / ("train" if split == "TRAIN" else "val")), transform=transform
        )

    return str(root_path / "train"), image_folder, str(root_path)


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None, load_average: float | None = None) -> int:
    """torch threads for a machine with `cores` cores and this 1-minute load average: all of them on an
    idle machine; on a busy one only the cores left free (at least 1). Why: the small matrices of a tiny
    ViT give every op a thread barrier, and one thread descheduled by another process stalls all the
    others; we measured 2 threads several times slower than 1 on 2 cores shared with another job, and
    ~1.35x faster on idle cores. None: this machine's cores and current load."""
    cores = available_cores() if cores is None else cores
    if load_average is None:
        load_average = _load()[0] if _load() else 0.0
    free = cores - load_average
    if free >= cores - 0.5:
        return cores
    return max(1, int(free + 0.5))


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 avx512_bf16 / AMX, Arm bf16). Without it bf16 autocast
    is emulated: one step of the demo's ViT at batch 16 took 8.4 s against 1.7 s in fp32 on a 2-core AVX2
    EPYC, and the first one 9-14 s."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: no way to tell, fp32 is the safe choice
        return False
    flags = {flag for line in lines if line.lower().startswith(("flags", "features")) for flag in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def default_num_workers(cores: int) -> int:
    """Loader processes: the multi-crop augmentation of 28 px images costs ~4 ms per image on one core,
    about a third of the training step of the demo's ViT, so one worker per 4 cores keeps up."""
    return max(1, min(8, cores // 4))


def default_knn_images(seconds: float) -> tuple[int | None, int | None]:
    """(k-NN bank, queries) sizes: everything, except for smoke runs (< 2 minutes of training) where a
    random 10000 / 2000 keeps the evaluation as short as the training."""
    return (None, None) if seconds >= SHORT_RUN_SECONDS else (10000, 2000)


# ---------------------------------------------------------------------------------------------- training
def recipe_flags(
    seconds: float, output_dir: str | Path, train_source: str, num_workers: int = 1, **overrides: Any
) -> dict[str, Any]:
    """main_dino's flags for the demo recipe trained for `seconds` (any flag can be overridden; main_dino
    refuses one it does not have)."""
    return {
        **DEMO_RECIPE, **overrides, "time_budget": float(seconds), "data_path": train_source,
        "output_dir": str(output_dir), "num_workers": int(num_workers),
    }  # fmt: skip


def recipe_command(flags: dict[str, Any]) -> str:
    """The `python simdino/main_dino.py ...` command line that reproduces a run of `flags`."""
    return v1_trainer.command_line(flags)


def train_for_budget(flags: dict[str, Any]) -> dict[str, Any]:
    """Run main_dino with `flags` (its time budget included) on this process's torch threads; returns its
    summary (`simdino.run.trainer.run_summary`: iterations, images_seen, train_seconds, epochs, args)."""
    return v1_trainer.train(flags)


# --------------------------------------------------------------------------------------------- models
def trained_teacher(output_dir: str | Path) -> nn.Module:
    """The teacher backbone of `output_dir/checkpoint.pth` (architecture read from the weights)."""
    return build_backbone_from_checkpoint(
        str(Path(output_dir) / "checkpoint.pth"), "teacher", verbose=False
    ).eval()


def random_init_backbone(args: argparse.Namespace | dict[str, Any]) -> nn.Module:
    """The backbone of a run's arguments (main_dino's, or the flags of a recipe) at its random
    initialisation, drawn with the run's seed (main_dino seeds the generators, then builds the student
    first and copies it into the teacher)."""
    args = argparse.Namespace(**args) if isinstance(args, dict) else args
    fix_random_seeds(getattr(args, "seed", 0))
    backbone, _ = build_backbone(args, 0.0)
    return backbone.eval()


class PixelFeatures(nn.Module):
    """Raw pixels as features: the flattened, normalised input image (what the networks see)."""

    def forward(self, images: Tensor) -> Tensor:
        return images.flatten(1)


def pixel_features() -> nn.Module:
    return PixelFeatures()


# ------------------------------------------------------------------------------------------------- k-NN
def eval_transform(image_size: int) -> Any:
    """Deterministic evaluation view: the whole image at the training crop size. Not ImageNet's 8/7 resize
    + centre crop, which cuts off Fashion-MNIST's object edges: it cost 1.5 points of pixel k-NN and 0.8
    of random-init k-NN in our measurements."""
    return make_classification_eval_transform(resize_size=image_size, crop_size=image_size)


def evaluation_subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """`n` images of `dataset` drawn at random with `seed` (all of them for None or n >= len)."""
    if n is None or n >= len(dataset):  # type: ignore[arg-type]
        return dataset

    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:n].sort().values  # type: ignore[arg-type]
    return Subset(dataset, indices.tolist())


def extract(model: nn.Module, dataset: Dataset, batch_size: int, num_workers: int) -> tuple[Tensor, Tensor]:
    """L2-normalised features and labels of every image of `dataset` (progress and ETA logged)."""
    loader = make_eval_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    device = next(iter(model.parameters()), torch.empty(0)).device
    with torch.inference_mode():
        return extract_features(l2_normalized(model), loader, device=device, print_freq=20)


def knn_evaluate(
    model: nn.Module,
    train_dataset: Dataset,
    test_dataset: Dataset,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    batch_size: int = 500,
    num_workers: int = 1,
) -> dict[int, tuple[float, float]]:
    """Weighted k-NN top-1 / top-5 (percent) of `model`'s frozen features: {k: (top1, top5)}."""
    train_features, train_labels = extract(model, train_dataset, batch_size, num_workers)
    test_features, test_labels = extract(model, test_dataset, batch_size, num_workers)
    return knn_classify(
        train_features, train_labels, test_features, test_labels,
        feasible_ks(ks, train_features.shape[0]), temperature,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- figures
@torch.no_grad()
def save_attention_figure(
    model: nn.Module,
    dataset: Dataset,
    out: str | Path,
    n_images: int = 6,
    class_names: Sequence[str] | None = None,
) -> Path:
    """One row per test image (the first image of each of the first `n_images` classes): the image, then
    the last block's CLS->patch attention of every head (`simdinov2.eval.attention_maps.cls_attention_maps`), one
    colour block per patch drawn over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    labels = dataset_labels(dataset)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(min(len(dataset), 1000))]  # type: ignore[arg-type]
    labels = [int(label) for label in labels]
    chosen: list[int] = []
    for cls in sorted(set(labels)):
        chosen.append(labels.index(cls))
        if len(chosen) == n_images:
            break
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rows = []
    for index in chosen:
        image, label = dataset[index]
        attention = cls_attention_maps(model, image.unsqueeze(0))  # [heads, h, w]
        picture = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        rows.append((picture, attention.numpy(), int(label)))
    heads = rows[0][1].shape[0]
    fig, axes = plt.subplots(
        len(rows), heads + 1, figsize=(1.6 * (heads + 1), 1.6 * len(rows)), squeeze=False
    )
    for r, (picture, attention, label) in enumerate(rows):
        axes[r][0].imshow(picture)
        name = class_names[label] if class_names and label < len(class_names) else str(label)
        axes[r][0].set_ylabel(name, fontsize=7)
        extent = (0, picture.shape[1], picture.shape[0], 0)
        for h in range(heads):
            axes[r][h + 1].imshow(picture.mean(axis=2), cmap="gray", extent=extent)
            axes[r][h + 1].imshow(
                attention[h], cmap="inferno", alpha=0.6, interpolation="nearest", extent=extent
            )
            if r == 0:
                axes[r][h + 1].set_title(f"head {h}", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("image", fontsize=8)
    fig.suptitle("CLS attention of the last block (trained teacher)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------------- demo
def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


# Below this many iterations a demo is a smoke run: the measured gains over random init grew with the
# iterations a budget allowed (README, "The demo": +4.84 after 228, +5.97 after 387, +6.41 after 560).
SMOKE_RUN_ITERATIONS = 200


def reading_guide(iterations: int, coeff: float) -> str:
    """How to read the summary and loss_curve.png: which way each loss part is good, and what a run of
    this length can and cannot show."""
    lines = [
        "How to read this run:",
        f"  loss = -({coeff:g}*comp_loss + expa_loss) is minimised (lower is better); both parts are maximised:",
        "  comp_loss: cosine similarity of student and teacher views (agreement between crops, at most 1);",
        "  expa_loss: coding rate of the features (how spread out they are; higher = further from collapse).",
        "  A random ViT maps all images to nearly the same feature: the views agree (comp_loss high) and the",
        "  rate is low. Training spreads the features (expa_loss rises) at some cost in agreement (comp_loss",
        "  falls), and the loss falls with them (docs/results/demo_loss_curve.png, 540 s).",
    ]
    if iterations < SMOKE_RUN_ITERATIONS:
        lines += [
            f"  This was a smoke run ({iterations} iterations, under {SMOKE_RUN_ITERATIONS}): it shows that training,",
            "  checkpointing, k-NN evaluation and the figures work on this machine. It cannot show how good the",
            "  features get: over so few steps the loss parts can still move either way, and the k-NN difference",
            "  to random init says little. The gain grows with iterations (README: +4.84 points after 228, +6.41",
            "  after 560);",
            "  run `make demo` (540 s) for that.",
        ]
    return "\n".join(lines)


def format_table(rows: Sequence[tuple[str, float]], k: int = KNN_K) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [f"{'features':<{width}}  {k}-NN top-1", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{name:<{width}}  {top1:9.2f}%" for name, top1 in rows]
    return "\n".join(lines)


def knn_monitor_set(data_path: str | None, output_dir: Path) -> Path:
    """The k-NN monitor's labeled set: the given ImageFolder root (train/ and val/), or 100 training and 50 test
    Fashion-MNIST images per class exported under `output_dir` (2 s per 1,000 images on 2 cores)."""
    if data_path is not None:
        return Path(data_path).expanduser()
    root = Path(output_dir) / "knn_monitor_set"
    for split, per_class in (("TRAIN", 100), ("TEST", 50)):
        export_fashion_mnist_imagefolder(root, split, limit_per_class=per_class)
    return root


def clear_previous_run(output_dir: Path) -> None:
    """Every run starts from scratch (main_dino would otherwise resume a finished budget): the files of a
    previous run in output_dir are removed, nothing else."""
    previous = [output_dir / name for name in RUN_FILES if (output_dir / name).is_file()]
    if previous:
        print(f"removing the previous run's files in {output_dir}", flush=True)
        for path in previous:
            path.unlink()


def results_record(
    args: argparse.Namespace, flags: dict[str, Any], knn: dict[str, dict[int, tuple[float, float]]],
    top1: dict[str, float], names: list[str], summary: dict[str, float], seconds: float,
    times: tuple[float, float, float], data_name: str, sets: tuple[Dataset, Dataset, Dataset], threads: int,
    num_workers: int, loads: tuple[Any, Any],
) -> dict[str, Any]:  # fmt: skip
    """The `results.json` record of a demo run (`args`: the trainer's, `flags`: the command's)."""
    started, train_done, eval_done = times
    full_train_set, train_set, test_set = sets
    load_before, load_after_training = loads
    return {
        "knn_top1": top1[names[0]],
        "random_init_knn_top1": top1[names[1]],
        "pixels_knn_top1": top1[names[2]],
        "knn_k": KNN_K,
        "knn_temperature": KNN_TEMPERATURE,
        "knn": {
            key: {str(k): {"top1": v[0], "top5": v[1]} for k, v in knn[name].items()}
            for key, name in zip(("teacher", "random_init", "pixels"), names)
        },
        "train_seconds": summary["train_seconds"],
        "time_budget_seconds": float(seconds),
        "images_seen": int(summary["images_seen"]),
        "iterations": int(summary["iterations"]),
        "epochs_over_train_set": summary["images_seen"] / len(full_train_set),
        "eval_seconds": eval_done - train_done,
        "total_seconds": time.time() - started,
        "data": data_name,
        "train_images": len(full_train_set),
        "knn_train_images": len(train_set),
        "knn_test_images": len(test_set),
        "recipe": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in vars(args).items()
            if k in DEMO_RECIPE or k in flags
        },
        "command": recipe_command(flags),
        "threads": threads,
        "num_workers": num_workers,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            # os.getloadavg() (1, 5, 15 minutes) before training, at its end, and after the evaluation
            "load_average_before": load_before,
            "load_average_end_of_training": load_after_training,
            "load_average_after": _load(),
            "torch": torch.__version__,
        },
    }


def run_demo(
    seconds: float = DEFAULT_SECONDS,
    output_dir: str | Path = "outputs/demo",
    data_path: str | None = None,
    threads: int | None = None,
    num_workers: int | None = None,
    knn_train_images: int | None = None,
    knn_test_images: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train for `seconds`, evaluate the three feature sets, write results.json and the figures; returns
    the results dict. None picks the defaults (`default_threads`, `default_num_workers`,
    `default_knn_images`); `overrides` are main_dino flags replacing the recipe's."""
    started = time.time()
    train_source, make_split, data_name = resolve_data(data_path)
    output_dir = Path(output_dir)
    clear_previous_run(output_dir)
    cores, load_before = available_cores(), _load()
    threads = threads or default_threads(cores, load_before[0] if load_before else 0.0)
    num_workers = default_num_workers(cores) if num_workers is None else num_workers
    if knn_train_images is None and knn_test_images is None:
        knn_train_images, knn_test_images = default_knn_images(seconds)
    torch.set_num_threads(threads)
    if "use_fp16" not in overrides and not torch.cuda.is_available() and not cpu_has_bf16():
        overrides["use_fp16"] = False
        print("this CPU has no bf16 instructions: training in fp32 (bf16 autocast would be emulated, several "
              "times slower)", flush=True)
    flags = recipe_flags(seconds, output_dir, train_source, num_workers=num_workers, **overrides)
    # the k-NN monitor (log.txt, loss_curve.png's health panel) on a small labeled set, next to the effective rank
    flags.setdefault("knn_monitor_path", str(knn_monitor_set(data_path, output_dir)))

    load_text = f", load average {load_before[0]:.1f}" if load_before else ""
    print(
        f"SimDINO demo: training {flags['arch']}/{flags['patch_size']} on {data_name} for {seconds:.0f} s on "
        f"{threads} thread(s) + {num_workers} loader worker(s) ({cores} cores{load_text}), then k-NN on the "
        "test set",
        flush=True,
    )
    summary = train_for_budget(flags)
    args = summary["args"]  # the trainer's arguments: the recipe over main_dino's defaults
    train_done, load_after_training = time.time(), _load()

    eval_size = args.global_crops_size
    full_test_set = make_split("TEST", eval_transform(eval_size))
    full_train_set = make_split("TRAIN", eval_transform(eval_size))
    train_set = evaluation_subset(full_train_set, knn_train_images)
    test_set = evaluation_subset(full_test_set, knn_test_images)

    device = distributed.resolve_device(args.device)
    teacher = trained_teacher(output_dir).to(device)
    feature_sets = [
        ("SimDINO teacher (trained)", teacher),
        ("same network, random init", random_init_backbone(args)),
        ("raw pixels", pixel_features()),
    ]
    knn: dict[str, dict[int, tuple[float, float]]] = {}
    for name, model in feature_sets:
        logger.info(f"k-NN evaluation: {name} ({len(train_set)} train / {len(test_set)} test images)")
        knn[name] = knn_evaluate(model.to(device), train_set, test_set, num_workers=num_workers)
    eval_done = time.time()

    plot = output_dir / "loss_curve.png"
    plot_run(output_dir, plot, title=f"SimDINO {args.arch}/{args.patch_size} on {data_name}, {seconds:.0f} s")
    class_names = getattr(full_test_set, "classes", None)
    save_attention_figure(teacher.cpu(), full_test_set, output_dir / "attention.png", class_names=class_names)

    top1 = {
        name: result[KNN_K][0] if KNN_K in result else result[min(result)][0] for name, result in knn.items()
    }
    names = [name for name, _ in feature_sets]
    results = results_record(
        args, flags, knn, top1, names, summary, seconds, (started, train_done, eval_done),
        data_name, (full_train_set, train_set, test_set), threads, num_workers, (load_before, load_after_training),
    )  # fmt: skip
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(format_table([(name, top1[name]) for name in names]))
    gain = results["knn_top1"] - results["random_init_knn_top1"]
    print(
        f"\nSimDINO training moved the k-NN top-1 by {gain:+.2f} points over the same network at random init."
    )
    print(reading_guide(results["iterations"], float(args.coeff)))
    print(
        f"trained {results['train_seconds']:.0f} s, {results['iterations']} iterations, {results['images_seen']} "
        "images seen "
        f"({results['epochs_over_train_set']:.2f} passes over the {len(full_train_set)} training images); "
        f"k-NN k={KNN_K}, T={KNN_TEMPERATURE}; results in {output_dir}/results.json, loss_curve.png, attention.png"
    )
    return results


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "python -m simdino.demo",
        description="Train SimDINO on Fashion-MNIST for a fixed wall-clock budget, then k-NN-evaluate it.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"Wall-clock budget of the training loop (default {DEFAULT_SECONDS:.0f}); "
        "evaluation adds about 2-3 minutes on 2 cores.",
    )
    parser.add_argument(
        "--output_dir", default="outputs/demo", help="Where the run and the results go (must be new)."
    )
    parser.add_argument(
        "--data_path",
        default=None,
        help="ImageFolder root with train/ and val/ class folders (default: Fashion-MNIST "
        f"from the Debian package in {DEFAULT_FASHION_MNIST_ROOT}).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: every core on an idle machine, the free ones on a busy one).",
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="Data-loading worker processes (default: 1 per 4 cores, at least 1).",
    )
    parser.add_argument(
        "--knn_train_images",
        type=int,
        default=None,
        help="k-NN bank: a random subset of this many training images (default: all, or "
        f"10000 when --seconds < {SHORT_RUN_SECONDS:.0f}).",
    )
    parser.add_argument(
        "--knn_test_images",
        type=int,
        default=None,
        help="k-NN queries: a random subset of this many test images (default: all, or "
        f"2000 when --seconds < {SHORT_RUN_SECONDS:.0f}).",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    if not args.seconds > 0:
        raise SystemExit(f"demo: error: --seconds must be > 0 (got {args.seconds})")
    try:
        return run_demo(
            args.seconds, args.output_dir, args.data_path, args.threads, args.num_workers,
            knn_train_images=args.knn_train_images, knn_test_images=args.knn_test_images,
        )  # fmt: skip
    except UserError as e:
        raise SystemExit(f"demo: error: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
