"""The demo recipe: main_dino flags, the command line that reproduces a run, and training for a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simdino.run import trainer as v1_trainer

DEFAULT_SECONDS = 540.0

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
#   (`simdinov2.precision.cpu_has_bf16`).
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


def recipe_flags(
    seconds: float, output_dir: str | Path, train_source: str, num_workers: int = 1, **overrides: Any
) -> dict[str, Any]:
    """main_dino's flags for the demo recipe trained for `seconds` (any flag can be overridden; main_dino
    refuses one it does not have)."""
    return {
        **DEMO_RECIPE,
        **overrides,
        "time_budget": float(seconds),
        "data_path": train_source,
        "output_dir": str(output_dir),
        "num_workers": int(num_workers),
    }


def recipe_command(flags: dict[str, Any]) -> str:
    """The `python simdino/main_dino.py ...` command line that reproduces a run of `flags`."""
    return v1_trainer.command_line(flags)


def train_for_budget(flags: dict[str, Any]) -> dict[str, Any]:
    """Run main_dino with `flags` (its time budget included) on this process's torch threads; returns its
    summary (`simdino.run.trainer.run_summary`: iterations, images_seen, train_seconds, epochs, args)."""
    return v1_trainer.train(flags)
