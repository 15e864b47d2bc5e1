"""Where the backbone is inside a checkpoint: layout detection, key extraction, prefix stripping.

Owns `extract_backbone` / `extract_backbone_state_dict` and `strip_wrapper_prefixes`. Layouts are
detected from the keys, never from the file name:
- v1 training checkpoints (the v1 trainer, DINO): `{"student", "teacher", "optimizer", "epoch",
  "args", ...}` whose state dicts are keyed `backbone.*` / `head.*`, possibly behind `module.` (DDP) and
  `_orig_mod.` (torch.compile) in any order;
- v2 teacher snapshots `{"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}` with chunked blocks;
- v2 DCP checkpoint directories (torch.distributed.checkpoint), e.g. `{"model": {"teacher.backbone.*",
  "student.backbone.*", ...}, "optimizer": ..., "iteration": ...}`; only the chosen backbone is read;
- plain backbone state dicts (DINO/DINOv2 naming, flat or chunked blocks), our `.pth`/`.safetensors`
  exports and timm-layout exports (see `timm_layout`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from .errors import CheckpointError
from .safe_load import dcp_load_flat, is_dcp_dir, read_dcp_metadata, safe_torch_load
from .timm_layout import from_timm_layout

# Prefix segments added by wrappers (torch.compile, DDP); they never name a real sub-module of the ViT.
_WRAPPER_SEGMENTS = ("_orig_mod", "module")
# Projection heads trained next to the backbone; a backbone load ignores (and reports) them.
_HEAD_ROOTS = ("head", "dino_head", "ibot_head")
# The tensor every ViT backbone has; its key prefix locates the backbone inside any container.
BACKBONE_MARKER = "patch_embed.proj.weight"
_ROLE_NAMES = ("teacher", "student")


def _normalize_key(key: str) -> str:
    """Drop `_orig_mod.` / `module.` segments wherever compile or DDP put them."""
    return ".".join(part for part in key.split(".") if part not in _WRAPPER_SEGMENTS)


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`state_dict` without the `module.` (DDP) and `_orig_mod.` (torch.compile) segments in its keys:
    the weights of a wrapped model, loadable into the bare one."""
    return {_normalize_key(key): value for key, value in state_dict.items()}


def _flatten(obj: Mapping[str, Any], prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": tensor}; non-tensor leaves (args, epoch, lists) are left out."""
    out = {} if out is None else out
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Tensor):
            out[name] = value
        elif isinstance(value, Mapping):
            _flatten(value, f"{name}.", out)
    return out


def _segments(prefix: str) -> list[str]:
    return [s for s in prefix.split(".") if s]


def _strip_backbone_suffix(prefix: str) -> str:
    """ "teacher.backbone." -> "teacher." (the root whose other children are heads)."""
    parts = _segments(prefix)
    while parts and parts[-1] == "backbone":
        parts.pop()
    return "".join(f"{p}." for p in parts)


def _describe_roots(prefixes: list[str]) -> str:
    return ", ".join(sorted(repr(_strip_backbone_suffix(p).rstrip(".") or "<top level>") for p in prefixes))


@dataclass
class ExtractedBackbone:
    """A backbone found in a checkpoint: its tensors and where they came from."""

    state_dict: dict[str, Tensor]
    skipped: list[str]
    layout: str
    entry: str  # where the backbone was found, e.g. "teacher" or "model.teacher"
    source: str
    notes: list[str] = field(default_factory=list)


def _choose_prefix(prefixes: list[str], checkpoint_key: str, source: str) -> str:
    matching = [p for p in prefixes if checkpoint_key in _segments(p)]
    if not matching:
        if any(set(_segments(p)) & set(_ROLE_NAMES) for p in prefixes):
            raise CheckpointError(
                f"{source} has no {checkpoint_key!r} weights; backbones found under: "
                f"{_describe_roots(prefixes)}; pass checkpoint_key= one of those"
            )
        matching = prefixes  # a plain backbone, {"model": ...}, {"state_dict": ...}: the key is moot
    if len(matching) > 1:  # e.g. a head's "mlp.0.weight" next to a backbone's: the backbone wins
        named = [p for p in matching if "backbone" in _segments(p)]
        matching = named if len(named) == 1 else matching
    if len(matching) > 1:
        raise CheckpointError(
            f"{source}: several backbones match {checkpoint_key!r} ({_describe_roots(matching)}); "
            "pass checkpoint_key='teacher' or 'student'"
        )
    return matching[0]


def _layout_name(top_level: list[str], entry: str, is_dcp: bool, converted_timm: bool) -> str:
    if is_dcp:
        return "DCP checkpoint"
    top = set(top_level)
    if top & {"args", "epoch", "optimizer"} and top & set(_ROLE_NAMES):
        return "v1 training checkpoint"
    if top == {"teacher"}:
        return "v2 teacher snapshot"
    if not entry:
        return "timm-layout state dict" if converted_timm else "backbone state dict"
    return f"checkpoint entry {entry!r}"


def _tensor_catalogue(obj: Any) -> tuple[str, dict[str, Any], list[str], tuple[pathlib.Path, Any] | None]:
    """(source, {flat key: tensor}, top-level keys, (path, metadata) of a DCP directory or None) of a module,
    a state dict, a checkpoint file or a DCP directory. A DCP directory is only catalogued here (its
    tensors are None until `dcp_load_flat` reads the wanted ones)."""
    source = "checkpoint object"
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, (str, os.PathLike)):
        path = pathlib.Path(obj).expanduser()
        source = str(path)
        if is_dcp_dir(path):
            metadata = read_dcp_metadata(path)
            flat = {
                fqn: None
                for fqn, meta in metadata.state_dict_metadata.items()
                if isinstance(meta, TensorStorageMetadata)
            }
            return (
                source,
                flat,
                sorted({fqn.split(".")[0] for fqn in metadata.state_dict_metadata}),
                (path, metadata),
            )
        obj = safe_torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(obj).__name__}, not a state dict or checkpoint dict; "
            "pass a checkpoint file, a DCP directory or a state dict"
        )
    return source, _flatten(obj), sorted(str(k) for k in obj), None


def _backbone_and_skipped(
    values: dict[str, Any], prefix: str, root: str
) -> tuple[dict[str, Tensor], list[str]]:
    """The tensors under `prefix` without it (the backbone's state dict), and the names of the others
    under `root` (heads, the other role) that are skipped."""
    state_dict: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in values.items():
        if key.startswith(prefix):
            short = key[len(prefix) :]
            if short.split(".")[0] in _HEAD_ROOTS:
                skipped.append(short)
            else:
                state_dict[short] = value
        else:
            skipped.append(key[len(root) :])
    return state_dict, skipped


def extract_backbone(
    obj: Any,
    checkpoint_key: str = "teacher",
    marker: str = BACKBONE_MARKER,
    required: list[str] | None = None,
) -> ExtractedBackbone:
    """Find the backbone in any supported container (see the module docstring for the layouts).

    `marker` is the key that locates the backbone (a ViT's `patch_embed.proj.weight`); with `required`
    (all key names of a non-ViT model), only prefixes under which every one of them exists qualify."""
    source, flat_original, top_level, lazy_dcp = _tensor_catalogue(obj)
    normalized = {_normalize_key(key): key for key in flat_original}
    prefixes = sorted(
        {key[: -len(marker)] for key in normalized if key == marker or key.endswith(f".{marker}")}
    )
    if required:
        complete = [p for p in prefixes if all(f"{p}{name}" in normalized for name in required)]
        prefixes = complete or prefixes  # none complete: keep them so the strict load names what is missing
    if not prefixes:
        shown = ", ".join(top_level[:8]) + (", ..." if len(top_level) > 8 else "")
        raise CheckpointError(
            f"unknown checkpoint layout in {source}: no {marker!r} tensor among {len(flat_original)} tensors "
            f"(top-level keys: {shown or 'none'}); expected a DINO/SimDINO checkpoint, a teacher snapshot, "
            "a DCP directory or a backbone state dict"
        )
    prefix = _choose_prefix(prefixes, checkpoint_key, source)
    root = _strip_backbone_suffix(prefix)
    wanted = [key for key in normalized if key.startswith(root)]
    if lazy_dcp is not None:
        path, metadata = lazy_dcp
        loaded = dcp_load_flat(path, metadata, [normalized[key] for key in wanted])
        values = {key: loaded[normalized[key]] for key in wanted}
    else:
        values = {key: flat_original[normalized[key]] for key in wanted}

    state_dict, skipped = _backbone_and_skipped(values, prefix, root)
    converted = False
    if marker == BACKBONE_MARKER:
        state_dict, converted = from_timm_layout(state_dict)
    entry = root.rstrip(".")
    return ExtractedBackbone(
        state_dict=state_dict,
        skipped=skipped,
        layout=_layout_name(top_level, entry, lazy_dcp is not None, converted),
        entry=entry,
        source=source,
    )


def extract_backbone_state_dict(
    obj: Any, checkpoint_key: str = "teacher"
) -> tuple[dict[str, Tensor], list[str]]:
    """(backbone state dict, skipped keys) from a path, DCP directory, checkpoint dict or state dict.

    Picks `checkpoint_key` (`teacher` by default; `student`, `model`... on request) where the container
    holds several backbones, strips `_orig_mod.` / `module.` / `backbone.` prefixes, and leaves out the
    head keys (`head.*`, `dino_head.*`, `ibot_head.*`), which are returned as skipped. Block names keep
    the source layout (flat or chunked); `load_backbone_weights` maps them to the model's.
    """
    extracted = extract_backbone(obj, checkpoint_key)
    return extracted.state_dict, extracted.skipped


__all__ = [
    "BACKBONE_MARKER",
    "ExtractedBackbone",
    "extract_backbone",
    "extract_backbone_state_dict",
    "strip_wrapper_prefixes",
]
