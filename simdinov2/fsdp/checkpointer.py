"""Resumable v2 checkpoints (torch.distributed.checkpoint) and the consolidated teacher snapshot.

Layout under `<output-dir>/ckpt/`: one folder per saved iteration, `checkpoint_<iteration:08d>/`, holding
the DCP shards of `{"model": ..., "optimizer": ...}` (every rank writes its own shards; the files load
under any other world size or sharding mode), `trainer_state.json` (iteration, grad-scaler state, ...)
and `rng_rank<r>.pt` (each process's python / numpy / torch random states, so a resumed run draws the
same crops, masks and stochastic depth as an uninterrupted one). A checkpoint is written into a hidden
`.tmp_<iteration>` folder and renamed once complete, so a reader never sees a partial one; only the
newest `max_to_keep` are kept.

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
from torch import nn

from simdinov2 import distributed
from simdinov2.utils.utils import atomic_torch_save, atomic_write_text

logger = logging.getLogger("simdinov2")

_CKPT_NAME = re.compile(r"^checkpoint_(\d+)$")
_MISMATCH = re.compile(r"mismatch|missing|unexpected|not found", re.IGNORECASE)
TRAINER_STATE = "trainer_state.json"


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of `module` as plain CPU tensors on the main process.

    Collective under FSDP: every rank must call it; ranks other than 0 get an empty dict."""
    if distributed.is_enabled():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().clone() for k, v in sd.items()} if distributed.is_main_process() else {}
    inner = module.module if isinstance(getattr(module, "module", None), nn.Module) else module
    return {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}


def save_teacher_snapshot(teacher: nn.Module, path: str | os.PathLike) -> Path | None:
    """Write `{"teacher": state_dict}` (plain tensors) to `path` from the main process (collective)."""
    state = full_state_dict(teacher)
    path = Path(path)
    if distributed.is_main_process():
        atomic_torch_save({"teacher": state}, path)
        logger.info("teacher snapshot written to %s", path)
    distributed.barrier()
    return path


@contextmanager
def _quiet_single_process():
    """DCP warns that it saves / loads "in a single process" when there is no process group: expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch.distributed is disabled, unavailable or uninitialized")
        yield


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

    # ------------------------------------------------------------------ state
    def _state(self, with_optimizer: bool) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state: dict[str, Any] = {"model": get_model_state_dict(self.model)}
        if with_optimizer and self.optimizer is not None:
            state["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer)
        return state

    def save(self, iteration: int, trainer_state: dict[str, Any] | None = None) -> Path:
        """Save model, optimizer, `trainer_state` and every rank's RNG state at `iteration` (collective)."""
        import torch.distributed.checkpoint as dcp

        final = self.root / f"checkpoint_{iteration:08d}"
        tmp = self.root / f".tmp_checkpoint_{iteration:08d}"
        if distributed.is_main_process():
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        distributed.barrier()
        with _quiet_single_process():
            dcp.save(self._state(with_optimizer=True), checkpoint_id=str(tmp))
        torch.save(_rng_state(), tmp / f"rng_rank{distributed.get_rank()}.pt")
        distributed.barrier()
        if distributed.is_main_process():
            state = {"iteration": int(iteration), "world_size": distributed.get_world_size()}
            state.update(trainer_state or {})
            atomic_write_text(tmp / TRAINER_STATE, json.dumps(state, indent=1))
            if final.exists():  # saving the same iteration again (e.g. a rerun): replace it whole
                old = self.root / f".old_checkpoint_{iteration:08d}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            for _, stale in self.checkpoints()[: -self.max_to_keep]:
                shutil.rmtree(stale, ignore_errors=True)
            logger.info("checkpoint saved: %s", final)
        distributed.barrier()
        return final

    def load(self, path: str | os.PathLike, with_optimizer: bool = True) -> dict[str, Any]:
        """Load model (and optimizer) state from a checkpoint folder; returns its trainer state.

        Raises one clear ValueError when the checkpoint was made by another model configuration."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        path = Path(path)
        if not (path / TRAINER_STATE).is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINER_STATE})")
        from torch.distributed.checkpoint.api import CheckpointException

        state = self._state(with_optimizer=with_optimizer)
        try:
            with _quiet_single_process():
                dcp.load(state, checkpoint_id=str(path))
        except (Exception, CheckpointException) as exc:  # DCP gathers per-rank failures in a BaseException
            reasons = [line.strip() for line in str(exc).splitlines() if _MISMATCH.search(line)]
            first = reasons[0].removeprefix("ValueError: ").removeprefix("RuntimeError: ") if reasons else ""
            raise ValueError(
                f"checkpoint {path} does not match this model (another student.arch, patch size, heads or "
                f"registers?): {first or type(exc).__name__}; train with the configuration it was made with "
                "or use another --output-dir"
            ) from exc
        set_model_state_dict(self.model, state["model"])
        if with_optimizer and self.optimizer is not None:
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        return json.loads((path / TRAINER_STATE).read_text())

    @staticmethod
    def restore_rng(path: str | os.PathLike) -> bool:
        """Set this rank's RNG states from a checkpoint (False when it holds none for this rank)."""
        rng_file = Path(path) / f"rng_rank{distributed.get_rank()}.pt"
        if not rng_file.is_file():
            logger.info("no RNG state for rank %d in %s: random streams restart", distributed.get_rank(), path)
            return False
        _set_rng_state(torch.load(rng_file, weights_only=False))
        return True


__all__ = ["Checkpointer", "TRAINER_STATE", "full_state_dict", "save_teacher_snapshot"]
