"""How the v2 student and teacher are spread over processes (their checkpoints: `simdinov2.checkpoint.dcp`).

- `resolve_sharding`: `train.sharding` (`auto | fsdp | ddp | none`) for this launch.
- `shard_module`: FSDP2 (`fully_shard`) with one unit per transformer block plus one for the rest of
  the module, and a `MixedPrecisionPolicy` from that module's `compute_precision` entry.
- `wrap_ddp`: torch DDP for a student module (the teacher needs no wrapper: it has no gradients and
  its EMA update is identical on every rank).
- `resolve_dtype`: re-exported from `simdinov2.precision` (config dtype names).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from simdinov2 import distributed
from simdinov2.precision import resolve_dtype

logger = logging.getLogger("simdinov2")

SHARDING_MODES = ("auto", "fsdp", "ddp", "none")
_RESHARD_AFTER_FORWARD = {"SHARD_GRAD_OP": False, "FULL_SHARD": True}

# Our backbone returns views (x_norm[:, 0], ...) and never edits them in place, which is the case
# this FSDP2 warning is about.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

__all__ = [
    "SHARDING_MODES",
    "mixed_precision_policy",
    "resolve_dtype",
    "resolve_sharding",
    "shard_module",
    "wrap_ddp",
]


def resolve_sharding(requested: str, world_size: int) -> str:
    """The sharding mode of this launch: `auto` is fsdp with several processes, none with one."""
    if requested not in SHARDING_MODES:
        raise ValueError(f"train.sharding={requested!r} is not one of {', '.join(SHARDING_MODES)}")
    if requested == "auto":
        return "fsdp" if world_size > 1 else "none"
    if requested == "none" and world_size > 1:
        raise ValueError(
            f"train.sharding=none cannot train with {world_size} processes (their models would drift apart): "
            "use train.sharding=fsdp or ddp, or launch a single process"
        )
    if requested in ("fsdp", "ddp") and not distributed.is_enabled():
        logger.info(
            "train.sharding=%s needs a process group (torchrun / SLURM); single process: none", requested
        )
        return "none"
    return requested


def mixed_precision_policy(precision_cfg: Any, device: torch.device):
    """FSDP2 `MixedPrecisionPolicy` from a `compute_precision.<model>.<module>` entry (fp32 = no cast)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    mp = precision_cfg.get("mixed_precision", {}) if precision_cfg is not None else {}
    param_dtype = resolve_dtype(mp.get("param_dtype", "fp32"), device)
    reduce_dtype = resolve_dtype(mp.get("reduce_dtype", "fp32"), device)
    return MixedPrecisionPolicy(
        param_dtype=None if param_dtype == torch.float32 else param_dtype,
        reduce_dtype=None if reduce_dtype == torch.float32 else reduce_dtype,
    )


def _device_mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (distributed.get_world_size(),))


def shard_module(
    module: nn.Module, precision_cfg: Any, device: torch.device, reshard_after_forward: bool | None = None
) -> nn.Module:
    """FSDP2: `fully_shard` every transformer block of `module` (if it has any), then the module itself.

    Per-block units let FSDP gather one block's parameters at a time (and overlap the next gather with
    compute); the root unit holds the embeddings, tokens and final norm, or a whole head.
    `reshard_after_forward` defaults to the entry's `sharding_strategy` (SHARD_GRAD_OP: keep gathered
    until the backward).
    """
    from torch.distributed.fsdp import fully_shard

    if reshard_after_forward is None:
        strategy = (
            str(precision_cfg.get("sharding_strategy", "SHARD_GRAD_OP"))
            if precision_cfg is not None
            else "SHARD_GRAD_OP"
        )
        if strategy not in _RESHARD_AFTER_FORWARD:
            raise ValueError(
                f"sharding_strategy={strategy!r} is not supported with FSDP2: use SHARD_GRAD_OP or FULL_SHARD"
            )
        reshard_after_forward = _RESHARD_AFTER_FORWARD[strategy]
    mesh = _device_mesh(device)
    policy = mixed_precision_policy(precision_cfg, device)
    blocks = module.block_list() if hasattr(module, "block_list") else []
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return module


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """torch DDP around one student module (gradients averaged over processes during the backward)."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)
