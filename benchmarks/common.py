"""Shared helpers of the benchmark scripts: timing, FLOP counting, measured matmul peak, machine facts,
tables and JSON output.

Owns the two halves of every MFU number in `benchmarks/`: the FLOPs of one step are counted with
`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and attention; pointwise ops are
not counted, as is usual for MFU), and the peak is *measured* in the same process by a large square
matmul in the same dtype, so that MFU compares against what this machine can actually do rather than
a datasheet number.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

REPO_ROOT = Path(__file__).resolve().parents[1]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# What the v1 model, loss and step builders of `simdino.train.multicrop` read, at the values of the v1
# trainer's command line (`python simdino/main_dino.py --help`; tests/test_benchmarks_smoke.py keeps
# them equal). The benchmarks give shapes explicitly and take the rest from here.
V1_TRAINER_DEFAULTS: dict[str, Any] = {
    "arch": "vit_small",
    "patch_size": 16,
    "depth": 0,
    "global_crops_size": 224,
    "local_crops_size": 96,
    "local_crops_number": 8,
    "batch_size_per_gpu": 64,
    "out_dim": 65536,
    "z_dim": 256,
    "hidden_dim": 2048,
    "use_bn_in_head": False,
    "norm_last_layer": True,
    "drop_path_rate": 0.1,
    "use_simdino": True,
    "eps": 0.5,
    "coeff": 1.0,
    "expa_type": 1,
    "reduce_cov": 0,
    "optimizer": "adamw",
    "lr": 0.0005,
    "weight_decay": 0.04,
    "momentum_teacher": 0.996,
    "teacher_temp": 0.04,
    "clip_grad": 3.0,
    "freeze_last_layer": 1,
    "use_fp16": None,  # unset: upstream fp16 on CUDA, the CPU precision rule elsewhere
    "amp_dtype": "auto",
}


def v1_model_args(**values: Any) -> argparse.Namespace:
    """The v1 builders' arguments: `V1_TRAINER_DEFAULTS` with `values` replacing some of them."""
    unknown = set(values) - set(V1_TRAINER_DEFAULTS)
    if unknown:
        raise ValueError(f"not v1 trainer settings: {', '.join(sorted(unknown))}")
    return argparse.Namespace(**{**V1_TRAINER_DEFAULTS, **values})


# ----------------------------------------------------------------------------- machine / environment
def cpu_model() -> str:
    """The CPU model name as lscpu reports it (falls back to /proc/cpuinfo, then platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float:
    """1-minute load average (other processes competing for the cores make timings wrong)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """Date, CPU, core count, torch version, threads, load and (when used) the GPU name."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_1min": round(load_average(), 2),
        "python": platform.python_version(),
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_header(title: str, info: dict[str, Any]) -> None:
    print(f"# {title}")
    print("  " + " | ".join(f"{k}: {v}" for k, v in info.items()))
    if info.get("loadavg_1min", 0.0) >= 1.0:
        print(f"  WARNING: 1-minute load is {info['loadavg_1min']}: other processes compete for the cores")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a one-line error."""
    name = name.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be auto, cpu or cuda (got {name!r})")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    """Pin the intra-op thread count (0 / None keeps torch's default: one per core)."""
    if threads:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], Any], device: torch.device, warmup: int = 1, repeats: int = 3, min_time: float = 0.0
) -> list[float]:
    """Wall-clock seconds of `repeats` calls (after `warmup` untimed ones), device-synchronised.

    With `min_time` > 0 it keeps calling until that many seconds were spent timing (for very short
    functions)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats or spent < min_time:
        start = time.perf_counter()
        fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return times


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median (the reported number: robust to a stray slow call) plus min / max of timings in seconds."""
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


# ----------------------------------------------------------------------------- FLOPs and peak
def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU flash kernel that
# F.scaled_dot_product_attention dispatches to on CPU: without these the attention matmuls would be
# missing from every CPU MFU (same formulas as the CUDA kernels: 4·B·H·L·S·D forward, 2.5× that backward).
_CPU_SDPA_FORMULAS: dict[Any, Callable[..., int]] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of one call of `fn` (forward and backward ops run inside it are both counted)."""
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_SDPA_FORMULAS)
    with counter:
        fn()
    return int(counter.get_total_flops())


def measure_matmul_peak(
    dtype: torch.dtype,
    device: torch.device,
    sizes: Sequence[int] | None = None,
    min_time: float = 0.3,
) -> float:
    """Best achieved FLOP/s of square matmuls in `dtype` on `device` (the MFU denominator).

    The best over several sizes and calls rather than a median: the peak is what the hardware *can*
    do. Several sizes because the CPU GEMM libraries pick different kernels by shape (on this AMD EPYC
    the bf16 rate differs by 2x between sizes), and each size is called until `min_time` seconds were
    spent on it so that a single lucky or unlucky call decides nothing."""
    if sizes is None:
        sizes = (4096, 8192) if device.type == "cuda" else (512, 1024, 2048, 3072)
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        out = torch.empty(size, size, device=device, dtype=dtype)
        inner = 10 if device.type == "cuda" else 1

        def run(
            a: torch.Tensor = a, b: torch.Tensor = b, out: torch.Tensor = out, inner: int = inner
        ) -> None:
            for _ in range(inner):
                torch.mm(a, b, out=out)

        times = time_fn(run, device, warmup=1, repeats=3, min_time=min_time)
        best = max(best, 2.0 * size**3 * inner / min(times))
    return best


# ----------------------------------------------------------------------------- memory
def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Current resident set size of this process, in MiB (from /proc/self/statm)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


# ----------------------------------------------------------------------------- output
def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table of `rows` (floats rounded to 4 significant digits)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    cells = [[fmt(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    lines = [
        "| " + " | ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(lines)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """Write `payload` (with the command line) to `path` when given."""
    if not path:
        return
    payload = {"command": " ".join([Path(sys.executable).name, *sys.argv]), **payload}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {out}")


def parse_dtypes(names: Sequence[str]) -> list[str]:
    """Validate `--dtypes` names (fp32, bf16, fp16) with a one-line error."""
    for name in names:
        if name not in DTYPES:
            raise SystemExit(f"unknown dtype {name!r}: choose from {', '.join(DTYPES)}")
    return list(names)


__all__ = [
    "DTYPES",
    "REPO_ROOT",
    "count_flops",
    "current_rss_mb",
    "format_table",
    "load_average",
    "machine_info",
    "measure_matmul_peak",
    "parse_dtypes",
    "peak_rss_mb",
    "print_header",
    "resolve_device",
    "set_threads",
    "summarize",
    "synchronize",
    "time_fn",
    "write_json",
]
