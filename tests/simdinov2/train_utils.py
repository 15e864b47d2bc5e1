"""Helpers of the v2 training tests: tiny configurations, synthetic collated batches, a few training
steps through the real `train_step`, and the worker that repeats them under DDP / FSDP in 2 processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO_ROOT / "simdinov2" / "train" / "train.py"
SIMDINO_CONFIG = str(REPO_ROOT / "simdinov2" / "configs" / "simdino_config.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(args: list[str], nproc: int | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The training CLI in a subprocess: `torchrun --nproc_per_node=N train.py ...` or `python train.py ...`."""
    # faulthandler: should a rank ever die of a signal (e.g. SIGABRT at exit), its Python stack is printed.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONFAULTHANDLER="1")
    if nproc:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}",
        ]
    else:
        launcher = [sys.executable]
    return subprocess.run(
        [*launcher, str(TRAIN_SCRIPT), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Smallest useful model and crops: vit_tiny/4 on 16-px global and 8-px local crops, small heads.
TINY_OVERRIDES = [
    "student.arch=vit_tiny",
    "student.patch_size=4",
    "student.drop_path_rate=0",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "crops.local_crops_number=2",
    "student.num_register_tokens=0",
    "dino.head_hidden_dim=64",
    "dino.head_bottleneck_dim=32",
    "ibot.head_hidden_dim=64",
    "ibot.head_bottleneck_dim=32",
    "train.num_workers=0",
]


def fp32_overrides() -> list[str]:
    """Every module computes in fp32 (exact comparisons between sharding modes)."""
    out = []
    for model in ("student", "teacher"):
        for module in ("backbone", "dino_head", "ibot_head"):
            out.append(f"compute_precision.{model}.{module}.mixed_precision.param_dtype=fp32")
    for module in ("backbone", "dino_head", "ibot_head"):
        out.append(f"compute_precision.student.{module}.mixed_precision.reduce_dtype=fp32")
    return out


def tiny_cfg(config_file: str = "simdino_config", extra: list[str] | None = None) -> Any:
    from simdinov2.configs import get_cfg

    return get_cfg(config_file, TINY_OVERRIDES + fp32_overrides() + list(extra or []))


def synthetic_images(n_images: int, first_id: int, cfg: Any) -> list[dict[str, torch.Tensor]]:
    """Per-image crops and iBOT masks, each a pure function of the image id."""
    g, l = int(cfg.crops.global_crops_size), int(cfg.crops.local_crops_size)
    n_local = int(cfg.crops.local_crops_number)
    grid = g // int(cfg.student.patch_size)
    images = []
    for image_id in range(first_id, first_id + n_images):
        gen = torch.Generator().manual_seed(1000 + image_id)
        masks = torch.zeros(2, grid * grid, dtype=torch.bool)
        n_masked = 2 + image_id % 5
        masks[image_id % 2, torch.randperm(grid * grid, generator=gen)[:n_masked]] = True
        images.append(
            {
                "global": torch.randn(2, 3, g, g, generator=gen),
                "local": torch.randn(n_local, 3, l, l, generator=gen),
                "masks": masks,
            }
        )
    return images


def collate(images: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """The trainer's batch layout (crop-major, as `collate_data_and_cast`) from per-image tensors."""
    n_global = images[0]["global"].shape[0]
    n_local = images[0]["local"].shape[0]
    global_crops = torch.stack([im["global"][k] for k in range(n_global) for im in images])
    if n_local:
        local_crops = torch.stack([im["local"][k] for k in range(n_local) for im in images])
    else:
        local_crops = global_crops.new_empty((0, *images[0]["local"].shape[1:]))
    masks = torch.stack([im["masks"][k] for k in range(n_global) for im in images])
    mask_indices = masks.flatten().nonzero().flatten()
    per_crop = masks.sum(-1, keepdim=True).clamp(min=1).float()
    return {
        "collated_global_crops": global_crops,
        "collated_local_crops": local_crops,
        "collated_masks": masks,
        "mask_indices_list": mask_indices,
        "masks_weight": (1.0 / per_crop).expand_as(masks)[masks],
        "upperbound": int(mask_indices.numel()),
        "n_masked_patches": torch.tensor([mask_indices.numel()]),
    }


STEP_VALUES = {
    "lr": 2e-3,
    "wd": 0.04,
    "last_layer_lr": 2e-3,
    "mom": 0.9,
    "teacher_temp": 0.07,
    "ibot_loss_weight": 1.0,
}


def run_steps(
    cfg: Any, batches: list[dict[str, Any]], values: dict[str, float] | None = None
) -> dict[str, Any]:
    """Build the model as train.py does, run one `train_step` per batch; the losses and the full teacher
    before and after."""
    from simdinov2.checkpoint import full_state_dict
    from simdinov2.train import train as train_module
    from simdinov2.train.recipe_keys import build_optimizer_by_name

    model = train_module.build_model(cfg)
    optimizer = build_optimizer_by_name(str(cfg.optim.opt), model.get_params_groups(), cfg.optim.kwargs)
    initial_teacher = full_state_dict(model.teacher)
    losses = []
    for batch in batches:
        losses.append(
            train_module.train_step(
                model, optimizer, batch, dict(values or STEP_VALUES), float(cfg.optim.clip_grad)
            )
        )
    return {"losses": losses, "teacher": full_state_dict(model.teacher), "initial_teacher": initial_teacher}


# Images per step and steps of the sharding-equivalence comparison.
EQUIV_IMAGES_PER_STEP = 4
EQUIV_STEPS = 3
EQUIV_EXTRA = ["dino.mcr.reduce_cov=1", "optim.clip_grad=0.5"]


def equivalence_batches(cfg: Any, rank: int, world_size: int) -> list[dict[str, Any]]:
    """Rank `rank`'s share of every step's images (all of them for world_size 1)."""
    per_rank = EQUIV_IMAGES_PER_STEP // world_size
    batches = []
    for step in range(EQUIV_STEPS):
        first = step * EQUIV_IMAGES_PER_STEP + rank * per_rank
        batches.append(collate(synthetic_images(per_rank, first, cfg)))
    return batches


def sharding_worker(rank: int, world_size: int, port: int, out_dir: str, modes: list[str]) -> None:
    """torch.multiprocessing entry: the equivalence steps under each sharding mode; rank 0 saves them."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from simdinov2 import distributed

    distributed.init_distributed("cpu")
    try:
        for mode in modes:
            cfg = tiny_cfg(extra=EQUIV_EXTRA + [f"train.sharding={mode}"])
            result = run_steps(cfg, equivalence_batches(cfg, rank, world_size))
            if rank == 0:
                torch.save(result["teacher"], Path(out_dir) / f"teacher_{mode}.pt")
                (Path(out_dir) / f"losses_{mode}.json").write_text(json.dumps(result["losses"]))
    finally:
        distributed.destroy()
