"""The demo adapts to the machine: it times a few training steps of each recipe variant on this CPU
(precision, torch threads against a loader worker) and picks the variant that is predicted to learn most
in the budget, from the k-NN gains measured after a given number of iterations (docs/RESULTS.md, "The
demo on slow CPUs").

Why per iteration: the gain a variant reaches depends on how many optimisation steps the budget allows,
and hardly on the machine that ran them; how many steps fit in the budget is what differs between
machines. So `VARIANTS` holds (iterations, gain) pairs measured once, and the demo measures only its step
time (a few seconds) and looks the gain up (`predicted_gain`). `choose_variant` and `best_layout` are pure
functions of those timings; `measure_machine` takes them.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from simdino.train.multicrop import MultiCropStudentTeacher, build_loss, build_student_teacher
from simdinov2.data.augmentations import DataAugmentationDINO
from simdinov2.precision import resolve_amp
from simdinov2.train.optim import build_optimizer, param_groups
from simdinov2.train.step import train_step


@dataclass(frozen=True)
class Reference:
    """A measured `make demo` run of a variant, printed under the user's table so that they can tell
    whether their run is normal."""

    machine: str
    iterations: int
    images_seen: int
    teacher: float
    random_init: float
    pixels: float
    bank_images: int  # the k-NN bank (training images) and queries (test images) it was scored on
    test_images: int
    source: str  # the results.json it comes from

    @property
    def gain(self) -> float:
        return self.teacher - self.random_init


@dataclass(frozen=True)
class Variant:
    """A recipe variant: main_dino flags over `DEMO_RECIPE`, and the k-NN gains over random init (points)
    it reached after so many iterations of a budgeted run, as measured (docs/RESULTS.md)."""

    name: str
    overrides: dict[str, Any]
    gains: tuple[tuple[int, float], ...]  # (iterations, k-NN gain), increasing iterations
    reference: Reference | None = None

    def describe(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.overrides.items()) or "the recipe as it is"


# The README's machine: the quiet 2-core AMD EPYC with avx512_bf16 (bf16 autocast, 2 threads + 1 worker).
README_REFERENCE = Reference(
    "2-core AMD EPYC, avx512_bf16, quiet",
    560,
    71680,
    74.61,
    68.20,
    85.16,
    60000,
    10000,
    "docs/results/demo_2026-11-26.json",
)

# lean's: a `make demo` on the same machine with an AVX2-only CPU emulated (fp32, 2 threads + 1 loader worker)
LEAN_REFERENCE = Reference(
    "2-core AMD EPYC, AVX2-only emulated, fp32, quiet",
    1123,
    71872,
    75.87,
    64.03,
    83.29,
    15500,
    3100,
    "docs/results/demo_2026-12-04_avx2.json",
)

VARIANTS = (
    # 6 blocks, 4 local crops, batch 128: three 540 s runs at three loads (README, "The demo") and the 900 s
    # run of docs/RESULTS.md, "The tuned recipe" (all bf16 on the 2-core EPYC, full 10k-image k-NN)
    Variant("standard", {}, ((228, 4.84), (387, 5.97), (560, 6.41), (652, 7.28)), README_REFERENCE),
    # for CPUs that fit few steps (fp32 without bf16 instructions, few or slow cores): 4 blocks instead of 6
    # (about 0.7x the step), half the batch and two local crops instead of four (twice the updates per image
    # seen, about a fifth less compute per image), lr 0.003 (0.003 * 64/256 per step; the linear rule's
    # 0.002 was 0.3 points lower at 6 blocks, 0.004 level with 0.003). Measured on the 2-core EPYC with an
    # AVX2-only CPU emulated (fp32, 2 threads + 1 worker), then a native bf16 `make demo` (1659 steps);
    # docs/RESULTS.md, "The demo on slow CPUs".
    Variant(
        "lean",
        {"depth": 4, "batch_size_per_gpu": 64, "local_crops_number": 2, "lr": 0.003},
        ((1035, 10.56), (1659, 11.75)),
        LEAN_REFERENCE,
    ),
)


@dataclass(frozen=True)
class Layout:
    """How a step runs here: torch threads, loader worker processes, bf16 autocast or fp32."""

    threads: int
    num_workers: int
    use_fp16: bool

    def describe(self) -> str:
        return f"{'bf16' if self.use_fp16 else 'fp32'}, {self.threads} thread(s) + {self.num_workers} loader worker(s)"


@dataclass
class Choice:
    variant: Variant
    layout: Layout
    step_seconds: float
    iterations: int
    predicted_gain: float
    alternatives: dict[str, tuple[float, int, float]] = field(
        default_factory=dict
    )  # name: (step s, its, gain)

    def reason(self, budget: float) -> str:
        """The one line that says what the demo chose and why."""
        others = "; ".join(
            f"{name}: {step:.2f} s/step, ~{its} its, "
            + ("gain not measured" if math.isnan(gain) else f"{gain:+.1f}")
            for name, (step, its, gain) in self.alternatives.items()
            if name != self.variant.name
        )
        if math.isnan(self.predicted_gain):
            why = "as asked (no measured gains to predict from)"
        else:
            why = f"predicted k-NN gain +{self.predicted_gain:.1f} points, the most of the variants"
        return (
            f"chose recipe variant '{self.variant.name}' ({self.variant.describe()}; {self.layout.describe()}): "
            f"{self.step_seconds:.2f} s per step measured here, so ~{self.iterations} iterations in {budget:.0f} s, "
            f"{why}{' (' + others + ')' if others else ''}"
        )


def evaluation_sizes(
    seconds_per_image: float,
    seconds: float,
    train: int = 60000,
    test: int = 10000,
) -> tuple[int | None, int | None]:
    """(k-NN bank, queries) that two networks can embed in `seconds` at `seconds_per_image` (the forward pass
    as timed, times 2 for loading, the pixel features and the vote: two AVX2 demos' evaluations took 2.1x
    their timed forward passes): everything when it fits, else a random subset, 5 bank images per query,
    rounded down to hundreds (at least 1000 / 200)."""
    affordable = seconds / (2 * 2 * seconds_per_image)
    if affordable >= train + test:
        return None, None
    queries = min(test, max(200, int(affordable / 6) // 100 * 100))
    return min(train, max(1000, 5 * queries)), queries


def predicted_gain(variant: Variant, iterations: float) -> float:
    """k-NN gain after `iterations`: linear in log(iterations) between the measured points, flat beyond the
    last one (never extrapolated upwards), and shrinking in proportion below the first."""
    points = variant.gains
    if iterations <= points[0][0]:
        return points[0][1] * max(iterations, 0.0) / points[0][0]
    for (i0, g0), (i1, g1) in itertools.pairwise(points):
        if iterations <= i1:
            w = (math.log(iterations) - math.log(i0)) / (math.log(i1) - math.log(i0))
            return g0 + w * (g1 - g0)
    return points[-1][1]


def best_layout(compute: Mapping[Layout, float], loader_seconds: float, cores: int) -> tuple[Layout, float]:
    """The fastest layout and its step time. `compute`: measured compute seconds per step of each layout;
    `loader_seconds`: one core's seconds to augment a batch; `cores`: the cores free for the run. A worker
    on a core of its own overlaps its work with the step; workers beyond the free cores take their work's
    share of every core from the threads; without workers the step waits for the augmentation."""

    def step(layout: Layout, seconds: float) -> float:
        if layout.num_workers == 0:
            return seconds + loader_seconds
        if layout.threads + layout.num_workers <= cores:
            return max(seconds, loader_seconds / layout.num_workers)
        return seconds + loader_seconds / cores

    timed = {layout: step(layout, seconds) for layout, seconds in compute.items()}
    fastest = min(timed, key=timed.__getitem__)
    return fastest, timed[fastest]


def choose_variant(
    step_seconds: Mapping[str, tuple[Layout, float]], budget: float, variants: Sequence[Variant] = VARIANTS
) -> Choice:
    """The variant with the largest predicted gain in `budget` seconds, given each variant's (best
    layout, seconds per step) measured on this machine. Variants without measured gains are timed and
    listed but not chosen, unless no other is timed (a variant the user asked for)."""
    table = {}
    for variant in variants:
        if variant.name in step_seconds:
            seconds = step_seconds[variant.name][1]
            iterations = int(budget / seconds)
            gain = predicted_gain(variant, iterations) if variant.gains else math.nan
            table[variant.name] = (seconds, iterations, gain)
    eligible = [n for n in table if not math.isnan(table[n][2])] or list(table)[:1]
    name = max(eligible, key=lambda n: (table[n][2], -table[n][0]))
    variant = next(v for v in variants if v.name == name)
    seconds, iterations, gain = table[name]
    return Choice(variant, step_seconds[name][0], seconds, iterations, gain, table)


# ------------------------------------------------------------------------------------------- measuring
def trainer_namespace(flags: Mapping[str, Any]) -> argparse.Namespace:
    """What `build_student_teacher` / `build_loss` read of main_dino's arguments, for a recipe's flags
    (SimDINO's head and loss; the flags' own values win)."""
    defaults = {
        "use_simdino": True,
        "use_bn_in_head": False,
        "norm_last_layer": True,
        "out_dim": 65536,
        "expa_type": 1,
        "reduce_cov": 0,
        "freeze_last_layer": 0,
        "drop_path_rate": 0.0,
    }
    return argparse.Namespace(**{**defaults, **flags})


def synthetic_crops(flags: Mapping[str, Any], batch: int) -> list[torch.Tensor]:
    """Random images shaped like a batch of the recipe's crops: 2 global, then the local ones."""
    g, local = int(flags["global_crops_size"]), int(flags["local_crops_size"])
    return [torch.randn(batch, 3, g, g) for _ in range(2)] + [
        torch.randn(batch, 3, local, local) for _ in range(int(flags["local_crops_number"]))
    ]


def time_compute_step(flags: Mapping[str, Any], use_fp16: bool, batch: int = 64, steps: int = 1) -> float:
    """Seconds per image of one training step (student forward/backward on every crop, teacher forward,
    coding-rate loss, AdamW, EMA) of `flags`' network at `batch` images, on this process's torch threads:
    the fastest of `steps` timed steps after one warm-up step (the fastest, because other processes on a
    busy machine only ever slow a step down)."""
    args = trainer_namespace(flags)
    student, teacher = build_student_teacher(args)
    amp = resolve_amp(torch.device("cpu"), use_fp16)
    pair = MultiCropStudentTeacher(student, student, teacher, build_loss(args), amp, True, 0)
    optimizer = build_optimizer("adamw", param_groups(student))
    values = {"lr": 1e-4, "wd": 0.04, "mom": 0.99, "teacher_temp": 0.04, "epoch": 0}
    crops = synthetic_crops(flags, batch)
    pair.train()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        train_step(pair, optimizer, crops, values, clip_grad=3.0)
        times.append(time.perf_counter() - start)
    return min(times[1:]) / batch


def time_augmentation(flags: Mapping[str, Any], dataset: Dataset, images: int = 16) -> float:
    """Seconds per image of the recipe's multi-crop augmentation (one core), on the first `images`."""
    transform = DataAugmentationDINO(
        flags["global_crops_scale"],
        flags["local_crops_scale"],
        int(flags["local_crops_number"]),
        global_crops_size=int(flags["global_crops_size"]),
        local_crops_size=int(flags["local_crops_size"]),
        flat=True,
        blur="dino",
    )
    pictures = [dataset[i][0] for i in range(images)]
    start = time.perf_counter()
    for picture in pictures:
        transform(picture)
    return (time.perf_counter() - start) / images


def time_feature_extraction(flags: Mapping[str, Any], images: int = 128) -> float:
    """Seconds per image of the evaluation forward pass (fp32, no gradients) of `flags`' backbone."""
    backbone = build_student_teacher(trainer_namespace(flags))[1].backbone.eval()
    batch = torch.randn(images, 3, int(flags["global_crops_size"]), int(flags["global_crops_size"]))
    with torch.inference_mode():
        backbone(batch[:8])
        start = time.perf_counter()
        backbone(batch)
    return (time.perf_counter() - start) / images


def candidate_layouts(
    cores: int, bf16: bool, threads: int | None = None, num_workers: int | None = None
) -> list[Layout]:
    """Layouts worth timing on `cores` free cores: every core computing with one loader worker beside
    them, one core fewer computing (the worker gets its own core), and no worker; bf16 autocast where the
    CPU computes bf16, else fp32 (emulated bf16 is several times slower: not worth timing). `threads` /
    `num_workers` given by the user are kept."""
    thread_counts = [threads] if threads else sorted({cores, max(1, cores - 1)}, reverse=True)
    worker_counts = [num_workers] if num_workers is not None else [1, 0]
    return [Layout(t, w, bf16) for t in thread_counts for w in worker_counts]


def measure_machine(
    flags_of: Mapping[str, Mapping[str, Any]],
    dataset: Dataset,
    cores: int,
    bf16: bool,
    threads: int | None = None,
    num_workers: int | None = None,
) -> tuple[dict[str, tuple[Layout, float]], dict[str, float]]:
    """({variant: (fastest layout, seconds per step)}, {variant: evaluation seconds per image at that
    layout's threads}) on this machine.
    `flags_of`: each variant's main_dino flags, the first being the reference whose every candidate layout
    is timed; the others are timed at the reference's fastest layout and scaled by that ratio."""
    previous = torch.get_num_threads()
    try:
        names = list(flags_of)
        reference = flags_of[names[0]]
        per_image: dict[tuple[int, bool], float] = {}
        for layout in candidate_layouts(cores, bf16, threads, num_workers):
            if (layout.threads, layout.use_fp16) not in per_image:
                torch.set_num_threads(layout.threads)
                per_image[layout.threads, layout.use_fp16] = time_compute_step(reference, layout.use_fp16)
        layouts = candidate_layouts(cores, bf16, threads, num_workers)
        best: dict[str, tuple[Layout, float]] = {}
        for name in names:
            flags = flags_of[name]
            batch = int(flags["batch_size_per_gpu"])
            ratio = 1.0
            if name != names[0]:
                fastest = best[names[0]][0]
                torch.set_num_threads(fastest.threads)
                ratio = (
                    time_compute_step(flags, fastest.use_fp16) / per_image[fastest.threads, fastest.use_fp16]
                )
            compute = {
                layout: per_image[layout.threads, layout.use_fp16] * ratio * batch for layout in layouts
            }
            best[name] = best_layout(compute, time_augmentation(flags, dataset) * batch, cores)
        evaluation = {}
        for name in names:
            torch.set_num_threads(best[name][0].threads)
            evaluation[name] = time_feature_extraction(flags_of[name])
        return best, evaluation
    finally:
        torch.set_num_threads(previous)


# What the k-NN evaluation may take: with Python's start-up, the timing, the trainer's start and the figures
# (about 27 s on the AVX2 demo), `make demo` ends within 60 s of its 540 s budget.
EVAL_SECONDS = 20.0


@dataclass
class Plan:
    """What the demo runs on this machine, and what it measured to decide."""

    choice: Choice
    knn_sizes: tuple[int | None, int | None]
    eval_seconds_per_image: float
    probe_seconds: float


def plan_run(
    budget: float,
    dataset: Dataset,
    base: Mapping[str, Any],
    cores: int,
    bf16: bool,
    threads: int | None = None,
    num_workers: int | None = None,
    variant: str | None = None,
    variants: Sequence[Variant] = VARIANTS,
) -> Plan:
    """Time this machine (a few seconds) and choose: the variant (`variant`: that one only), the layout,
    the k-NN sizes that keep the evaluation within `EVAL_SECONDS`. `base`: the recipe's flags."""
    start = time.perf_counter()
    candidates = [v for v in variants if variant in (None, v.name)]
    flags_of = {v.name: {**base, **v.overrides} for v in candidates}
    step_seconds, eval_seconds = measure_machine(flags_of, dataset, cores, bf16, threads, num_workers)
    choice = choose_variant(step_seconds, budget, candidates)
    eval_seconds_per_image = eval_seconds[choice.variant.name]
    sizes = evaluation_sizes(eval_seconds_per_image, EVAL_SECONDS)
    return Plan(choice, sizes, eval_seconds_per_image, time.perf_counter() - start)


def plan_record(plan: Plan, budget: float) -> dict[str, Any]:
    """The `plan` entry of results.json: the variant, the layout, what was timed and predicted, and why."""
    choice = plan.choice
    return {
        "variant": choice.variant.name,
        "variant_overrides": {
            k: list(v) if isinstance(v, tuple) else v for k, v in choice.variant.overrides.items()
        },
        "layout": {
            "threads": choice.layout.threads,
            "num_workers": choice.layout.num_workers,
            "use_fp16": choice.layout.use_fp16,
        },
        "measured_step_seconds": choice.step_seconds,
        "predicted_iterations": choice.iterations,
        "predicted_gain": None if math.isnan(choice.predicted_gain) else choice.predicted_gain,
        "alternatives": {
            name: {"step_seconds": a[0], "iterations": a[1], "gain": None if math.isnan(a[2]) else a[2]}
            for name, a in choice.alternatives.items()
        },
        "eval_seconds_per_image": plan.eval_seconds_per_image,
        "timing_seconds": plan.probe_seconds,
        "reason": choice.reason(budget),
    }
