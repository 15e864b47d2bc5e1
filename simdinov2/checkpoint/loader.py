"""One loader for every checkpoint layout that holds a DINO / DINOv2 / SimDINO ViT backbone.

Owns: safe unpickling (`safe_torch_load`), layout detection and backbone extraction
(`extract_backbone_state_dict`), architecture inference from tensor shapes (`infer_vit_config`), and
strict loading with a report (`load_backbone_weights`, `build_backbone_from_checkpoint`).

Layouts understood (detected from the keys, never from the file name):
- v1 training checkpoints (`simdino/main_dino.py`, DINO): `{"student", "teacher", "optimizer", "epoch",
  "args", ...}` whose state dicts are keyed `backbone.*` / `head.*`, possibly behind `module.` (DDP) and
  `_orig_mod.` (torch.compile) in any order;
- v2 teacher snapshots `{"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}` with chunked blocks;
- v2 DCP checkpoint directories (torch.distributed.checkpoint), e.g. `{"model": {"teacher.backbone.*",
  "student.backbone.*", ...}, "optimizer": ..., "iteration": ...}`; only the chosen backbone is read;
- plain backbone state dicts (DINO/DINOv2 naming, flat or chunked blocks), our `.pth`/`.safetensors`
  exports and timm-layout exports (`reg_token`, position embedding without the CLS slot, packed SwiGLU).

Safety: every pickle goes through `torch.load(weights_only=True)` (or a restricted unpickler for DCP
metadata) with an allow-list of the few plain types old checkpoints contain (argparse.Namespace, paths,
numpy scalars). A file that would import or call anything else is refused before anything runs.
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import os
import pathlib
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from simdinov2.models.vision_transformer import ARCHS, DinoVisionTransformer, remap_block_keys

# Prefix segments added by wrappers (torch.compile, DDP); they never name a real sub-module of the ViT.
_WRAPPER_SEGMENTS = ("_orig_mod", "module")
# Projection heads trained next to the backbone; a backbone load ignores (and reports) them.
_HEAD_ROOTS = ("head", "dino_head", "ibot_head")
# The tensor every ViT backbone has; its key prefix locates the backbone inside any container.
_BACKBONE_MARKER = "patch_embed.proj.weight"
_ROLE_NAMES = ("teacher", "student")

_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_FLAT_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message is one line naming the problem and the fix."""


# ---------------------------------------------------------------------------------------------- safe load
@functools.cache
def _safe_globals() -> list[Any]:
    """Non-tensor types that released and our own checkpoints legitimately pickle.

    `args` of v1 checkpoints is an argparse.Namespace (values may be paths); very old checkpoints may
    hold numpy scalars (e.g. a best accuracy). Entries are `obj` or `(obj, "pickled.name")` so a
    checkpoint written under numpy 1 (`numpy.core...`) also loads under numpy 2 (`numpy._core...`).
    """
    allowed: list[Any] = [
        argparse.Namespace,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
    ]
    try:
        import numpy as np
    except ImportError:  # numpy is optional for loading
        return allowed
    allowed.append(np.dtype)
    scalar = None
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["scalar"])
        except ImportError:
            continue
        scalar = getattr(module, "scalar", scalar)
    if scalar is not None:
        allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return allowed


def _pickle_globals(data: bytes, max_pickles: int = 4) -> list[str]:
    """`module.name` of every GLOBAL / STACK_GLOBAL in the pickles at the start of `data`.

    Reads opcodes only (pickletools), so nothing is imported or run. Legacy torch files hold a few
    pickles in a row (magic number, version, sys info, data); plain pickle files hold one.
    """
    import pickletools

    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(max_pickles):
        strings: list[str] = []
        try:
            for opcode, arg, _pos in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # end of data, tensor bytes after the pickle, or not a pickle at all
            break
    return found


def _unsafe_globals(path: pathlib.Path) -> list[str]:
    """Globals a pickle would import that weights_only loading refuses, listed WITHOUT unpickling it."""
    allowed = {
        f"{obj.__module__}.{obj.__qualname__}" for obj in _safe_globals() if not isinstance(obj, tuple)
    }
    allowed |= {name for obj in _safe_globals() if isinstance(obj, tuple) for name in obj[1:]}
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint (legacy torch format, plain pickle): scan the opcodes
        with open(path, "rb") as f:
            names = [name for name in _pickle_globals(f.read(1 << 24)) if not name.startswith("torch.")]
    return [name for name in names if name not in allowed]


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` allowing only the plain types checkpoints need.

    Also reads `.safetensors` files and DCP checkpoint directories (returned as nested dicts, like
    `dcp_to_torch_save` would write them). A file that would import code when unpickled raises
    `CheckpointError` and nothing from it runs; a missing path raises FileNotFoundError.
    """
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (check the path or pass the right file)")
    if path.is_dir():
        if _is_dcp_dir(path):
            return load_dcp_checkpoint(path)
        inner = sorted(p.name for p in path.iterdir() if _is_dcp_dir(p))
        hint = f"; it holds DCP checkpoints {', '.join(inner[-3:])}: pass one of those" if inner else ""
        raise CheckpointError(
            f"{path} is a directory but not a torch.distributed.checkpoint (no .metadata file); "
            f"pass a checkpoint file (e.g. .../teacher_checkpoint.pth) or a DCP checkpoint directory{hint}"
        )
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from None
    except RuntimeError as err:  # zip reader errors: truncated download, not a torch file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint ({first_line}); the file may be truncated or not a "
            "checkpoint: download it again"
        ) from None


def _refusal(path: pathlib.Path, err: Exception) -> CheckpointError:
    message = str(err)
    offenders = _unsafe_globals(path)
    if not offenders:
        offenders = re.findall(r"GLOBAL ([\w.]+)", message)
    if offenders:
        names = ", ".join(f"GLOBAL {name}" for name in dict.fromkeys(offenders))
        return CheckpointError(
            f"refusing to load {path}: it contains pickled code/objects ({names}) that weights_only loading "
            "does not allow; nothing from it was run. Only use checkpoints from sources you trust, and re-save "
            "their tensors (torch.save(state_dict)) to load them here"
        )
    first_line = message.strip().splitlines()[0] if message.strip() else type(err).__name__
    head = path.read_bytes()[:64].lstrip().lower() if path.is_file() else b""
    if head.startswith((b"<!doctype html", b"<html")):
        return CheckpointError(
            f"{path} is an HTML page, not a checkpoint (a failed download?); download it again"
        )
    return CheckpointError(f"cannot unpickle {path} safely ({first_line}); is it a PyTorch checkpoint?")


def _load_safetensors(path: pathlib.Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path} is a safetensors file: pip install safetensors to read it") from None
    return load_file(str(path), device="cpu")


# ---------------------------------------------------------------------------------------------- DCP
def _is_dcp_dir(path: pathlib.Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file()


class _DCPMetadataUnpickler(pickle.Unpickler):
    """DCP writes its `.metadata` with plain pickle; read it allowing only DCP's metadata records."""

    _MODULES = {
        "torch.distributed.checkpoint.metadata",
        "torch.distributed.checkpoint.filesystem",
        "torch.distributed.checkpoint.planner",
    }

    def find_class(self, module: str, name: str) -> Any:
        if module in self._MODULES and not name.startswith("__"):
            obj = getattr(__import__(module, fromlist=[name]), name, None)
            if isinstance(obj, type):  # records (dataclasses / enums), never functions
                return obj
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        if module == "torch.serialization" and name == "_get_layout":
            return torch.serialization._get_layout  # maps "torch.strided" to the layout object
        if module == "pathlib" and name in {
            "Path",
            "PosixPath",
            "WindowsPath",
            "PurePosixPath",
            "PureWindowsPath",
        }:
            return getattr(pathlib, name)
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")


def _read_dcp_metadata(path: pathlib.Path) -> Any:
    with open(path / ".metadata", "rb") as f:
        try:
            return _DCPMetadataUnpickler(f).load()
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"refusing to load DCP checkpoint {path}: its .metadata contains pickled code/objects "
                f"({str(err).removeprefix('Unsupported global: ')}); nothing from it was run"
            ) from None


def _dcp_reader(path: pathlib.Path, metadata: Any) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class _SafeReader(FileSystemReader):
        """FileSystemReader whose metadata comes from the restricted unpickler above."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return _SafeReader(str(path))


def _dcp_planner() -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class _SafeBytesPlanner(DefaultLoadPlanner):
        """Non-tensor entries (iteration counters...) are torch.save blobs: load them weights_only too."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            with torch.serialization.safe_globals(_safe_globals()):
                try:
                    obj = torch.load(value, map_location="cpu", weights_only=True)
                except pickle.UnpicklingError as err:
                    raise CheckpointError(
                        f"refusing to load DCP entry {read_item.dest_index.fqn!r}: it contains pickled "
                        f"code/objects ({str(err).strip().splitlines()[0]})"
                    ) from None
            # the dict handed to dcp.load (set_up_planner may have made self.state_dict a copy)
            self.original_state_dict[read_item.dest_index.fqn] = obj

    return _SafeBytesPlanner(flatten_state_dict=False, flatten_sharded_tensors=False)


def _dcp_load_flat(path: pathlib.Path, metadata: Any, fqns: list[str]) -> dict[str, Any]:
    """Read the listed entries of a DCP checkpoint, keyed by their flat names."""
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    entries = metadata.state_dict_metadata
    flat: dict[str, Any] = {}
    for fqn in fqns:
        meta = entries[fqn]
        if isinstance(meta, TensorStorageMetadata):
            flat[fqn] = torch.empty(meta.size, dtype=meta.properties.dtype)
        else:
            flat[fqn] = None  # a torch.save blob, filled by the planner
    if not flat:
        return flat
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # "torch.distributed is not initialised": a single-process read is intended
        dcp_load(flat, storage_reader=_dcp_reader(path, metadata), planner=_dcp_planner(), no_dist=True)
    return flat


def load_dcp_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a whole torch.distributed.checkpoint directory into nested dicts on CPU (safely)."""
    path = pathlib.Path(path)
    metadata = _read_dcp_metadata(path)
    flat = _dcp_load_flat(path, metadata, list(metadata.state_dict_metadata))
    nested: dict[str, Any] = {}
    planner_data = getattr(metadata, "planner_data", None) or {}
    for fqn, value in flat.items():
        keys = planner_data.get(fqn, (fqn,))
        node = nested
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return nested


# ---------------------------------------------------------------------------------------------- extraction
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


def _from_timm_layout(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], bool]:
    """Undo `simdinov2.export`'s timm conversion (and read timm DINOv2 weights): exact inverse.

    timm keeps registers in `reg_token` and, for register models, no position slot for CLS (its position
    embedding was folded into `cls_token`); a zero CLS slot gives back the same function.
    """
    converted = False
    out = dict(state_dict)
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
        converted = True
    pos = out.get("pos_embed")
    if (
        pos is not None
        and pos.ndim == 3
        and pos.shape[1] > 0
        and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]
    ):
        # 1 + side^2 is never a square, so a square count means "no CLS slot"
        out["pos_embed"] = torch.cat((torch.zeros_like(pos[:, :1]), pos), dim=1)
        converted = True
    for key in [k for k in out if k.endswith("mlp.fc1.weight")]:
        fc2 = out.get(key.replace("mlp.fc1.", "mlp.fc2."))
        if fc2 is not None and out[key].shape[0] == 2 * fc2.shape[1]:  # timm's packed SwiGLU
            for name in [k for k in out if k.startswith(key[: -len("fc1.weight")])]:
                out[name.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")] = out.pop(name)
            converted = True
    return out, converted


def extract_backbone(
    obj: Any,
    checkpoint_key: str = "teacher",
    marker: str = _BACKBONE_MARKER,
    required: list[str] | None = None,
) -> ExtractedBackbone:
    """Find the backbone in any supported container (see the module docstring for the layouts).

    `marker` is the key that locates the backbone (a ViT's `patch_embed.proj.weight`); with `required`
    (all key names of a non-ViT model), only prefixes under which every one of them exists qualify."""
    source = "checkpoint object"
    is_dcp = False
    lazy_dcp: tuple[pathlib.Path, Any] | None = None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, (str, os.PathLike)):
        path = pathlib.Path(obj).expanduser()
        source = str(path)
        if _is_dcp_dir(path):
            is_dcp = True
            metadata = _read_dcp_metadata(path)
            lazy_dcp = (path, metadata)
            from torch.distributed.checkpoint.metadata import TensorStorageMetadata

            flat_original = {
                fqn: None
                for fqn, meta in metadata.state_dict_metadata.items()
                if isinstance(meta, TensorStorageMetadata)
            }
            top_level = sorted({fqn.split(".")[0] for fqn in metadata.state_dict_metadata})
        else:
            obj = safe_torch_load(path)
    if lazy_dcp is None:
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{source} holds a {type(obj).__name__}, not a state dict or checkpoint dict; "
                "pass a checkpoint file, a DCP directory or a state dict"
            )
        top_level = sorted(str(k) for k in obj)
        flat_original = _flatten(obj)

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
        loaded = _dcp_load_flat(path, metadata, [normalized[key] for key in wanted])
        values = {key: loaded[normalized[key]] for key in wanted}
    else:
        values = {key: flat_original[normalized[key]] for key in wanted}

    state_dict: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key in wanted:
        if key.startswith(prefix):
            short = key[len(prefix) :]
            if short.split(".")[0] in _HEAD_ROOTS:
                skipped.append(short)
            else:
                state_dict[short] = values[key]
        else:
            skipped.append(key[len(root) :])
    converted = False
    if marker == _BACKBONE_MARKER:
        state_dict, converted = _from_timm_layout(state_dict)
    entry = root.rstrip(".")
    return ExtractedBackbone(
        state_dict=state_dict,
        skipped=skipped,
        layout=_layout_name(top_level, entry, is_dcp, converted),
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


# ---------------------------------------------------------------------------------------------- config inference
def _arch_dims(arch_fn: Any) -> tuple[int, int, int]:
    """(embed_dim, depth, num_heads) an arch function passes to DinoVisionTransformer.

    Runs a copy of the function whose global `DinoVisionTransformer` only records its kwargs, so no
    model is built (building vit_giant2 even on the meta device takes seconds); nothing global changes.
    Falls back to a meta-device build for arch functions of another shape.
    """
    import types

    captured: dict[str, Any] = {}

    def record(*args: Any, **kwargs: Any) -> None:
        captured.update(kwargs)

    code = getattr(arch_fn, "__code__", None)
    if code is not None and "DinoVisionTransformer" in code.co_names:
        probe = types.FunctionType(
            code, {**arch_fn.__globals__, "DinoVisionTransformer": record}, arch_fn.__name__,
            arch_fn.__defaults__, arch_fn.__closure__,
        )  # fmt: skip
        probe.__kwdefaults__ = arch_fn.__kwdefaults__
        probe()
        if {"embed_dim", "depth", "num_heads"} <= captured.keys():
            return captured["embed_dim"], captured["depth"], captured["num_heads"]
    with torch.device("meta"):
        model = arch_fn()
    return model.embed_dim, model.depth, model.num_heads


@functools.cache
def _arch_table() -> dict[str, tuple[int, int, int]]:
    """arch name -> (embed_dim, depth, num_heads) of every arch in ARCHS."""
    return {name: _arch_dims(arch_fn) for name, arch_fn in ARCHS.items()}


def _block_index(key: str) -> tuple[int, int | None, str] | None:
    """(global block index, chunk index or None, rest of the key) for block parameters."""
    chunked = _CHUNKED_BLOCK.match(key)
    if chunked:
        return int(chunked.group(2)), int(chunked.group(1)), chunked.group(3)
    flat = _FLAT_BLOCK.match(key)
    if flat:
        return int(flat.group(1)), None, flat.group(2)
    return None


def infer_vit_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Architecture of a backbone state dict, read from tensor shapes.

    Returns `arch` (a name of `ARCHS` or None for a non-standard width) plus `DinoVisionTransformer`
    keyword arguments: img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
    num_register_tokens, init_values (1e-5 when LayerScale is present: the value is overwritten by the
    weights), ffn_layer, block_chunks (of the source), use_mask_token, qkv_bias, proj_bias, ffn_bias.
    """
    if _BACKBONE_MARKER not in state_dict:
        raise CheckpointError(f"not a ViT backbone state dict: no {_BACKBONE_MARKER!r} key")
    proj = state_dict[_BACKBONE_MARKER]
    embed_dim, in_chans, patch_h, patch_w = proj.shape
    if patch_h != patch_w:
        raise CheckpointError(f"non-square patches ({patch_h}x{patch_w}) are not supported")

    blocks: dict[int, dict[str, Tensor]] = {}
    chunks: set[int] = set()
    for key, value in state_dict.items():
        parsed = _block_index(key)
        if parsed is None:
            continue
        index, chunk, rest = parsed
        blocks.setdefault(index, {})[rest] = value
        if chunk is not None:
            chunks.add(chunk)
    if not blocks:
        raise CheckpointError("not a ViT backbone state dict: no blocks.* keys")
    depth = max(blocks) + 1
    first = blocks[min(blocks)]

    if "mlp.w12.weight" in first:
        ffn_layer = "swiglufused"
        # The ViT turns mlp_ratio into a SwiGLU width of 2/3 of it rounded up to 8 (DINOv2); ratio 4
        # reproduces the stored width of the standard archs, otherwise invert the 2/3.
        mlp_ratio = 4.0
        swiglu_width = first["mlp.w3.weight"].shape[1]
        if (int(embed_dim * mlp_ratio * 2 / 3) + 7) // 8 * 8 != swiglu_width:
            mlp_ratio = swiglu_width * 1.5 / embed_dim
    elif "mlp.fc1.weight" in first:
        ffn_layer = "mlp"
        mlp_ratio = first["mlp.fc1.weight"].shape[0] / embed_dim
    else:
        raise CheckpointError("not a ViT backbone state dict: blocks have neither mlp.fc1 nor mlp.w12")

    pos = state_dict.get("pos_embed")
    if pos is None or pos.ndim != 3:
        raise CheckpointError("not a ViT backbone state dict: no [1, tokens, dim] pos_embed")
    side = math.isqrt(pos.shape[1] - 1)
    if side * side != pos.shape[1] - 1:
        raise CheckpointError(f"pos_embed holds {pos.shape[1] - 1} patch positions, not a square grid")

    arch = next((name for name, (dim, _, _) in _arch_table().items() if dim == embed_dim), None)
    num_heads = _arch_table()[arch][2] if arch else None
    registers = state_dict.get("register_tokens")
    return {
        "arch": arch,
        "img_size": side * patch_h,
        "patch_size": patch_h,
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio,
        "num_register_tokens": registers.shape[1] if registers is not None else 0,
        "init_values": 1e-5 if "ls1.gamma" in first else None,
        "ffn_layer": ffn_layer,
        "block_chunks": len(chunks),
        "use_mask_token": "mask_token" in state_dict,
        "qkv_bias": "attn.qkv.bias" in first,
        "proj_bias": "attn.proj.bias" in first,
        "ffn_bias": "mlp.fc1.bias" in first or "mlp.w12.bias" in first,
    }


def describe_vit_config(config: Mapping[str, Any], fields: tuple[str, ...] = ("embed_dim",)) -> str:
    """'vit_small/16 (embed 384)'-style name, with the requested details in parentheses."""
    name = f"{config.get('arch') or 'vit'}/{config['patch_size']}"
    texts = {
        "embed_dim": f"embed {config['embed_dim']}",
        "depth": f"depth {config['depth']}",
        "num_register_tokens": f"{config['num_register_tokens']} registers",
        "init_values": "LayerScale" if config.get("init_values") else "no LayerScale",
        "ffn_layer": f"{config['ffn_layer']} FFN",
        "mlp_ratio": f"mlp_ratio {config['mlp_ratio']:g}",
        "qkv_bias": "qkv bias" if config["qkv_bias"] else "no qkv bias",
        "proj_bias": "proj bias" if config["proj_bias"] else "no proj bias",
        "ffn_bias": "FFN bias" if config["ffn_bias"] else "no FFN bias",
        "in_chans": f"{config['in_chans']} input channels",
    }
    details = [texts[f] for f in fields if f in texts]
    return f"{name} ({', '.join(details)})" if details else name


# Fields that must agree between checkpoint and model (img_size / chunks / mask token are adapted).
_ARCH_FIELDS = (
    "patch_size", "embed_dim", "depth", "num_register_tokens", "init_values", "ffn_layer", "mlp_ratio",
    "qkv_bias", "proj_bias", "ffn_bias", "in_chans",
)  # fmt: skip


def _config_mismatch(ckpt: Mapping[str, Any], model: Mapping[str, Any]) -> list[str]:
    def same(f: str) -> bool:
        if f == "init_values":
            return bool(ckpt[f]) == bool(model[f])
        if f == "mlp_ratio":
            return math.isclose(ckpt[f], model[f], rel_tol=1e-6) or ckpt["ffn_layer"] != model["ffn_layer"]
        return ckpt[f] == model[f]

    return [f for f in _ARCH_FIELDS if not same(f)]


# ---------------------------------------------------------------------------------------------- loading
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
        differing = _config_mismatch(ckpt_cfg, model_cfg)
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
    if verbose and _is_main_process():
        print(report.summary())
    return report


def _is_main_process() -> bool:
    from simdinov2.distributed import is_main_process

    return is_main_process()


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
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
        embed_dim, depth, _ = _arch_table()[arch]
        expected = dict(config, arch=arch, embed_dim=embed_dim, depth=depth)
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
            kwargs.pop(dim_key)  # the arch function sets these; a contradiction shows up at load time
        kwargs.update(overrides)
        model = ARCHS[arch](**kwargs)
    else:
        if kwargs["num_heads"] is None and "num_heads" not in overrides:
            raise CheckpointError(
                f"cannot infer num_heads for embed_dim {config['embed_dim']} (not one of {', '.join(ARCHS)}); "
                "pass num_heads="
            )
        kwargs.update(overrides)
        model = DinoVisionTransformer(**kwargs)
    _load_into(model, extracted, strict=True, verbose=verbose)
    return model


__all__ = [
    "CheckpointError",
    "ExtractedBackbone",
    "LoadReport",
    "build_backbone_from_checkpoint",
    "describe_vit_config",
    "extract_backbone",
    "extract_backbone_state_dict",
    "infer_vit_config",
    "load_backbone_weights",
    "load_dcp_checkpoint",
    "safe_torch_load",
]
