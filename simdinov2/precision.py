"""Numeric precision for both trees: dtype names, autocast settings and contexts, loss scaling.

Owns:
- `DTYPES` and `resolve_dtype(name, device)`: the config names (`fp32 | fp16 | bf16` and long forms) of
  v2's `compute_precision`; fp16 on the CPU runs as bf16 (logged once).
- `AmpSettings` / `resolve_amp(device, use_amp, amp_dtype)`: v1's `--use_fp16` / `--amp_dtype`: fp16 with a
  gradient scaler on CUDA by default, bf16 on the CPU.
- `autocast(device, dtype, cuda_only=False)`: the autocast context of a dtype (none for fp32 / None);
  evaluations pass `cuda_only=True` (on the CPU the frozen backbones run in fp32).
- `config_compute_dtype(config)`: the teacher backbone's compute dtype of a v2 config (evaluations).
- `cpu_has_bf16()`: whether this CPU computes bf16 natively (else bf16 autocast is emulated, and slow).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from simdinov2.errors import UserError

logger = logging.getLogger("simdinov2")

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
_warned_cpu_fp16 = False


def resolve_dtype(name: Any, device: torch.device) -> torch.dtype:
    """`fp32 | fp16 | bf16` (and long names) -> torch dtype; fp16 on CPU becomes bf16 (logged once)."""
    global _warned_cpu_fp16
    key = str(name).lower()
    if key not in DTYPES:
        raise UserError(f"unknown precision {name!r} in compute_precision: use fp32, fp16 or bf16")
    dtype = DTYPES[key]
    if dtype == torch.float16 and device.type == "cpu":
        if not _warned_cpu_fp16:
            logger.info("compute_precision: fp16 requested on CPU, running bf16 instead")
            _warned_cpu_fp16 = True
        dtype = torch.bfloat16
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None, cuda_only: bool = False) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`; a no-op for fp32 / None (and off CUDA when `cuda_only`)."""
    if dtype is None or dtype == torch.float32 or (cuda_only and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def config_compute_dtype(config: Any) -> torch.dtype:
    """Teacher-backbone compute dtype of a v2 config (fp32 when the config does not say)."""
    name = OmegaConf.select(config, "compute_precision.teacher.backbone.mixed_precision.param_dtype", default="fp32")
    return DTYPES.get(str(name).lower(), torch.float32)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 avx512_bf16 / AMX, Arm bf16). Without it bf16 autocast
    is emulated: one step of the demo's ViT at batch 16 took 8.4 s against 1.7 s in fp32 on a 2-core AVX2
    EPYC, and the first one 9-14 s. `ATEN_CPU_CAPABILITY` below avx512 (e.g. `avx2`, to run as an AVX2-only
    CPU would) keeps torch off the bf16 kernels: then no."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if capability and not capability.startswith("avx512"):
        return False
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: no way to tell, fp32 is the safe choice
        return False
    flags = {
        flag
        for line in lines
        if line.lower().startswith(("flags", "features"))
        for flag in line.split(":", 1)[-1].split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


@dataclass
class AmpSettings:
    """What autocast does on this device: enabled, dtype, and whether a grad scaler is needed (fp16 only)."""

    enabled: bool
    dtype: torch.dtype
    device_type: str

    @property
    def needs_scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    def autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device_type, dtype=self.dtype, enabled=self.enabled)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.needs_scaler else None


_AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_amp(device: torch.device, use_amp: bool, amp_dtype: str = "auto") -> AmpSettings:
    """Choose autocast for `device`: fp16 (+ grad scaler) on CUDA by default, bf16 on CPU.

    fp16 requested on CPU runs as bf16 (CPU fp16 autocast is slow and has no scaler); logged once."""
    if not use_amp:
        return AmpSettings(False, torch.float32, device.type)
    amp_dtype = (amp_dtype or "auto").lower()
    if amp_dtype not in ("auto", *_AMP_DTYPES):
        raise UserError(f"amp dtype must be auto, float16 or bfloat16 (got {amp_dtype!r})")
    if amp_dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    else:
        dtype = _AMP_DTYPES[amp_dtype]
    if device.type == "cpu" and dtype == torch.float16:
        logger.info("fp16 autocast requested on CPU: running bf16 instead (no grad scaler needed)")
        dtype = torch.bfloat16
    return AmpSettings(True, dtype, device.type)
