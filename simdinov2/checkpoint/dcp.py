"""Resumable v2 checkpoints (torch.distributed.checkpoint) and the consolidated teacher snapshot.

Layout under `<output-dir>/ckpt/`: one folder per saved iteration, `checkpoint_<iteration:08d>/`, holding
the DCP shards of `{"model": ..., "optimizer": ...}` (every rank writes its own shards; the files load
under any other world size or sharding mode), `trainer_state.json` (iteration, grad-scaler state, ...)
and `rng_rank<r>.pt` (each process's python / numpy / torch random states as tensors and plain numbers,
so a resumed run draws the same crops, masks and stochastic depth as an uninterrupted one). A checkpoint
is written into a hidden `.tmp_checkpoint_<iteration>` folder and renamed once complete, so a reader
never sees a partial one; only the newest `max_to_keep` are kept. A full disk removes the temporary
folder and raises one `DiskFullError` line.

Resuming reads nothing unsafely: `.metadata` through the restricted unpickler, byte entries and RNG files
weights_only (see `safe_load`); a refused, corrupt or truncated file is one `CheckpointError` line.

`save_teacher_snapshot` writes `{"teacher": state_dict}` with plain CPU tensors (keys `backbone.*`,
`dino_head.*`) for the evaluation scripts.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from simdinov2 import distributed
from simdinov2.io.atomic import (
    atomic_torch_save,
    atomic_write_text,
    disk_full_error,
    is_disk_full,
    tensor_bytes,
)

from .errors import CheckpointError, CheckpointNotFoundError
from .safe_load import (
    SafeFileSystemReader,
    SafeLoadPlanner,
    check_dcp_files,
    corrupt_error,
    dcp_load_error,
    read_dcp_metadata,
    safe_torch_load,
)

logger = logging.getLogger("simdinov2")

_CKPT_NAME = re.compile(r"^checkpoint_(\d+)$")
_TMP_CKPT_NAME = re.compile(r"^\.tmp_checkpoint_(\d+)$")
_MISMATCH = re.compile(r"mismatch|missing|unexpected|not found", re.IGNORECASE)
TRAINER_STATE = "trainer_state.json"


# ---------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """This process's python / numpy / torch (/ CUDA) random states as tensors and plain numbers.

    Nothing here needs more than `torch.load(weights_only=True)` to read back (numpy's key array and
    python's state tuple become int64 tensors).
    """
    version, python_state, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(python_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    python, numpy_state = state["python"], state["numpy"]
    random.setstate(
        (python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss_next"])
    )
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------------------------- snapshot
def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of `module` as plain CPU tensors on the main process.

    Collective under FSDP: every rank must call it; ranks other than 0 get an empty dict."""
    if distributed.is_enabled():
        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().clone() for k, v in sd.items()} if distributed.is_main_process() else {}
    inner = module.module if isinstance(getattr(module, "module", None), nn.Module) else module
    return {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}


def save_teacher_snapshot(teacher: nn.Module, path: str | os.PathLike, overwrite: bool = True) -> Path | None:
    """Write `{"teacher": state_dict}` (plain tensors) to `path` from the main process (collective);
    with `overwrite=False`, only if `path` does not exist yet."""
    state = full_state_dict(teacher)
    path = Path(path)
    if distributed.is_main_process() and (overwrite or not path.is_file()):
        atomic_torch_save({"teacher": state}, path)
        logger.info("teacher snapshot written to %s", path)
    distributed.barrier()
    return path


@contextmanager
def _quiet_single_process():
    """DCP warns that it saves / loads "in a single process" when there is no process group: expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"torch.distributed is disabled, unavailable or uninitialized"
        )
        yield


# ---------------------------------------------------------------------------------------------- saving
def _any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any process (collective; the flag itself without a process group)."""
    if not distributed.is_enabled():
        return flag
    votes = torch.tensor([1.0 if flag else 0.0], device=distributed.get_device())
    return bool(distributed.all_reduce_mean(votes).item() > 0)


def _end_save_if_any_rank_failed(
    error: BaseException | None, tmp: Path, final: Path, needed_bytes: int
) -> None:
    """Collective: when any rank failed, remove the temporary checkpoint and raise on every rank."""
    if not _any_rank(error is not None):
        return
    if distributed.is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
    if error is None:
        raise CheckpointError(
            f"saving {final} failed on another process (its log says why); the previous checkpoints are intact"
        )
    if is_disk_full(error):
        raise disk_full_error(final, needed_bytes) from None
    raise error


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename the complete `tmp` folder to `final`, replacing a checkpoint of the same iteration whole."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.with_name(f".old_{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- checkpointer
class Checkpointer:
    """Save / find / load resumable checkpoints of a (possibly sharded) model and its optimizer."""

    def __init__(
        self,
        root: str | os.PathLike,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        max_to_keep: int = 3,
    ) -> None:
        self.root = Path(root)
        self.model = model
        self.optimizer = optimizer
        self.max_to_keep = max(int(max_to_keep), 1)

    # ------------------------------------------------------------------ discovery
    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            match = _CKPT_NAME.match(entry.name)
            if match and entry.is_dir() and (entry / TRAINER_STATE).is_file():
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def refuse_damaged(self) -> None:
        """Before resuming: a `checkpoint_<it>` folder newer than the latest complete one but without its
        `trainer_state.json` (a save never leaves one: it renames a complete folder into place, so the file
        was lost or copied in part) is one line saying how to go on, never skipped without a word (the run
        would restart and overwrite it)."""
        if not self.root.is_dir():
            return
        latest = self.latest()
        newest = -1 if latest is None else int(_CKPT_NAME.match(latest.name).group(1))
        for entry in sorted(self.root.iterdir()):
            match = _CKPT_NAME.match(entry.name)
            if (
                match
                and entry.is_dir()
                and int(match.group(1)) > newest
                and not (entry / TRAINER_STATE).is_file()
            ):
                instead = f"resume from {latest.name}" if latest is not None else "start at iteration 0"
                raise CheckpointNotFoundError(
                    f"cannot resume: {entry} has no {TRAINER_STATE} (lost or copied in part): restore that file "
                    f"to resume from it, remove the folder to {instead}, or start fresh with --no-resume or "
                    "another --output-dir"
                )

    def sweep_temporaries(self) -> list[Path]:
        """Remove the temporary checkpoint folders of saves cut short by a kill (main process, on resume,
        while nothing saves); returns them."""
        if not self.root.is_dir():
            return []
        stale = [
            entry for entry in self.root.iterdir() if _TMP_CKPT_NAME.match(entry.name) and entry.is_dir()
        ]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        return stale

    # ------------------------------------------------------------------ state
    def _state(self, with_optimizer: bool) -> dict[str, Any]:
        state: dict[str, Any] = {"model": get_model_state_dict(self.model)}
        if with_optimizer and self.optimizer is not None:
            state["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer)
        return state

    def save(self, iteration: int, trainer_state: dict[str, Any] | None = None) -> Path:
        """Save model, optimizer, `trainer_state` and every rank's RNG state at `iteration` (collective).

        A failure on any rank ends the save on every rank (no rank waits in a barrier for it): the
        temporary folder is removed and the previous checkpoints are untouched. Out of disk space is one
        `DiskFullError` line with the space needed."""
        final = self.root / f"checkpoint_{iteration:08d}"
        tmp = self.root / f".tmp_checkpoint_{iteration:08d}"  # matches _TMP_CKPT_NAME
        if distributed.is_main_process():
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        distributed.barrier()
        state = self._state(with_optimizer=True)
        needed = tensor_bytes(state) * distributed.get_world_size()
        error: BaseException | None = None
        try:
            with _quiet_single_process():
                dcp.save(state, checkpoint_id=str(tmp))
            atomic_torch_save(rng_state(), tmp / f"rng_rank{distributed.get_rank()}.pt")
        except (Exception, CheckpointException) as exc:  # DCP gathers per-rank failures in a BaseException
            error = exc
        _end_save_if_any_rank_failed(error, tmp, final, needed)
        if distributed.is_main_process():
            record = {"iteration": int(iteration), "world_size": distributed.get_world_size()}
            record.update(trainer_state or {})
            try:
                atomic_write_text(tmp / TRAINER_STATE, json.dumps(record, indent=1))
                _replace_dir(tmp, final)
            except Exception as exc:
                error = exc
        _end_save_if_any_rank_failed(error, tmp, final, needed)
        if distributed.is_main_process():
            for _, stale in self.checkpoints()[: -self.max_to_keep]:
                shutil.rmtree(stale, ignore_errors=True)
            logger.info("checkpoint saved: %s", final)
        distributed.barrier()
        return final

    @staticmethod
    def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
        """The `trainer_state.json` of a checkpoint folder (missing / not JSON: one clear line)."""
        file = Path(path) / TRAINER_STATE
        if not file.is_file():
            raise CheckpointNotFoundError(f"{path} is not a complete checkpoint (no {TRAINER_STATE})")
        try:
            state = json.loads(file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise corrupt_error(file, f"not JSON: {err}") from None
        if not isinstance(state, dict) or "iteration" not in state:
            raise corrupt_error(file, "no iteration recorded")
        return state

    def load(self, path: str | os.PathLike, with_optimizer: bool = True) -> dict[str, Any]:
        """Load model (and optimizer) state from a checkpoint folder; returns its trainer state.

        Raises one `CheckpointError` line when a file is refused (pickled code), corrupt or truncated,
        or when the checkpoint was made by another model configuration."""
        path = Path(path)
        trainer_state = self.read_trainer_state(path)
        metadata = read_dcp_metadata(path)
        check_dcp_files(path, metadata)
        reader = SafeFileSystemReader(path, metadata)
        state = self._state(with_optimizer=with_optimizer)
        try:
            with _quiet_single_process():
                dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(reader))
        except (Exception, CheckpointException) as exc:  # DCP gathers per-rank failures in a BaseException
            error = dcp_load_error(exc, path, reader)
            if error is not None:
                raise error from None
            reasons = [line.strip() for line in str(exc).splitlines() if _MISMATCH.search(line)]
            first = reasons[0].removeprefix("ValueError: ").removeprefix("RuntimeError: ") if reasons else ""
            raise CheckpointError(
                f"checkpoint {path} does not match this model (another student.arch, patch size, heads or "
                f"registers?): {first or type(exc).__name__}; train with the configuration it was made with "
                "or use another --output-dir"
            ) from None
        set_model_state_dict(self.model, state["model"])
        if with_optimizer and self.optimizer is not None:
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        return trainer_state

    @staticmethod
    def restore_rng(path: str | os.PathLike) -> bool:
        """Set this rank's RNG states from a checkpoint (False when it holds none for this rank).

        The file is read weights_only: one written by an older version (numpy arrays pickled as objects)
        or holding anything else is refused with one line saying how to resume without it."""
        rng_file = Path(path) / f"rng_rank{distributed.get_rank()}.pt"
        if not rng_file.is_file():
            logger.info(
                "no RNG state for rank %d in %s: random streams restart", distributed.get_rank(), path
            )
            return False
        try:
            state = safe_torch_load(rng_file)
        except CheckpointError as err:
            raise CheckpointError(
                f"{err}; to resume with fresh random streams instead, delete {rng_file}"
            ) from None
        if not isinstance(state, dict) or not {"python", "numpy", "torch"} <= state.keys():
            raise corrupt_error(rng_file, "not an RNG state")
        try:
            set_rng_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            raise corrupt_error(rng_file, f"not an RNG state: {err}") from None
        return True


__all__ = [
    "TRAINER_STATE",
    "Checkpointer",
    "full_state_dict",
    "rng_state",
    "save_teacher_snapshot",
    "set_rng_state",
]
