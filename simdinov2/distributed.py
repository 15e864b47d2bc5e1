"""Process group, device and backend handling for both trees.

One place decides how a run is launched: `torchrun` (RANK/WORLD_SIZE/LOCAL_RANK in the environment),
SLURM (srun or submitit: SLURM_PROCID/SLURM_NTASKS/...) or a plain single `python` process (no
process group at all). The backend follows the device: nccl on CUDA, gloo on CPU; nothing is hard-coded.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import subprocess
from datetime import timedelta

import torch
import torch.distributed as dist

from simdinov2.errors import UserError

logger = logging.getLogger("simdinov2")

_LOCAL_RANK = 0
_DEVICE: torch.device | None = None


def is_enabled() -> bool:
    """True when a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_enabled() else 1


def get_rank() -> int:
    return dist.get_rank() if is_enabled() else 0


def get_local_rank() -> int:
    return _LOCAL_RANK


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """Map `auto|cpu|cuda` to a torch.device (auto = CUDA when available)."""
    pref = (pref or "auto").lower()
    if pref not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be one of auto, cpu, cuda (got {pref!r})")
    if pref == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but CUDA is not available; use --device cpu or auto")
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def get_device() -> torch.device:
    """The device chosen by the last `init_distributed` call (CPU before any)."""
    return _DEVICE if _DEVICE is not None else torch.device("cpu")


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.check_output(["scontrol", "show", "hostnames", nodelist], text=True)
        return out.split()[0]
    except (OSError, subprocess.CalledProcessError):
        return nodelist.split(",")[0].split("[")[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment_from_slurm() -> None:
    """Translate SLURM's variables to torch.distributed's env:// ones (when not set already)."""
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if ntasks <= 1 or "RANK" in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = str(ntasks)
    os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    os.environ.setdefault("MASTER_ADDR", _first_slurm_host())
    # A job-specific port so two jobs on one node do not collide.
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))


def _launched_with_rendezvous() -> bool:
    """True when a launcher (torchrun, SLURM via submitit) set every variable of an env:// rendezvous."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_distributed(
    device: str = "auto", backend: str | None = None, timeout_minutes: int = 30
) -> torch.device:
    """Initialise the process group if the launcher asked for one; return this process's device.

    - torchrun / SLURM with more than one task: env:// rendezvous, nccl on CUDA, gloo on CPU.
    - a launcher that set the whole env:// rendezvous (torchrun, submitit) also at world size 1: a
      group of one process, so that what needs a group (FSDP2 on one GPU) works there too.
    - plain `python script.py`: no process group; everything works with world size 1.
    """
    global _LOCAL_RANK, _DEVICE
    if "SLURM_PROCID" in os.environ:
        _environment_from_slurm()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    _LOCAL_RANK = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, _LOCAL_RANK)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if (world_size > 1 or _launched_with_rendezvous()) and not is_enabled():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            timeout=timedelta(minutes=timeout_minutes),
            device_id=dev if dev.type == "cuda" else None,
        )
        logger.info(
            "process group: rank %d / %d, backend %s, device %s", get_rank(), world_size, backend, dev
        )
    _DEVICE = dev
    return dev


def destroy(barrier: bool = True) -> None:
    """Tear the process group down on every rank together, while the interpreter is fully alive.

    - The barrier first: a rank that destroys its gloo group while a peer still has collectives in
      flight can abort the peer at exit. A failing rank passes `barrier=False`: its peers may never
      reach the barrier (they are blocked in a collective, or failing too), and the launcher ends them
      when this rank exits non-zero.
    - `gc.collect()` before and after, so that whatever still holds the backend (a model in a reference
      cycle, finished work objects holding tensors) is freed now, not during interpreter finalisation,
      where gloo's worker threads can abort a process that finished its run ("terminate called without
      an active exception", SIGABRT; seen rarely in CI with 2-process DDP runs)."""
    if is_enabled():
        gc.collect()
        try:
            if barrier:
                dist.barrier()
        finally:
            dist.destroy_process_group()
            gc.collect()


class _AllReduceSumWithGrad(torch.autograd.Function):
    """Sum over processes whose backward is again a sum: every rank's output depends on every
    rank's input, so d(Σ_r L_r)/dx_k = Σ_r dL_r/dy (this is what `reduce_cov=1` needs)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Autograd-aware all-reduce (sum). Identity without a process group."""
    if not is_enabled() or get_world_size() == 1:
        return tensor
    return _AllReduceSumWithGrad.apply(tensor)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """In-place-free mean over processes (no autograd); identity without a process group."""
    if not is_enabled():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()
