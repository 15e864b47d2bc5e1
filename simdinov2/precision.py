"""Numeric precision for both trees: dtype names, autocast settings and contexts, loss scaling.

The CPU rule (both trees): bf16 autocast only where the CPU computes bf16 natively (x86 AVX-512 BF16 / AMX,
Arm bf16, `cpu_has_bf16`), fp32 otherwise: without those instructions bf16 is emulated and several times
slower than fp32 (v1's first iteration 90 s against 14 s, v2 61 s/it against 3.5 s/it, on a 2-core AVX2-only
EPYC). An explicit request (v1 `--use_fp16 true`, v2 `compute_precision` keys on the command line or in
the user's own config file) is honoured, with a warning of its cost. `SIMDINO_CPU_BF16=0|1` overrides the
detection (and `ATEN_CPU_CAPABILITY` / `ONEDNN_MAX_CPU_ISA` capped below AVX-512 BF16 count as no bf16).

Owns:
- `cpu_has_bf16()`, `cpu_precision()`: the CPU rule above, and the one log line saying which and why.
- `apply_cpu_precision(cfg, user_keys, device)`: the rule on v2's `compute_precision` (config rewritten,
  so `config.yaml` says what runs).
- `DTYPES` and `resolve_dtype(name, device)`: the config names (`fp32 | fp16 | bf16` and long forms) of
  v2's `compute_precision`; fp16 set on the CPU runs as bf16 (logged once).
- `AmpSettings` / `resolve_amp(device, use_amp, amp_dtype)`: v1's `--use_fp16` / `--amp_dtype`: fp16 with a
  gradient scaler on CUDA by default, the CPU rule on the CPU.
- `autocast(device, dtype, cuda_only=False)`: the autocast context of a dtype (none for fp32 / None);
  evaluations pass `cuda_only=True` (on the CPU the frozen backbones run in fp32).
- `config_compute_dtype(config)`: the teacher backbone's compute dtype of a v2 config (evaluations).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
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

CPU_BF16_ENV = "SIMDINO_CPU_BF16"
# oneDNN ISA caps below AVX-512 BF16: bf16 matmuls are emulated under them.
_ONEDNN_NO_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_EMULATED = "bf16 autocast would be emulated, several times slower than fp32"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 avx512_bf16 / AMX, Arm bf16); `SIMDINO_CPU_BF16=0|1`
    overrides it, and an `ATEN_CPU_CAPABILITY` / `ONEDNN_MAX_CPU_ISA` cap below AVX-512 BF16 means no."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if capability and not capability.startswith(
        "avx512"
    ):  # torch kept off its bf16 kernels (`avx2`, `default`)
        return False
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_NO_BF16:
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


def cpu_precision() -> tuple[torch.dtype, str]:
    """(compute dtype, why) of the CPU rule: bf16 where the CPU computes it natively, fp32 otherwise."""
    if cpu_has_bf16():
        return torch.bfloat16, "this CPU computes bf16 natively (AVX-512 BF16 / AMX)"
    return torch.float32, f"this CPU has no native bf16 instructions: {_EMULATED}"


def _warn_explicit_bf16(request: str) -> None:
    if not cpu_has_bf16():
        logger.warning(
            "precision: %s honoured, but this CPU has no native bf16 instructions: bf16 autocast is emulated, "
            "several times slower than fp32 (leave it out for fp32; %s=1 if the detection is wrong)",
            request,
            CPU_BF16_ENV,
        )


def resolve_dtype(name: Any, device: torch.device) -> torch.dtype:
    """`fp32 | fp16 | bf16` (and long names) -> torch dtype; fp16 on CPU becomes bf16 (logged once)."""
    global _warned_cpu_fp16
    key = str(name).lower()
    if key not in DTYPES:
        raise UserError(f"unknown precision {name!r} in compute_precision: use fp32, fp16 or bf16")
    dtype = DTYPES[key]
    if dtype == torch.float16 and device.type == "cpu":
        if not _warned_cpu_fp16:
            logger.info("compute_precision: fp16 set on the CPU runs as bf16 (CPU fp16 autocast is slow)")
            _warned_cpu_fp16 = True
        dtype = torch.bfloat16
    return dtype


def autocast(
    device: torch.device, dtype: torch.dtype | None, cuda_only: bool = False
) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`; a no-op for fp32 / None (and off CUDA when `cuda_only`)."""
    if dtype is None or dtype == torch.float32 or (cuda_only and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def config_compute_dtype(config: Any) -> torch.dtype:
    """Teacher-backbone compute dtype of a v2 config (fp32 when the config does not say)."""
    name = OmegaConf.select(
        config, "compute_precision.teacher.backbone.mixed_precision.param_dtype", default="fp32"
    )
    return DTYPES.get(str(name).lower(), torch.float32)


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


_AMP_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_amp(device: torch.device, use_amp: bool | None, amp_dtype: str = "auto") -> AmpSettings:
    """Choose autocast for `device` and log it in one line. `use_amp=None` (v1's default): fp16 + grad scaler
    on CUDA, the CPU rule (`cpu_precision`) on the CPU; `True` (asked for): honoured, with a warning on a CPU
    without native bf16. fp16 requested on the CPU runs as bf16 (CPU fp16 autocast is slow, has no scaler)."""
    amp_dtype = (amp_dtype or "auto").lower()
    if amp_dtype not in ("auto", *_AMP_DTYPES):
        raise UserError(f"amp dtype must be auto, float16 or bfloat16 (got {amp_dtype!r})")
    if use_amp is False:
        logger.info("precision: fp32 (--use_fp16 false)")
        return AmpSettings(False, torch.float32, device.type)
    if device.type == "cpu" and use_amp is None:
        dtype, why = cpu_precision()
        logger.info("precision: %s on the CPU: %s (--use_fp16 true/false forces it)", _NAMES[dtype], why)
        return AmpSettings(dtype != torch.float32, dtype, device.type)
    if amp_dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    else:
        dtype = _AMP_DTYPES[amp_dtype]
    if device.type == "cpu":
        dtype = torch.bfloat16
        _warn_explicit_bf16("--use_fp16 true (bf16 autocast on the CPU)")
    scaler = " + grad scaler" if dtype == torch.float16 else ""
    logger.info("precision: %s autocast%s on %s", _NAMES[dtype], scaler, device.type)
    return AmpSettings(True, dtype, device.type)


_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_PRECISION_KEYS = [
    f"compute_precision.{model}.{module}.mixed_precision.{key}"
    for model in ("teacher", "student") for module in ("backbone", "dino_head", "ibot_head")
    for key in ("param_dtype", "reduce_dtype")
]  # fmt: skip


def user_precision_keys(
    overrides: Iterable[str] | None, config_file: str | os.PathLike | None = None
) -> set[str]:
    """The `compute_precision` dtype keys the user set: in the command-line overrides, or in a config file
    of their own (the configs shipped in `simdinov2/configs` hold upstream's GPU recipes, not a request)."""
    keys = {str(item).split("=", 1)[0].strip() for item in overrides or () if "=" in str(item)}
    if config_file and Path(__file__).parent / "configs" not in Path(config_file).resolve().parents:
        user_cfg = OmegaConf.load(config_file)
        keys |= {key for key in _PRECISION_KEYS if OmegaConf.select(user_cfg, key, default=None) is not None}
    return {key for key in _PRECISION_KEYS if key in keys}


def apply_cpu_precision(cfg: Any, user_keys: set[str], device: torch.device) -> None:
    """v2 on the CPU: every `compute_precision` dtype the user did not set follows the CPU rule (the config
    is rewritten, so `config.yaml` says what runs); one line says which and why, one warns about set ones."""
    if device.type != "cpu":
        return
    dtype, why = cpu_precision()
    for key in _PRECISION_KEYS:
        if key not in user_keys and OmegaConf.select(cfg, key, default=None) is not None:
            OmegaConf.update(cfg, key, _NAMES[dtype], merge=False)
    asked = {str(OmegaConf.select(cfg, key)) for key in user_keys} - {"fp32", "float32"}
    kept = f"; kept as set: {', '.join(sorted(user_keys))}" if user_keys else ""
    logger.info("precision: %s on the CPU: %s%s", _NAMES[dtype], why, kept)
    if asked:
        _warn_explicit_bf16(f"compute_precision {'/'.join(sorted(asked))} (run as bf16 on the CPU)")
