"""Reading checkpoint files that may come from anyone, without running anything they contain.

Owns every read of a pickle in this project's checkpoints:
- `safe_torch_load`: torch files through `torch.load(weights_only=True)` with an allow-list of the few
  plain types released checkpoints hold (argparse.Namespace, paths, numpy scalars), `.safetensors`
  files, and DCP directories (as nested dicts);
- `load_weights_only`: the same for a stream (DCP byte entries, per-rank RNG files);
- DCP: `read_dcp_metadata` (`.metadata` through an unpickler that admits only DCP's own metadata
  records), `check_dcp_files` (every shard present and long enough), `SafeFileSystemReader` /
  `SafeLoadPlanner` (what `torch.distributed.checkpoint.load` is given so that it reads nothing
  unsafely), `dcp_load_error` (a failed DCP load as one line), `load_dcp_checkpoint`.

A file that would import or call anything else is refused with one `CheckpointError` line naming it
and the objects it would create, before anything runs; an empty, truncated or non-checkpoint file is
"corrupt or not a checkpoint", never an EOFError / IndexError.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import pathlib
import pickle
import pickletools
import re
import struct
import warnings
from collections import OrderedDict
from typing import IO, Any

import torch
from torch import Tensor
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException

from simdinov2.errors import exception_chain

from .errors import CheckpointError, CheckpointNotFoundError

DCP_METADATA = ".metadata"
# What torch.load / pickle raise on bytes that are not a checkpoint (text, zeros, a cut-off file).
_CORRUPT_ERRORS = (
    EOFError,
    KeyError,
    IndexError,
    ValueError,
    RuntimeError,
    struct.error,
    UnicodeDecodeError,
    OverflowError,
    pickle.UnpicklingError,
)


# ---------------------------------------------------------------------------------------------- allow-lists
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


@functools.cache
def _allowed_global_names() -> frozenset[str]:
    """`module.name` of everything a weights_only load with `_safe_globals` accepts."""
    names = {f"{obj.__module__}.{obj.__qualname__}" for obj in _safe_globals() if not isinstance(obj, tuple)}
    names |= {name for obj in _safe_globals() if isinstance(obj, tuple) for name in obj[1:]}
    try:  # torch's own list (OrderedDict, Size, dtypes...): a private helper, so optional
        from torch._weights_only_unpickler import _get_allowed_globals

        names |= set(_get_allowed_globals())
    except ImportError:
        names.add(f"{OrderedDict.__module__}.{OrderedDict.__qualname__}")
    return frozenset(names)


# ---------------------------------------------------------------------------------------------- refusals
def _pickle_globals(data: bytes, max_pickles: int = 4) -> list[str]:
    """`module.name` of every GLOBAL / STACK_GLOBAL in the pickles at the start of `data`.

    Reads opcodes only (pickletools), so nothing is imported or run. Legacy torch files hold a few
    pickles in a row (magic number, version, sys info, data); plain pickle files hold one.
    """
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


def _unsafe_globals(source: pathlib.Path | bytes) -> list[str]:
    """Globals a pickle would import that weights_only loading refuses, listed WITHOUT unpickling it."""
    try:
        names = list(
            torch.serialization.get_unsafe_globals_in_checkpoint(
                source if isinstance(source, pathlib.Path) else io.BytesIO(source)
            )
        )
    except Exception:  # not a zip checkpoint (legacy torch format, plain pickle): scan the opcodes
        if isinstance(source, pathlib.Path):
            with open(source, "rb") as f:
                source = f.read(1 << 24)
        names = _pickle_globals(source)
    allowed = _allowed_global_names()
    return [name for name in dict.fromkeys(names) if name not in allowed and not name.startswith("torch.")]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def corrupt_error(path: str | os.PathLike, reason: str) -> CheckpointError:
    """'<path> is corrupt or not a checkpoint (<reason>)' with the fix."""
    return CheckpointError(
        f"{path} is corrupt or not a checkpoint ({reason}); it may be truncated (an interrupted copy or "
        "download): copy or download it again, or use an earlier checkpoint"
    )


def _refusal(name: str, offenders: list[str]) -> CheckpointError:
    listed = ", ".join(f"GLOBAL {offender}" for offender in offenders)
    return CheckpointError(
        f"refusing to load {name}: it contains pickled code/objects ({listed}) that safe (weights-only) "
        "loading does not allow; nothing from it was run. Only use checkpoints from sources you trust, and re-save "
        "their tensors (torch.save(state_dict)) to load them here"
    )


def _unpickling_error(
    name: str, source: pathlib.Path | bytes, err: pickle.UnpicklingError
) -> CheckpointError:
    """Refusal (naming what the pickle would import) or, when it imports nothing, corrupt / HTML page."""
    offenders = _unsafe_globals(source) or re.findall(r"GLOBAL ([\w.]+)", str(err))
    if offenders:
        return _refusal(name, list(dict.fromkeys(offenders)))
    if isinstance(source, pathlib.Path):
        with open(source, "rb") as f:
            source = f.read(64)
    head = source[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return CheckpointError(
            f"{name} is an HTML page, not a checkpoint (a failed download?); download it again"
        )
    return corrupt_error(name, _first_line(err))


# ---------------------------------------------------------------------------------------------- files
def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` allowing only the plain types checkpoints need.

    Also reads `.safetensors` files and DCP checkpoint directories (returned as nested dicts, like
    `dcp_to_torch_save` would write them). A file that would import code when unpickled raises
    `CheckpointError` and nothing from it runs; so does an empty, truncated or non-checkpoint file;
    a missing path raises `CheckpointNotFoundError` (a FileNotFoundError).
    """
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path} (check the path or pass the right file)")
    if path.is_dir():
        if is_dcp_dir(path):
            return load_dcp_checkpoint(path)
        inner = sorted(p.name for p in path.iterdir() if is_dcp_dir(p))
        hint = f"; it holds DCP checkpoints {', '.join(inner[-3:])}: pass one of those" if inner else ""
        raise CheckpointError(
            f"{path} is a directory but not a torch.distributed.checkpoint (no {DCP_METADATA} file); "
            f"pass a checkpoint file (e.g. .../teacher_checkpoint.pth) or a DCP checkpoint directory{hint}"
        )
    if path.stat().st_size == 0:
        raise corrupt_error(path, "0 bytes")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unpickling_error(str(path), path, err) from None
    except _CORRUPT_ERRORS as err:
        raise corrupt_error(path, _first_line(err)) from None


def load_weights_only(stream: IO[bytes], name: str) -> Any:
    """`torch.load` of a stream (weights_only, same allow-list); `name` is what a refusal calls it."""
    data = stream.read()
    if not data:
        raise corrupt_error(name, "0 bytes")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unpickling_error(name, data, err) from None
    except _CORRUPT_ERRORS as err:
        raise corrupt_error(name, _first_line(err)) from None


def _load_safetensors(path: pathlib.Path) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path} is a safetensors file: pip install safetensors to read it") from None
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as err:
        raise corrupt_error(path, _first_line(err)) from None


# ---------------------------------------------------------------------------------------------- DCP
def is_dcp_dir(path: pathlib.Path) -> bool:
    """Whether `path` is a torch.distributed.checkpoint directory (it has a `.metadata` file)."""
    return path.is_dir() and (path / DCP_METADATA).is_file()


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A `.metadata` pickle names something that is not one of DCP's metadata records."""


class _DCPMetadataUnpickler(pickle.Unpickler):
    """DCP writes its `.metadata` with plain pickle: admit only DCP's metadata records and their fields."""

    _ALLOWED = {
        "torch.distributed.checkpoint.metadata": {
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "TensorProperties",
            "_MEM_FORMAT_ENCODING",
        },
        "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
        "torch.serialization": {"_get_layout"},  # maps "torch.strided" to the layout object
        "torch": {"Size"},
        "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
        "collections": {"OrderedDict"},
    }

    def find_class(self, module: str, name: str) -> Any:
        if name in self._ALLOWED.get(module, ()):
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise _ForbiddenGlobal(f"{module}.{name}")


def read_dcp_metadata(path: str | os.PathLike) -> dcp_metadata.Metadata:
    """The `.metadata` of a DCP directory, read with the restricted unpickler (refused / corrupt: one line)."""
    file = pathlib.Path(path) / DCP_METADATA
    if file.stat().st_size == 0:
        raise corrupt_error(file, "0 bytes")
    with open(file, "rb") as f:
        try:
            metadata = _DCPMetadataUnpickler(f).load()
        except _ForbiddenGlobal as err:
            raise _refusal(str(file), [str(err)]) from None
        except _CORRUPT_ERRORS as err:
            raise corrupt_error(file, _first_line(err)) from None
    if not isinstance(metadata, dcp_metadata.Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise corrupt_error(file, f"holds a {type(metadata).__name__}, not DCP metadata")
    return metadata


def check_dcp_files(path: str | os.PathLike, metadata: dcp_metadata.Metadata) -> None:
    """Every data file `metadata` points to exists inside `path` and is long enough (else: corrupt)."""
    root = pathlib.Path(path).resolve()
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        relative = str(getattr(info, "relative_path", ""))
        end = int(getattr(info, "offset", 0)) + int(getattr(info, "length", 0))
        needed[relative] = max(needed.get(relative, 0), end)
    for relative, end in needed.items():
        file = (root / relative).resolve()
        if root not in file.parents:
            raise corrupt_error(root / DCP_METADATA, f"it points outside its folder: {relative!r}")
        if not file.is_file():
            raise corrupt_error(file, "missing")
        size = file.stat().st_size
        if size < end:
            raise corrupt_error(file, f"truncated: {size} bytes, the metadata needs {end}")


class SafeFileSystemReader(FileSystemReader):
    """`FileSystemReader` whose `.metadata` goes through `read_dcp_metadata`; remembers the file it reads."""

    def __init__(self, path: str | os.PathLike, metadata: dcp_metadata.Metadata | None = None) -> None:
        super().__init__(str(path))
        self._metadata = metadata
        self.current_file: str | None = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        metadata = self._metadata if self._metadata is not None else read_dcp_metadata(self.path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def _slice_file(self, file: Any, sinfo: Any) -> IO[bytes]:
        self.current_file = str(pathlib.Path(self.path) / sinfo.relative_path)
        return super()._slice_file(file, sinfo)


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, except that non-tensor entries (torch.save blobs) load weights_only."""

    def __init__(self, reader: SafeFileSystemReader, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reader = reader  # names the shard file in a refusal

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        obj = load_weights_only(value, f"{self.reader.current_file or self.reader.path} (entry {fqn!r})")
        if self.flatten_state_dict:
            target, key = self.original_state_dict, self.mappings[fqn]
            for part in key[:-1]:
                target = target[part]
            target[key[-1]] = obj
        else:
            self.state_dict[fqn] = obj


def dcp_load_error(
    exc: BaseException, path: pathlib.Path, reader: SafeFileSystemReader
) -> CheckpointError | None:
    """A failed `dcp.load` as one line: our own refusal, or a corrupt shard; None for anything else."""
    for current in exception_chain(exc):
        if isinstance(current, CheckpointError):
            return current
    for current in exception_chain(exc):
        if isinstance(current, pickle.UnpicklingError):
            offenders = re.findall(r"GLOBAL ([\w.]+)", str(current))
            if offenders:
                return _refusal(reader.current_file or str(path), offenders)
            # No global named: not code but bytes that are no pickle at all (a zero-filled or overwritten shard).
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(current))
            return corrupt_error(
                reader.current_file or path, detail.group(1) if detail else "unreadable tensor data"
            )
        if isinstance(current, (EOFError, struct.error)) or "PytorchStreamReader" in str(current):
            return corrupt_error(reader.current_file or path, _first_line(current))
    return None


def _quietly_load(
    state: dict[str, Any], reader: SafeFileSystemReader, planner: DefaultLoadPlanner, **kwargs: Any
) -> None:
    with warnings.catch_warnings():
        # "torch.distributed is disabled / not initialised": a single-process read is intended
        warnings.filterwarnings("ignore", message=r"torch.distributed")
        dcp_load(state, storage_reader=reader, planner=planner, **kwargs)


def dcp_load_flat(path: pathlib.Path, metadata: dcp_metadata.Metadata, fqns: list[str]) -> dict[str, Any]:
    """Read the listed entries of a DCP checkpoint into CPU tensors / objects, keyed by their flat names."""
    entries = metadata.state_dict_metadata
    flat: dict[str, Any] = {}
    for fqn in fqns:
        meta = entries[fqn]
        if isinstance(meta, dcp_metadata.TensorStorageMetadata):
            flat[fqn] = torch.empty(meta.size, dtype=meta.properties.dtype)
        else:
            flat[fqn] = None  # a torch.save blob, filled by the planner
    if not flat:
        return flat
    check_dcp_files(path, metadata)
    reader = SafeFileSystemReader(path, metadata)
    planner = SafeLoadPlanner(reader, flatten_state_dict=False, flatten_sharded_tensors=False)
    try:
        _quietly_load(flat, reader, planner, no_dist=True)
    except (Exception, CheckpointException) as exc:  # DCP gathers failures in a BaseException
        error = dcp_load_error(exc, path, reader)
        if error is None:
            raise
        raise error from None
    return flat


def load_dcp_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a whole torch.distributed.checkpoint directory into nested dicts on CPU (safely)."""
    path = pathlib.Path(path)
    metadata = read_dcp_metadata(path)
    flat = dcp_load_flat(path, metadata, list(metadata.state_dict_metadata))
    nested: dict[str, Any] = {}
    planner_data = getattr(metadata, "planner_data", None) or {}
    for fqn, value in flat.items():
        keys = planner_data.get(fqn, (fqn,))
        node = nested
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return nested


__all__ = [
    "DCP_METADATA",
    "SafeFileSystemReader",
    "SafeLoadPlanner",
    "check_dcp_files",
    "corrupt_error",
    "dcp_load_error",
    "dcp_load_flat",
    "is_dcp_dir",
    "load_dcp_checkpoint",
    "load_weights_only",
    "read_dcp_metadata",
    "safe_torch_load",
]
