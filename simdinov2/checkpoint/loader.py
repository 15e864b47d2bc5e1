"""Loading a backbone from any checkpoint into a model, or building the model a checkpoint describes.

Owns `load_backbone_weights` (architecture checked first, block layout mapped, position grid taken from
the weights, strict load, a `LoadReport` logged as one line) and `build_backbone_from_checkpoint`.
Finding the backbone is `layouts`, reading files safely is `safe_load`, shapes -> arch is `infer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from simdinov2.distributed import is_main_process
from simdinov2.models.vision_transformer import (
    ARCH_SPECS,
    DinoVisionTransformer,
    remap_block_keys,
    vit_from_arch,
)

from .errors import CheckpointError
from .infer import config_mismatch, describe_vit_config, infer_vit_config
from .layouts import ExtractedBackbone, extract_backbone

logger = logging.getLogger("simdinov2")


@dataclass
class LoadReport:
    """What `load_backbone_weights` did: where the weights came from and what was left out."""

    source: str
    layout: str
    entry: str
    loaded: list[str]
    skipped_keys: list[str]
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        entry = f" {self.entry!r}" if self.entry else ""
        parts = [f"loaded {len(self.loaded)} tensors from {self.layout}{entry} ({self.source})"]
        if self.skipped_keys:
            groups: dict[str, int] = {}
            for key in self.skipped_keys:
                groups[key.split(".")[0]] = groups.get(key.split(".")[0], 0) + 1
            parts.append("ignored " + ", ".join(f"{root}.* ({n})" for root, n in sorted(groups.items())))
        if self.missing_keys:
            parts.append(f"missing {len(self.missing_keys)}: {', '.join(self.missing_keys[:4])}")
        if self.unexpected_keys:
            parts.append(f"unexpected {len(self.unexpected_keys)}: {', '.join(self.unexpected_keys[:4])}")
        parts += self.notes
        return "; ".join(parts)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile / DDP wrappers (their state-dict prefixes are stripped)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _load_into(model: nn.Module, extracted: ExtractedBackbone, strict: bool, verbose: bool) -> LoadReport:
    state_dict = dict(extracted.state_dict)
    notes = list(extracted.notes)
    target = _unwrap(model)
    if isinstance(target, DinoVisionTransformer):
        ckpt_cfg = infer_vit_config(state_dict)
        model_cfg = infer_vit_config(target.state_dict())
        differing = config_mismatch(ckpt_cfg, model_cfg)
        if differing:
            fields = tuple(dict.fromkeys(("embed_dim", *differing)))
            raise CheckpointError(
                f"checkpoint is {describe_vit_config(ckpt_cfg, fields)} but model is "
                f"{describe_vit_config(model_cfg, fields)} ({extracted.source}); build the matching model "
                "(e.g. build_backbone_from_checkpoint) or pick the right arch/patch_size"
            )
        if state_dict["pos_embed"].shape != target.pos_embed.shape:
            # The grid a model was trained at is a property of its weights, not of the architecture: take
            # the checkpoint's (the forward interpolates it to any input size), so the function is unchanged.
            old_img = model_cfg["img_size"]
            target.pos_embed = nn.Parameter(
                torch.empty(
                    state_dict["pos_embed"].shape,
                    dtype=target.pos_embed.dtype,
                    device=target.pos_embed.device,
                )
            )
            target.img_size = target.patch_embed.img_size = ckpt_cfg["img_size"]
            target.patch_embed.grid_size = ckpt_cfg["img_size"] // ckpt_cfg["patch_size"]
            target.patch_embed.num_patches = target.patch_embed.grid_size**2
            notes.append(f"pos_embed grid of img_size {ckpt_cfg['img_size']} replaced the model's {old_img}")
        if target.mask_token is None and "mask_token" in state_dict:
            state_dict.pop("mask_token")
            extracted.skipped.append("mask_token")
        elif target.mask_token is not None and "mask_token" not in state_dict:
            state_dict["mask_token"] = target.mask_token.detach().clone()
            notes.append("mask_token not in checkpoint (kept its initial value; only iBOT masking uses it)")
        state_dict = remap_block_keys(state_dict, target)
    try:
        result = target.load_state_dict(state_dict, strict=strict)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = " ".join(lines[1:4]) if len(lines) > 1 else lines[0] if lines else "state dict mismatch"
        raise CheckpointError(
            f"weights from {extracted.source} do not fit {type(target).__name__}: {detail[:400]}"
        ) from None
    report = LoadReport(
        source=extracted.source,
        layout=extracted.layout,
        entry=extracted.entry,
        loaded=[k for k in state_dict if k not in result.unexpected_keys],
        skipped_keys=list(extracted.skipped),
        missing_keys=list(result.missing_keys),
        unexpected_keys=list(result.unexpected_keys),
        notes=notes,
    )
    if verbose and is_main_process():
        logger.info("%s", report.summary())
    return report


def load_backbone_weights(
    model: nn.Module,
    path_or_obj: Any,
    checkpoint_key: str = "teacher",
    strict: bool = True,
    verbose: bool = True,
) -> LoadReport:
    """Load the backbone of any supported checkpoint into `model` and report what was skipped.

    For our ViT, the checkpoint's architecture is checked first (a mismatch is one `CheckpointError`
    line naming both), block names are mapped to the model's flat/chunked layout, the position
    embedding grid is taken from the checkpoint, and the load is strict. Other modules (torchvision
    backbones of the v1 scripts) are located by their first parameter name and loaded as they are.
    """
    target = _unwrap(model)
    if isinstance(target, DinoVisionTransformer):
        extracted = extract_backbone(path_or_obj, checkpoint_key)
    else:
        names = list(target.state_dict())
        if not names:
            raise CheckpointError(f"{type(target).__name__} has no parameters to load")
        extracted = extract_backbone(path_or_obj, checkpoint_key, marker=names[0], required=names)
    return _load_into(model, extracted, strict=strict, verbose=verbose)


def build_backbone_from_checkpoint(
    path_or_obj: Any, checkpoint_key: str = "teacher", *, verbose: bool = True, **overrides: Any
) -> DinoVisionTransformer:
    """Build the ViT a checkpoint describes (arch, patch, registers, LayerScale, FFN, chunks inferred) and
    load it strictly. `overrides` are `DinoVisionTransformer` kwargs (e.g. drop_path_rate) or `arch=`;
    an override that contradicts the weights (arch, patch_size, ...) raises the mismatch error."""
    extracted = extract_backbone(path_or_obj, checkpoint_key)
    config = infer_vit_config(extracted.state_dict)
    arch = overrides.pop("arch", None)
    kwargs = {k: v for k, v in config.items() if k != "arch"}
    if arch is not None:
        if arch not in ARCH_SPECS:
            raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCH_SPECS)}")
        spec = ARCH_SPECS[arch]
        expected = dict(config, arch=arch, embed_dim=spec.embed_dim, depth=spec.depth)
        expected["patch_size"] = overrides.get("patch_size", config["patch_size"])
        differing = [f for f in ("patch_size", "embed_dim", "depth") if expected[f] != config[f]]
        if differing:  # say so before building a model that cannot take these weights
            fields = tuple(dict.fromkeys(("embed_dim", *differing)))
            raise CheckpointError(
                f"checkpoint is {describe_vit_config(config, fields)} but model is "
                f"{describe_vit_config(expected, fields)} ({extracted.source}); pick the entry/arch that "
                "matches the weights"
            )
        for dim_key in ("embed_dim", "depth", "num_heads", "mlp_ratio"):
            kwargs.pop(dim_key)  # the arch table sets these; a contradiction shows up at load time
        kwargs.update(overrides)
        model = vit_from_arch(arch, **kwargs)
    else:
        if kwargs["num_heads"] is None and "num_heads" not in overrides:
            raise CheckpointError(
                f"cannot infer num_heads for embed_dim {config['embed_dim']} (not one of {', '.join(ARCH_SPECS)}); "
                "pass num_heads="
            )
        kwargs.update(overrides)
        model = DinoVisionTransformer(**kwargs)
    _load_into(model, extracted, strict=True, verbose=verbose)
    return model


__all__ = ["LoadReport", "build_backbone_from_checkpoint", "load_backbone_weights"]
