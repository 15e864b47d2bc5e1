"""The frozen backbone an evaluation runs on, for the eval programs of both trees.

The checkpoint decides the architecture: width, depth, patch size, registers, LayerScale, FFN and block
chunks are read from its tensors by the shared checkpoint loader, so a v1 `checkpoint.pth` evaluates
with the v2 tools and a v2 `teacher_checkpoint.pth` with the v1 scripts. Flags may *state* parts of the
architecture (v1 `--arch/--patch_size`, v2 `--opts student.*=...`); a statement that contradicts the
weights is refused with one line naming the flag to change. A config file describing another model
(e.g. the repository's `simdino_config.yaml` used with a v1 checkpoint) only earns a log line: the
weights are what is evaluated.

Also reads what a v1 training checkpoint remembers of its run (`args`: the training crop size).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simdinov2.checkpoint import (
    CheckpointError,
    build_backbone_from_checkpoint,
    describe_vit_config,
    extract_backbone_state_dict,
    infer_vit_config,
    safe_torch_load,
)
from simdinov2.errors import MissingFileError, UserError
from simdinov2.models import build_vit

logger = logging.getLogger("simdinov2")

# The details printed when describing a checkpoint's architecture.
SHOWN_FIELDS = ("embed_dim", "depth", "num_register_tokens", "init_values", "ffn_layer")


def read_checkpoint(path: str) -> Any:
    """The checkpoint at `path` read once (safely): its object for a file, the path itself for a DCP
    directory (read lazily by the loader). One line when the path does not exist."""
    if not path:
        raise UserError("no checkpoint given: pass the weights to evaluate (e.g. OUTPUT_DIR/checkpoint.pth)")
    if os.path.isdir(path):
        return path
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint {path} does not exist")
    return safe_torch_load(path)


def training_args(checkpoint: Any) -> dict[str, Any]:
    """The `args` a v1 training checkpoint (main_dino.py, DINO) stores, as a dict; {} for other layouts."""
    if not isinstance(checkpoint, Mapping):
        return {}
    args = checkpoint.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def training_crop_size(checkpoint: Any) -> int | None:
    """The global crop size the checkpoint was trained at, when its `args` say (v1 runs of this
    repository; upstream v1 trained at 224 and stored no crop size)."""
    size = training_args(checkpoint).get("global_crops_size")
    return int(size) if isinstance(size, int) and size > 0 else None


def _agrees(field: str, weights: Any, stated: Any) -> bool:
    if field == "init_values":  # LayerScale present or not; its value is a weight
        return bool(weights) == bool(stated)
    if field == "mlp_ratio":
        return math.isclose(float(weights), float(stated), rel_tol=1e-6)
    return weights == stated


def differing_fields(weights: Mapping[str, Any], stated: Mapping[str, Any]) -> list[str]:
    """The architecture fields in `stated` that the weights' config contradicts."""
    return [f for f, value in stated.items() if f in weights and not _agrees(f, weights[f], value)]


def describe(config: Mapping[str, Any], fields: tuple[str, ...] = SHOWN_FIELDS) -> str:
    return describe_vit_config(config, tuple(dict.fromkeys(("embed_dim", *fields))))


def arch_fields(arch: str, patch_size: int | None = None, **vit_kwargs: Any) -> dict[str, Any]:
    """The architecture fields of the ViT an arch name (and options) builds, without allocating it."""
    with torch.device("meta"):
        model = build_vit(arch, patch_size=patch_size or 16, **vit_kwargs)
    return infer_vit_config(model.state_dict())


def refuse_contradiction(
    weights: Mapping[str, Any], stated: Mapping[str, Any], flag: str, fix: str, source: str
) -> None:
    """One-line error when `flag` (as the user wrote it) states fields the weights contradict; `fix`
    is the flag spelt for the checkpoint."""
    differing = differing_fields(weights, stated)
    if differing:
        raise CheckpointError(
            f"{flag} contradicts the checkpoint {source}, which holds {describe(weights, tuple(differing))}: "
            f"drop {flag.split()[0]} (the architecture is then read from the checkpoint) or pass {fix}"
        )


def check_v1_arch_flags(
    arch: str | None, patch_size: int | None, source: str
) -> Callable[[dict[str, Any]], None]:
    """check(weights) refusing v1-style `--arch` / `--patch_size` values the weights contradict. An arch
    names the width: the depth is the checkpoint's (e.g. a `main_dino.py --depth 6` run)."""

    def check(weights: dict[str, Any]) -> None:
        if arch is not None:
            matching = weights["arch"] or f"(no standard arch has width {weights['embed_dim']})"
            refuse_contradiction(
                weights,
                {"embed_dim": arch_fields(arch)["embed_dim"]},
                f"--arch {arch}",
                f"--arch {matching}",
                source,
            )
        if patch_size is not None:
            refuse_contradiction(
                weights,
                {"patch_size": patch_size},
                f"--patch_size {patch_size}",
                f"--patch_size {weights['patch_size']}",
                source,
            )

    return check


def build_eval_backbone(
    checkpoint: Any,
    checkpoint_key: str = "teacher",
    source: str = "",
    check: Callable[[dict[str, Any]], None] | None = None,
    **vit_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """(frozen ViT in eval mode, its architecture config) built from the checkpoint's own tensors and
    loaded strictly. `check(config)` runs on the weights' architecture before anything is built (to
    refuse flags that contradict it); `vit_kwargs` are forward-time options the weights do not record
    (interpolate_offset, interpolate_antialias)."""
    state_dict, skipped = extract_backbone_state_dict(checkpoint, checkpoint_key)
    config = infer_vit_config(state_dict)
    if check is not None:
        check(config)
    model = build_backbone_from_checkpoint(state_dict, verbose=False, **vit_kwargs)
    model.requires_grad_(False)
    model.eval()
    ignored = sorted({key.split(".")[0] for key in skipped})
    logger.info(
        "backbone %s built from the checkpoint %s (entry %r)%s",
        describe(config),
        source or "object",
        checkpoint_key,
        f"; ignored {', '.join(k + '.*' for k in ignored)}" if ignored else "",
    )
    return model, config


def default_output_dir(weights: str, name: str) -> str:
    """`<folder of the weights>/<name>`: an evaluation's files sit next to what it evaluated (never in
    the current directory, which may be the repository)."""
    return str(Path(weights).expanduser().resolve().parent / name)


__all__ = [
    "arch_fields",
    "build_eval_backbone",
    "check_v1_arch_flags",
    "default_output_dir",
    "describe",
    "differing_fields",
    "read_checkpoint",
    "refuse_contradiction",
    "training_args",
    "training_crop_size",
]
