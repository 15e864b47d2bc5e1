"""Throughput and memory of the real trainers, driven through their command lines on a synthetic dataset.

Nothing here reaches into the trainers: each measurement launches `simdino/main_dino.py` (v1) or
`torchrun … simdinov2/train/train.py` (v2, FSDP2 on one rank) on an ImageFolder of symbolic links to a
few dozen JPEGs, and reads what the trainer prints. Both print one progress line per logged iteration
(`[ i/n]  eta: …`, every 10 iterations in v1, every iteration in v2 with `train.print_freq=1`) after
the iteration's `loss.item()`, so the wall time between the lines of iterations `warmup` and
`warmup + iters`, taken as they arrive, is the time of `iters` whole iterations (data loading
included). `training_metrics.json` gives the share of that time spent waiting for the loader, so the
step alone can be told apart from an input-bound run. Once the last timed line is seen the run is
stopped (its process group gets SIGTERM): no end-of-epoch checkpoint is waited for.

Peak memory is sampled every 50 ms through NVML (or `nvidia-smi`) on CUDA (device memory in use minus what was in use
before the launch: the CUDA context plus everything PyTorch's caching allocator reserved, i.e. what
decides whether a batch fits), and is the peak resident set size of the run's processes on the CPU.

    python -m benchmarks.gpu_trainers run --trainer v1 --method simdino --arch vit_base --batch 64 --json r.json
    python -m benchmarks.gpu_trainers fit --trainer v2 --method simdino --gradient-checkpointing true --json f.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.augment import write_jpegs
from benchmarks.common import REPO_ROOT, write_json
from benchmarks.flops import StepShape

V1_SCRIPT = REPO_ROOT / "simdino" / "main_dino.py"
V2_SCRIPT = REPO_ROOT / "simdinov2" / "train" / "train.py"
V2_CONFIGS = {
    "simdino": REPO_ROOT / "simdinov2" / "configs" / "simdino_config.yaml",
    "dino": REPO_ROOT / "simdinov2" / "configs" / "dinov2_config.yaml",
}
V1_LOG_EVERY = 10  # main_dino.py logs iterations 0, 10, 20, ... and the last of the epoch
PROGRESS_LINE = re.compile(r"\[\s*(\d+)/(\d+)\]\s+eta:")
SHARDING_LINE = re.compile(r"sharding: (\w+) over (\d+) process")  # v2's account of what it really uses
OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "out of memory")
GC_KEY = "student.gradient_checkpointing"
# v2 registers and heads per recipe (the config files): used only for the FLOP count.
V2_REGISTERS = 4
V2_PROTOTYPES = {"simdino": 0, "dino": 65536}
V1_PROTOTYPES = {"simdino": 0, "dino": 65536}
# `--fp32`: every v2 module computes in float32 (the CPU dry run: bf16 GEMMs of tiny shapes are slow there).
V2_FP32 = [
    f"compute_precision.{model}.{module}.mixed_precision.{key}=fp32"
    for model, keys in (("teacher", ("param_dtype",)), ("student", ("param_dtype", "reduce_dtype")))
    for module in ("backbone", "dino_head", "ibot_head")
    for key in keys
]


@dataclass
class TrainerRun:
    """One launch of a trainer: what it trains and how long it is timed."""

    trainer: str  # v1 | v2
    method: str  # simdino | dino (v2: simdino_config.yaml | dinov2_config.yaml)
    arch: str
    patch_size: int
    global_size: int
    local_size: int
    local_crops: int
    batch: int
    warmup: int  # iterations before the timed window (compilation, allocator and loader warm-up)
    iters: int  # timed iterations
    workers: int
    device: str  # cuda | cpu
    compile: bool
    fp32: bool = False  # True: no mixed precision (default: the recipe's, v1 fp16 autocast + grad scaler)
    overrides: list[str] = field(default_factory=list)  # extra v2 key=value

    def last_iteration(self) -> int:
        return self.warmup + self.iters

    def step_shape(self) -> StepShape:
        v2 = self.trainer == "v2"
        prototypes = (V2_PROTOTYPES if v2 else V1_PROTOTYPES)[self.method]
        return StepShape(
            self.arch,
            self.patch_size,
            self.global_size,
            self.local_size,
            self.local_crops,
            num_register_tokens=V2_REGISTERS if v2 else 0,
            prototypes=prototypes,
        )

    def label(self) -> str:
        name = {
            ("v1", "simdino"): "SimDINO",
            ("v1", "dino"): "DINO",
            ("v2", "simdino"): "SimDINOv2",
            ("v2", "dino"): "DINOv2",
        }[(self.trainer, self.method)]
        return f"{self.trainer} {name} {self.arch}/{self.patch_size} b{self.batch}"


def validate(run: TrainerRun) -> None:
    if run.trainer not in ("v1", "v2") or run.method not in ("simdino", "dino"):
        raise SystemExit(
            f"--trainer must be v1|v2 and --method simdino|dino (got {run.trainer} {run.method})"
        )
    if run.iters < 1 or run.warmup < 0 or run.batch < 1:
        raise SystemExit("--iters and --batch must be >= 1, --warmup >= 0")
    if run.trainer == "v1" and run.warmup % V1_LOG_EVERY:
        raise SystemExit(f"v1 logs every {V1_LOG_EVERY} iterations: --warmup must be a multiple of it (or 0)")


# ------------------------------------------------------------------------------------------- dataset
def image_folder(scratch: Path, pool: list[Path], count: int) -> Path:
    """An ImageFolder of `count` images (one class): symbolic links cycling through `pool`."""
    root = scratch / f"data_{count}"
    images = root / "synthetic"
    if not images.is_dir():
        tmp = scratch / f"data_{count}.tmp"
        (tmp / "synthetic").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (tmp / "synthetic" / f"img_{i:07d}.jpg").symlink_to(pool[i % len(pool)])
        tmp.rename(root)
    return root


def jpeg_pool(scratch: Path, size: int, n: int = 48) -> list[Path]:
    """`n` distinct size-px JPEGs: cut from scikit-image's sample photographs (as benchmarks/augment.py),
    or smooth random colour fields where those are unavailable."""
    folder = scratch / f"jpegs_{size}"
    if not folder.is_dir():
        tmp = scratch / f"jpegs_{size}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            write_jpegs(tmp, n, size=size)
        except (ImportError, OSError, ValueError):
            rng = np.random.default_rng(0)
            for i in range(n):
                coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(
                    tmp / f"img_{i:04d}.jpg", quality=90
                )
        tmp.rename(folder)
    return sorted(p.resolve() for p in folder.glob("*.jpg"))


# ------------------------------------------------------------------------------------------- command
def trainer_command(run: TrainerRun, data: Path, output: Path) -> list[str]:
    if run.trainer == "v1":
        return [
            sys.executable, str(V1_SCRIPT), "--arch", run.arch, "--patch_size", str(run.patch_size),
            "--global_crops_size", str(run.global_size), "--local_crops_size", str(run.local_size),
            "--local_crops_number", str(run.local_crops), "--batch_size_per_gpu", str(run.batch),
            "--use_simdino", str(run.method == "simdino").lower(), "--use_fp16", str(not run.fp32).lower(),
            "--compile", str(run.compile).lower(), "--device", run.device, "--epochs", "1",
            "--warmup_epochs", "0", "--saveckp_freq", "0", "--num_workers", str(run.workers),
            "--data_path", str(data), "--output_dir", str(output),
        ]  # fmt: skip
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(V2_SCRIPT),
        "--config-file", str(V2_CONFIGS[run.method]), "--output-dir", str(output), "--no-resume",
        f"train.dataset_path=ImageFolder:root={data}", f"train.batch_size_per_gpu={run.batch}",
        f"train.num_workers={run.workers}", "train.print_freq=1", "train.sharding=fsdp",
        f"train.device={run.device}", f"compile={str(run.compile).lower()}", f"student.arch={run.arch}",
        f"student.patch_size={run.patch_size}", f"crops.global_crops_size={run.global_size}",
        f"crops.local_crops_size={run.local_size}", f"crops.local_crops_number={run.local_crops}",
        # no resumable checkpoint or teacher snapshot inside the timed window
        "checkpointing.period=1000000000", "evaluation.eval_period_epochs=1000000",
        *(V2_FP32 if run.fp32 else []), *run.overrides,
    ]  # fmt: skip


def dataset_size(run: TrainerRun) -> int:
    # v1: exactly one epoch whose last iteration is the last timed one (its progress line is printed);
    # v2 samples an infinite stream, any size of at least one batch does.
    if run.trainer == "v1":
        return run.batch * (run.last_iteration() + 1)
    return run.batch * 2


# ------------------------------------------------------------------------------------------- memory
def _nvml_reader() -> tuple[Any, float]:
    """(a function returning the MiB in use on GPU 0, that GPU's total MiB): NVML, else `nvidia-smi`."""
    try:
        import pynvml  # nvidia-ml-py, beside PyTorch's CUDA builds

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return (lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20), (
            pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20
        )
    except Exception as exc:  # no bindings (ImportError) or no library / driver (pynvml's own NVMLError)
        nvml_error = f"{type(exc).__name__}: {exc}"
    query = ["nvidia-smi", "--id=0", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"]

    def read() -> list[float]:
        try:
            out = subprocess.run(query, capture_output=True, text=True, check=True).stdout
            return [float(v) for v in out.split(",")]
        except (OSError, subprocess.CalledProcessError, ValueError) as err:
            raise SystemExit(f"cannot read GPU memory (NVML: {nvml_error}; nvidia-smi: {err})") from None

    return (lambda: read()[0]), read()[1]


class GpuMemorySampler:
    """Peak of the device memory in use while the run lasts (sampled every `period` s), minus what was
    in use before it."""

    def __init__(self, period: float = 0.05) -> None:
        self.used_mib, self.total_mib = _nvml_reader()
        self.baseline_mib = self.used_mib()
        self.peak_mib = self.baseline_mib
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self.used_mib())
            time.sleep(self._period)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mib - self.baseline_mib


def gpu_capacity_mib() -> float:
    return _nvml_reader()[1]


# ------------------------------------------------------------------------------------------- launch
def _read_lines(stream: Any, lines: queue.Queue) -> None:
    for line in stream:
        lines.put((time.perf_counter(), line))
    lines.put((time.perf_counter(), None))


def _stop_group(proc: subprocess.Popen, grace: float = 15.0) -> float:
    """SIGTERM the run's process group, SIGKILL after `grace` s; reap it. Returns its peak RSS in MiB."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return usage.ru_maxrss / 1024.0
            time.sleep(0.1)
    return float("nan")


def _reap(proc: subprocess.Popen) -> float:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024.0


def _metrics_at(output: Path, iteration: int) -> dict[str, Any] | None:
    path = output / "training_metrics.json"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("iteration") == iteration:
            return record
    return None


def _failure(lines: list[str]) -> tuple[str, str]:
    """(status, the line that says why) of a run that ended before its last timed iteration."""
    text = "".join(lines)
    if any(marker in text for marker in OOM_MARKERS):
        return "oom", next((ln.strip() for ln in lines if any(m in ln for m in OOM_MARKERS)), "out of memory")
    errors = [ln.strip() for ln in lines if ln.strip().startswith(("error:", "main_dino.py: error:"))]
    errors += [ln.strip() for ln in lines if re.match(r"^\w*(Error|Exception)\b", ln.strip())]
    return "error", (errors[-1] if errors else (lines[-1].strip() if lines else "no output"))


def launch(run: TrainerRun, scratch: Path, timeout: float, log: Path | None = None) -> dict[str, Any]:
    """Launch `run`, time its window, stop it; a result row (status ok | oom | error | timeout)."""
    validate(run)
    pool = jpeg_pool(scratch, 224 if run.global_size > 64 else 64)
    data = image_folder(scratch, pool, dataset_size(run))
    output = Path(tempfile.mkdtemp(prefix="run_", dir=scratch))
    cmd = trainer_command(run, data, output)
    # unbuffered: progress lines are timed as they arrive. One intra-op thread unless told otherwise: on a
    # GPU the trainer's CPU work is small, and loader workers and inductor's compile pool need the cores.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    sampler = GpuMemorySampler() if run.device == "cuda" else None
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: dict[int, float] = {}
    output_lines: list[str] = []
    tail: deque[str] = deque(maxlen=40)
    status, why, sharding = "", "", ""
    first, last = run.warmup, run.last_iteration()
    while True:
        remaining = start + timeout - time.perf_counter()
        if remaining <= 0:
            status, why = "timeout", f"no progress line for iteration {last} within {timeout:.0f} s"
            break
        try:
            stamp, line = lines.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            continue
        if line is None:  # the run ended on its own before its last timed iteration
            break
        output_lines.append(line)
        tail.append(line)
        if run.trainer == "v2" and (used := SHARDING_LINE.search(line)):
            sharding = f"{used.group(1)} over {used.group(2)} process(es)"
        match = PROGRESS_LINE.search(line)
        if match:
            seen[int(match.group(1))] = stamp
            if last in seen:
                status = "ok"
                break
    # stop what is still running; a run that closed its output is exiting on its own: wait for it
    rss_mib = _stop_group(proc) if status in ("ok", "timeout") else _reap(proc)
    if not status:
        status, why = _failure(output_lines)
    peak_gpu_mib = sampler.stop() if sampler is not None else None
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n" + "".join(output_lines) + f"[{status}] {why}\n")
    shape = run.step_shape()
    row: dict[str, Any] = {
        "run": run.label(),
        "status": status,
        "why": why,
        **asdict(run),
        "sharding": sharding or None,
        "gflop_per_img": shape.flops_per_image() / 1e9,
        "peak_mem_mib": peak_gpu_mib if peak_gpu_mib is not None else rss_mib,
        "mem_kind": "GPU memory in use (NVML)" if peak_gpu_mib is not None else "peak RSS of the run (CPU)",
        "wall_s": time.perf_counter() - start,
        "command": " ".join(cmd),
        "tail": list(tail)[-12:],
    }
    if first in seen:
        row["first_logged_s"] = seen[first] - start  # launch, build, compile and warm-up iterations
    if status == "ok":
        sec_per_iter = (seen[last] - seen[first]) / run.iters
        row["sec_per_iter"] = sec_per_iter
        row["img_per_s"] = run.batch / sec_per_iter
        record = _metrics_at(output, last)
        if record and record.get("iter_time"):
            # windowed averages of the last iterations: the share of an iteration spent waiting for data
            wait = min(max(float(record["data_time"]) / float(record["iter_time"]), 0.0), 1.0)
            row["data_wait_pct"] = 100.0 * wait
            row["step_img_per_s"] = run.batch / (sec_per_iter * (1.0 - wait)) if wait < 1.0 else float("nan")
    return row


# ------------------------------------------------------------------------------------------- fit
def _same_config(run: TrainerRun, row: dict[str, Any]) -> bool:
    """Whether `row` (a `launch` result) measured `run`'s configuration, whatever its batch and timing."""
    timing = ("batch", "warmup", "iters")
    return row.get("status") == "ok" and all(
        row.get(k) == v for k, v in asdict(run).items() if k not in timing
    )


def fit(
    run: TrainerRun,
    scratch: Path,
    timeout: float,
    probe_batches: tuple[int, int],
    capacity_mib: float,
    max_batch: int,
    timed: bool,
    log: Path | None = None,
    known: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Largest batch of `run` that fits in `capacity_mib`: peak memory at two probe batches (two
    iterations each), the batch where the straight line through them reaches 95% of the capacity
    (rounded down to a multiple of 8, at most `max_batch`), then one run at that batch to confirm it
    (timed like `launch` when `timed`; one step lower, 85%, if it does not fit). `known`, an earlier
    `launch` result of the same configuration at one of the probe batches, stands in for that probe."""
    deadline = time.perf_counter() + timeout
    probe = replace(run, warmup=0, iters=1)
    points: list[tuple[int, float]] = []
    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "run": f"{run.label()} largest batch",
        "capacity_mib": capacity_mib,
        "runs": runs,
        "overrides": run.overrides,
    }
    for batch in probe_batches:
        if known is not None and known.get("batch") == batch and _same_config(run, known):
            points.append((batch, known["peak_mem_mib"]))
            result["reused"] = f"batch {batch} from an earlier run"
            continue
        row = launch(replace(probe, batch=batch), scratch, deadline - time.perf_counter(), log)
        runs.append(row)
        if row["status"] != "ok":
            result.update(status=row["status"], why=row["why"], largest_batch=None)
            if row["status"] == "oom":
                result["why"] = f"batch {batch} does not fit: {row['why']}"
            return result
        points.append((batch, row["peak_mem_mib"]))
    (b1, m1), (b2, m2) = points
    per_image = (m2 - m1) / (b2 - b1)
    fixed = m2 - per_image * b2
    result.update(mib_per_image=per_image, fixed_mib=fixed)
    attempt = run if timed else probe
    if per_image <= 0:
        # The sampled peak did not grow with the batch (with recomputation the two probes can sit within
        # the sampler's noise): no line to extrapolate, so double from the larger probe instead of
        # jumping to `max_batch`, whose first batch alone can outlast the deadline.
        result["predicted_batch"] = None
        return _fit_by_doubling(attempt, b2, max_batch, scratch, deadline, log, result)
    predicted = int((0.95 * capacity_mib - fixed) / per_image)
    predicted = max(b2, min(max_batch, predicted // 8 * 8))
    result["predicted_batch"] = predicted
    for batch in dict.fromkeys((predicted, max(b2, int(0.85 * predicted) // 8 * 8))):
        row = launch(replace(attempt, batch=batch), scratch, deadline - time.perf_counter(), log)
        runs.append(row)
        if row["status"] == "ok":
            result.update(status="ok", why="", largest_batch=batch, confirm=row)
            return result
        if row["status"] != "oom":
            break
    result.update(status=runs[-1]["status"], why=runs[-1]["why"], largest_batch=b2)
    return result


def _fit_by_doubling(
    attempt: TrainerRun,
    fits: int,
    max_batch: int,
    scratch: Path,
    deadline: float,
    log: Path | None,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Largest of `fits`, 2x`fits`, 4x`fits`, ... (at most `max_batch`) that runs before `deadline`; the
    first out-of-memory, failure or timeout ends the search and the last batch that ran is reported."""
    runs = result["runs"]
    result.update(
        status="ok",
        why="memory did not grow between the probes: largest of doubling batches",
        largest_batch=fits,
    )
    batch = fits * 2
    while batch <= max_batch and deadline - time.perf_counter() > 0:
        row = launch(replace(attempt, batch=batch), scratch, deadline - time.perf_counter(), log)
        runs.append(row)
        if row["status"] != "ok":
            result["stopped"] = f"batch {batch}: {row['status']} ({row['why']})"
            break
        result.update(largest_batch=batch, confirm=row)
        batch *= 2
    return result


# ------------------------------------------------------------------------------------------- CLI
def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("run", "fit"), help="run: one timed run; fit: largest batch that fits")
    p.add_argument("--trainer", choices=("v1", "v2"), required=True)
    p.add_argument("--method", choices=("simdino", "dino"), default="simdino")
    p.add_argument("--arch", default="vit_base")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--local-crops", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations (v1: a multiple of 10)")
    p.add_argument("--iters", type=int, default=30, help="timed iterations")
    p.add_argument("--workers", type=int, default=10, help="data-loader workers")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--compile", type=_bool, default=False)
    p.add_argument("--fp32", action="store_true", help="no mixed precision (CPU dry run)")
    p.add_argument(
        "--gradient-checkpointing",
        type=_bool,
        default=None,
        help=f"v2: set {GC_KEY} (default: leave the config's value)",
    )
    p.add_argument("--probe-batches", type=int, nargs=2, default=(32, 64), help="fit: the two probe batches")
    p.add_argument("--max-batch", type=int, default=2048, help="fit: never try more")
    p.add_argument("--capacity-mib", type=float, default=0.0, help="fit: memory to fill (0: the GPU's)")
    p.add_argument("--timed", action="store_true", help="fit: time the confirming run like `run`")
    p.add_argument(
        "--reuse",
        default=None,
        help="fit: JSON of an earlier `run` of the same configuration at a probe batch (skips that probe)",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds for everything this command launches"
    )
    p.add_argument(
        "--scratch", default=None, help="folder for the dataset and run outputs (default: a temp dir)"
    )
    p.add_argument("--log", default=None, help="append every launched command and its output here")
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    overrides = (
        []
        if args.gradient_checkpointing is None
        else [f"{GC_KEY}={str(args.gradient_checkpointing).lower()}"]
    )
    if overrides and args.trainer != "v2":
        raise SystemExit("--gradient-checkpointing is a v2 option (student.gradient_checkpointing)")
    run = TrainerRun(
        args.trainer,
        args.method,
        args.arch,
        args.patch_size,
        args.global_size,
        args.local_size,
        args.local_crops,
        args.batch,
        args.warmup,
        args.iters,
        args.workers,
        args.device,
        args.compile,
        args.fp32,
        overrides,
    )
    validate(run)
    log = Path(args.log) if args.log else None
    with tempfile.TemporaryDirectory(prefix="gpu_trainers_", dir=args.scratch) as tmp:
        if args.mode == "run":
            result = launch(run, Path(tmp), args.timeout, log)
        else:
            capacity = args.capacity_mib or (gpu_capacity_mib() if args.device == "cuda" else 0.0)
            if capacity <= 0:
                raise SystemExit("fit on the CPU needs --capacity-mib (the memory to fill)")
            known = (
                json.loads(Path(args.reuse).read_text())
                if args.reuse and Path(args.reuse).is_file()
                else None
            )
            result = fit(
                run,
                Path(tmp),
                args.timeout,
                tuple(args.probe_batches),
                capacity,
                args.max_batch,
                args.timed,
                log,
                known,
            )
    shown = {k: v for k, v in result.items() if k not in ("tail", "runs", "confirm", "command")}
    print(json.dumps(shown, indent=1, default=str))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
