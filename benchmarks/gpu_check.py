"""The GPU readiness check: every step of `benchmarks/gpu_check.sh`, each in its own process under its
own time cap, inside one overall budget (8 minutes on one H100/H200), then one summary table.

Steps (each a command of its own, so one failure or hang costs at most its cap), in this order, the
most needed first: what the budget leaves out is reported as skipped and can be rerun with `--only`:
 1. the card's bf16 matmul peak (`benchmarks.matmul_peak`), the denominator of every MFU below;
 2. v1 SimDINO ViT-B/16, 2x224 + 10x96 crops, batch 64, fp16 autocast + grad scaler, `--compile true`
    (`benchmarks.gpu_trainers run`, i.e. `simdino/main_dino.py` on a synthetic ImageFolder), 30 timed
    iterations after 10 warm-up ones;
 3. the data loader's side: 12-crop images/s per worker on 224-px JPEGs on this machine's CPU
    (`benchmarks.augment`), hence the loader workers per GPU the measured step needs;
 4. k-NN of 50k queries against a 1.28M x 768 bank (`benchmarks.knn_scale`);
 5. v2 SimDINOv2 ViT-L/16 (`simdino_config.yaml`: bf16 student backbone), batch 64, through torchrun
    on one rank with `train.sharding=fsdp`;
 6. the largest SimDINOv2 batch that fits, timed at that batch, then the same with
    `student.gradient_checkpointing=true` (`benchmarks.gpu_trainers fit`);
 7. the v1 DINO and v2 DINOv2 baselines at the same shapes;
 8. the `gpu`-marked tests (`pytest -m gpu -v`; outcomes counted even when stopped at the cap).
MFU is the training step's model FLOPs (`benchmarks.flops`, counted analytically) times the step's
images/s (loader waits taken out), over the measured matmul peak.

`--dry-run` runs the same entry points on the CPU with tiny shapes (vit_tiny/8, 32-px crops, a few
iterations, a small bank) so that the script is exercised by the test suite.

    python -m benchmarks.gpu_check --out OUT [--dry-run] [--budget 465]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, format_table

IMAGENET_TRAIN = 1_281_167
EPOCHS = 100
GPUS_PER_NODE = 8
GOAL_HOURS = 12.0
GOAL_MFU_PCT = 45.0
# Facts of the upstream README: training time of the released runs on one node of 8 GPUs (>= 40 GB).
ANCHORS = {
    "SimDINO ViT-B/16, 100 epochs": {"days_on_8_gpus": 1.5},
    "SimDINOv2 ViT-L/16, 100 epochs": {"days_on_8_gpus": 1.0},
}
PYTEST_OUTCOME = re.compile(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", re.MULTILINE)
MAX_LOADER_WORKERS_PER_GPU = 10  # about what an 8-GPU node's CPU cores allow
GPU_BUDGET_S = 465.0  # 7:45 for the steps: with the wheels and the summary, under 8 minutes
DRY_BUDGET_S = 1800.0
DRY_STEP_CAP_S = 300.0


def per_gpu_img_s_for(hours: float) -> float:
    """Images/s each of 8 GPUs must sustain to train 100 ImageNet-1k epochs in `hours`."""
    return IMAGENET_TRAIN * EPOCHS / (hours * 3600.0) / GPUS_PER_NODE


def hours_for(per_gpu_img_s: float) -> float:
    """Hours of 100 ImageNet-1k epochs on 8 GPUs at `per_gpu_img_s` each."""
    return IMAGENET_TRAIN * EPOCHS / (per_gpu_img_s * GPUS_PER_NODE) / 3600.0


@dataclass
class Step:
    name: str
    what: str
    cap_s: float
    argv: Callable[
        [Path, float], list[str]
    ]  # (json path, cap in s) -> command line; the result goes to the path
    skip: str = ""  # non-empty: not run, this is why


def _cpu_workers() -> int:
    return max(1, min(14, (os.cpu_count() or 2) - 2))


# the gpu tests: tracebacks of failures in the step's log, and no test may take the whole step
GPU_PYTEST = ["pytest", "-m", "gpu", "-v", "-rf", "--tb=short", "--timeout", "200", "-p", "no:cacheprovider", "tests"]  # fmt: skip


def build_steps(dry: bool, log: Path, scratch: Path) -> list[Step]:
    py = [sys.executable, "-m"]
    if dry:  # the same entry points, tiny shapes on the CPU
        common = ["--device", "cpu", "--arch", "vit_tiny", "--patch-size", "8", "--global-size", "32",
                  "--local-size", "16", "--local-crops", "2", "--batch", "4", "--warmup", "0", "--iters", "2",
                  "--workers", "0", "--fp32", "--log", str(log)]  # fmt: skip
        v1, v2 = common + ["--compile", "true"], common
        fit = ["--probe-batches", "2", "4", "--max-batch", "8", "--capacity-mib", "4096"]
        fit_gc = fit
        # the dry-run trainers compute in fp32 (bf16 GEMMs of tiny shapes are slow on CPUs): an fp32 peak
        peak = ["--device", "cpu", "--dtype", "fp32", "--sizes", "512", "--min-time", "0.2"]
        knn = ["--device", "cpu", "--bank", "5000", "--queries", "500", "--classes", "100"]
        augment = ["--quick", "--ours-only"]
    else:
        common = ["--device", "cuda", "--workers", str(_cpu_workers()), "--log", str(log),
                  "--global-size", "224", "--local-size", "96", "--local-crops", "10"]  # fmt: skip
        v1 = common + ["--arch", "vit_base", "--patch-size", "16", "--batch", "64", "--warmup", "10", "--iters", "30",
                       "--compile", "true"]  # fmt: skip
        v2 = common + [
            "--arch",
            "vit_large",
            "--patch-size",
            "16",
            "--batch",
            "64",
            "--warmup",
            "5",
            "--iters",
            "30",
        ]  # fmt: skip
        fit = ["--probe-batches", "32", "64"]
        # with recomputation an image costs little memory: probes further apart for the slope; a batch of
        # 1024 already takes one loader worker about 15 s to fill (a worker builds a whole batch)
        fit_gc = ["--probe-batches", "64", "128", "--max-batch", "1024"]
        peak = ["--device", "cuda", "--sizes", "8192", "16384", "--min-time", "1"]
        knn = ["--device", "cuda"]
        augment = ["--images", "60", "--min-time", "3", "--jpegs", "32", "--ours-only"]
    trainers = "benchmarks.gpu_trainers"

    def trainer(mode: str, args: list[str]) -> Callable[[Path, float], list[str]]:
        # the trainer launcher stops its own runs a little before the step's cap
        return lambda out, cap: (
            py + [trainers, mode, *args, "--timeout", str(max(cap - 10, 5)), "--json", str(out)]
        )

    # the batch-64 SimDINOv2 run is also the largest-batch search's second probe
    reuse = ["--reuse", str(scratch / "v2_simdinov2.json")]

    # Ordered by what a short lease most needs; the budget skips what does not fit (rerun those with --only).
    steps = [
        Step(
            "matmul_peak",
            "bf16 matmul peak",
            30,
            lambda out, cap: py + ["benchmarks.matmul_peak", *peak, "--json", str(out)],
        ),
        Step(
            "v1_simdino",
            "v1 SimDINO ViT-B/16 fp16 compiled",
            200,
            trainer("run", v1 + ["--trainer", "v1", "--method", "simdino"]),
        ),
        Step(
            "augment",
            "12-crop augmentation per loader worker",
            40,
            lambda out, cap: py + ["benchmarks.augment", *augment, "--json", str(out)],
        ),
        Step(
            "knn",
            "k-NN 50k x 1.28M x 768",
            60,
            lambda out, cap: py + ["benchmarks.knn_scale", *knn, "--json", str(out)],
        ),
        Step(
            "v2_simdinov2",
            "v2 SimDINOv2 ViT-L/16 bf16 FSDP2",
            75,
            trainer("run", v2 + ["--trainer", "v2", "--method", "simdino"]),
        ),
        Step(
            "v2_largest_batch",
            "v2 SimDINOv2 largest batch, timed",
            120,
            trainer("fit", v2 + fit + reuse + ["--trainer", "v2", "--method", "simdino", "--timed"]),
        ),
        Step(
            "v2_largest_batch_gc",
            "v2 SimDINOv2 largest batch, gradient checkpointing",
            # two probes took ~85 s on an H200, leaving 3 s to confirm the predicted batch of 1024 (2026-12-04)
            220,
            trainer(
                "fit",
                v2 + fit_gc + ["--trainer", "v2", "--method", "simdino", "--gradient-checkpointing", "true"],
            ),
        ),
        Step(
            "v1_dino",
            "v1 DINO ViT-B/16 fp16 compiled",
            120,
            trainer("run", v1 + ["--trainer", "v1", "--method", "dino"]),
        ),
        Step(
            "v2_dinov2",
            "v2 DINOv2 ViT-L/16 bf16 FSDP2",
            75,
            trainer("run", v2 + ["--trainer", "v2", "--method", "dino"]),
        ),
        Step(
            "gpu_tests",
            "pytest -m gpu",
            # 120 s was cut short on an H200 (2026-12-04) before pytest printed why a test failed: a cap that
            # fits the compiled FSDP test, and a per-test limit so that one test cannot take the whole step
            300,
            lambda out, cap: py + GPU_PYTEST,
            skip="dry run: no CUDA (the gpu tests skip themselves)" if dry else "",
        ),
    ]
    if dry:  # a 2-core CPU shared with other work: generous caps, the dry run only has to finish
        for step in steps:
            step.cap_s = DRY_STEP_CAP_S
    return steps


def run_step(step: Step, cap: float, scratch: Path, log: Path) -> dict[str, Any]:
    """Run one step under `cap` seconds (its whole process group is killed at the cap)."""
    out = scratch / f"{step.name}.json"
    output = scratch / f"{step.name}.out"
    cmd = step.argv(out, cap)
    start = time.perf_counter()
    with open(output, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    elapsed = time.perf_counter() - start
    printed = output.read_text(errors="replace")
    with open(log, "a") as f:
        f.write(f"\n===== {step.name}: {' '.join(cmd)}  (cap {cap:.0f} s)\n{printed}")
        f.write(f"===== {step.name}: exit {code} after {elapsed:.1f} s\n")
    result: dict[str, Any] = {"exit": code, "seconds": elapsed, "command": " ".join(cmd)}
    if step.name == "gpu_tests":  # counted from pytest -v lines, so a run stopped at its cap still counts
        result["data"] = pytest_outcomes(printed)
    if code is None:
        result["status"] = f"timeout after {cap:.0f} s"
    elif out.is_file():
        result["data"] = json.loads(out.read_text())
        result["status"] = result["data"].get("status", "ok") if code == 0 else f"exit {code}"
    elif step.name == "gpu_tests":
        result["status"] = "ok" if code == 0 else f"exit {code}"
    else:
        result["status"] = f"exit {code}, no result"
    return result


def pytest_outcomes(printed: str) -> dict[str, Any]:
    """Outcome counts (and the failed tests) from `pytest -v` output lines `path::test OUTCOME`."""
    counts: dict[str, Any] = {}
    failed = []
    for match in PYTEST_OUTCOME.finditer(printed):
        test, outcome = match.groups()
        counts[outcome.lower()] = counts.get(outcome.lower(), 0) + 1
        if outcome in ("FAILED", "ERROR"):
            failed.append(test)
    if failed:
        counts["failed tests"] = " ".join(failed)
    return counts


# ----------------------------------------------------------------------------------------- summary
def _gib(mib: Any) -> float | None:
    return mib / 1024.0 if isinstance(mib, (int, float)) and math.isfinite(mib) else None


def _trainer_row(
    step: Step, res: dict[str, Any], peak_tflops: float | None, row: dict[str, Any]
) -> dict[str, Any]:
    data = res.get("data") or {}
    run = data.get("confirm", data)  # fit: the confirming run at the largest batch
    status = res["status"] if res["status"] != "ok" else data.get("status", "ok")
    why = data.get("why") or ""
    step_img_s = run.get("step_img_per_s")
    mfu = None
    if isinstance(step_img_s, float) and math.isfinite(step_img_s) and peak_tflops:
        mfu = 100.0 * step_img_s * run["gflop_per_img"] / (peak_tflops * 1e3)
    notes = []
    if data.get("largest_batch") is not None:
        predicted = data.get("predicted_batch")
        how = f"predicted {predicted}" if predicted is not None else "found by doubling: memory did not grow"
        notes.append(
            f"largest batch {data['largest_batch']} ({how}, "
            f"{data.get('mib_per_image', float('nan')):.0f} MiB/img)"
        )
    if run.get("data_wait_pct") is not None:
        notes.append(f"loader wait {run['data_wait_pct']:.0f}%")
    if run.get("first_logged_s") is not None:
        notes.append(f"start+warm-up {run['first_logged_s']:.0f} s")
    if run.get("sharding"):
        notes.append(f"sharding {run['sharding']}")
    if why:
        notes.append(why[:160])
    row.update(
        status=status,
        batch=run.get("batch")
        if status == "ok" or "largest_batch" not in data
        else data.get("largest_batch"),
        **{
            "img/s": run.get("img_per_s"),
            "step img/s": step_img_s,
            "GFLOP/img": run.get("gflop_per_img"),
            "MFU %": mfu,
            "peak mem GiB": _gib(run.get("peak_mem_mib")),
        },
        notes="; ".join(notes),
    )
    return row


def summarize(steps: list[Step], results: dict[str, dict[str, Any]], dry: bool) -> dict[str, Any]:
    peak_data = results.get("matmul_peak", {}).get("data") or {}
    peak = peak_data.get("peak_tflops")
    rows: list[dict[str, Any]] = []
    for step in steps:
        res = results[step.name]
        row: dict[str, Any] = {
            "step": step.name,
            "what": step.what,
            "status": res["status"],
            "batch": None,
            "img/s": None,
            "step img/s": None,
            "GFLOP/img": None,
            "MFU %": None,
            "peak mem GiB": None,
            "seconds": res.get("seconds"),
            "notes": "",
        }
        data = res.get("data") or {}
        if step.name.startswith(("v1_", "v2_")) and res["status"] != "skipped":
            _trainer_row(step, res, peak, row)
        elif step.name == "matmul_peak" and data:
            row["notes"] = (
                f"{data['peak_tflops']:.4g} TFLOP/s {data['dtype']} ({data['machine'].get('gpu', 'cpu')})"
            )
        elif step.name == "gpu_tests" and data:
            row["notes"] = ", ".join(f"{k} {v}" for k, v in data.items())
        elif step.name == "knn" and data:
            row["peak mem GiB"] = (data["features_mib"] + data["peak_extra_mib"]) / 1024.0
            row["notes"] = (
                f"{data['queries']} x {data['bank']} x {data['dim']}: {data['knn_s']:.2f} s, "
                f"features {data['features_mib'] / 1024:.2f} GiB + {data['peak_extra_mib']:.0f} MiB extra"
            )
        elif step.name == "augment" and data:
            jpeg = [
                r
                for r in data.get("rows", [])
                if r["data"] == "224px JPEG" and r["method"].startswith("ours")
            ]
            if jpeg:
                row["img/s"] = jpeg[0]["img/s"]
                row["notes"] = "images/s of one single-threaded worker, 2x224 + 10x96 crops"
        if res.get("skip"):
            row["notes"] = res["skip"]
        rows.append(row)
    goals = _goals(rows, peak, dry)
    return {
        "dry_run": dry,
        "peak_tflops": peak,
        "peak_dtype": peak_data.get("dtype"),
        "rows": rows,
        "goals": goals,
        "anchors": ANCHORS,
    }


def _goals(rows: list[dict[str, Any]], peak: float | None, dry: bool) -> dict[str, Any]:
    by = {r["step"]: r for r in rows}
    needed = per_gpu_img_s_for(GOAL_HOURS)
    anchor_v1 = per_gpu_img_s_for(ANCHORS["SimDINO ViT-B/16, 100 epochs"]["days_on_8_gpus"] * 24)
    anchor_v2 = per_gpu_img_s_for(ANCHORS["SimDINOv2 ViT-L/16, 100 epochs"]["days_on_8_gpus"] * 24)
    goals: dict[str, Any] = {
        "needed_img_s_per_gpu_for_12h": needed,
        "anchor_v1_img_s_per_gpu": anchor_v1,
        "anchor_v2_img_s_per_gpu": anchor_v2,
        "goal_mfu_pct": GOAL_MFU_PCT,
    }
    v1 = by["v1_simdino"]
    worker = by["augment"].get("img/s")
    for key in ("img/s", "step img/s"):
        if isinstance(v1.get(key), float) and v1[key] > 0:
            goals[f"v1_hours_100ep_8gpu ({key})"] = hours_for(v1[key])
    if isinstance(v1.get("MFU %"), float):
        goals["v1_mfu_pct"] = v1["MFU %"]
        goals["v1_mfu_goal_met"] = v1["MFU %"] >= GOAL_MFU_PCT
    if isinstance(v1.get("step img/s"), float):
        goals["v1_12h_goal_met"] = v1["step img/s"] >= needed
    if isinstance(worker, float) and worker > 0:
        goals["loader_img_s_per_worker"] = worker
        goals["workers_per_gpu_for_12h_goal"] = needed / worker
        goals["workers_per_gpu_at_45pct_mfu"] = (
            GOAL_MFU_PCT / 100 * peak * 1e3 / v1["GFLOP/img"] / worker
            if peak and v1.get("GFLOP/img")
            else None
        )
        if isinstance(v1.get("step img/s"), float):
            goals["workers_per_gpu_for_measured_v1_step"] = v1["step img/s"] / worker
    for name in ("v2_simdinov2", "v2_largest_batch"):
        if isinstance(by[name].get("step img/s"), float):
            goals[f"{name}_days_100ep_8gpu"] = hours_for(by[name]["step img/s"]) / 24
    return goals


def render(summary: dict[str, Any]) -> str:
    g = summary["goals"]
    columns = [
        "step",
        "status",
        "batch",
        "img/s",
        "step img/s",
        "GFLOP/img",
        "MFU %",
        "peak mem GiB",
        "seconds",
        "notes",
    ]
    lines = [
        "# GPU check"
        + (" (DRY RUN: CPU, tiny shapes; the numbers say nothing about a GPU)" if summary["dry_run"] else ""),
        "",
        f"{summary['peak_dtype']} matmul peak measured in this run: {summary['peak_tflops'] or float('nan'):.4g} TFLOP/s. "
        "img/s: whole iterations (loader included); step img/s: loader waits taken out; MFU: step FLOPs "
        "(benchmarks/flops.py) x step img/s / peak.",
        "",
        format_table(summary["rows"], columns),
        "",
        "## Anchors (upstream README) and goals",
        "",
        f"- Upstream SimDINO ViT-B/16, 100 epochs in ~1.5 days on 8 GPUs: {g['anchor_v1_img_s_per_gpu']:.0f} img/s per GPU "
        f"({g['anchor_v1_img_s_per_gpu'] * 8:.0f} per node, >= 40 GB cards).",
        f"- Upstream SimDINOv2 ViT-L/16, 100 epochs in ~1 day on 8 GPUs: {g['anchor_v2_img_s_per_gpu']:.0f} img/s per GPU.",
        f"- Goal: 100 epochs of ViT-B/16 SimDINO in < 12 h on 8 cards needs {g['needed_img_s_per_gpu_for_12h']:.1f} img/s per GPU "
        f"(1,281,167 x 100 / (12 x 3600) / 8).",
        f"- Goal: >= {GOAL_MFU_PCT:.0f}% bf16 MFU for the ViT-B/16 step.",
    ]
    measured = [
        (
            "v1 SimDINO step MFU %",
            g.get("v1_mfu_pct"),
            "goal met" if g.get("v1_mfu_goal_met") else "goal not met",
        ),
        ("v1 hours for 100 epochs on 8 GPUs (whole iterations)", g.get("v1_hours_100ep_8gpu (img/s)"), ""),
        (
            "v1 hours for 100 epochs on 8 GPUs (step alone)",
            g.get("v1_hours_100ep_8gpu (step img/s)"),
            "12-h goal met" if g.get("v1_12h_goal_met") else "12-h goal not met",
        ),
        ("v2 SimDINOv2 days for 100 epochs on 8 GPUs (batch 64)", g.get("v2_simdinov2_days_100ep_8gpu"), ""),
        (
            "v2 SimDINOv2 days for 100 epochs on 8 GPUs (largest batch)",
            g.get("v2_largest_batch_days_100ep_8gpu"),
            "",
        ),
        ("loader: 12-crop img/s per worker on this CPU", g.get("loader_img_s_per_worker"), ""),
        ("loader workers per GPU for the 12-h goal", g.get("workers_per_gpu_for_12h_goal"), ""),
        (
            "loader workers per GPU for the measured v1 step",
            g.get("workers_per_gpu_for_measured_v1_step"),
            "",
        ),
        (
            "loader workers per GPU at 45% MFU",
            g.get("workers_per_gpu_at_45pct_mfu"),
            f"more than {MAX_LOADER_WORKERS_PER_GPU} per GPU: the loader limits"
            if (g.get("workers_per_gpu_at_45pct_mfu") or 0) > MAX_LOADER_WORKERS_PER_GPU
            else "",
        ),
    ]
    lines += ["", "Measured:", ""]
    for name, value, verdict in measured:
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else "not measured"
        judged = verdict and value is not None and not summary["dry_run"]  # tiny CPU shapes prove nothing
        lines.append(f"- {name}: {shown}" + (f" ({verdict})" if judged else ""))
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for summary.md, summary.json, log.txt, trainers.log")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny shapes")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"seconds for all steps together (default {GPU_BUDGET_S:.0f}; dry run {DRY_BUDGET_S:.0f})",
    )
    p.add_argument("--only", nargs="+", default=None, help="run only these steps (names as in the table)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log, trainer_log = out / "log.txt", out / "trainers.log"
    for path in (log, trainer_log):
        path.write_text("")
    if args.budget is None:
        args.budget = DRY_BUDGET_S if args.dry_run else GPU_BUDGET_S
    deadline = time.perf_counter() + args.budget
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        steps = build_steps(args.dry_run, trainer_log, Path(tmp))
        names = {s.name for s in steps}
        if args.only and not set(args.only) <= names:
            raise SystemExit(
                f"--only: unknown step(s) {sorted(set(args.only) - names)}; steps: {', '.join(sorted(names))}"
            )
        for step in steps:
            left = deadline - time.perf_counter()
            if args.only and step.name not in args.only:
                results[step.name] = {"status": "skipped", "skip": "not in --only"}
            elif step.skip:
                results[step.name] = {"status": "skipped", "skip": step.skip}
            elif left < 20:
                results[step.name] = {"status": "skipped", "skip": f"budget of {args.budget:.0f} s spent"}
            else:
                results[step.name] = run_step(step, min(step.cap_s, left), Path(tmp), log)
            print(
                f"{step.name:<22} {results[step.name]['status']}  "
                f"({results[step.name].get('seconds', 0):.0f} s)",
                flush=True,
            )
    summary = summarize(steps, results, args.dry_run)
    summary["steps"] = results
    text = render(summary)
    print("\n" + text)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"wrote {out / 'summary.md'}, {out / 'summary.json'}, {log}, {trainer_log}")
    return summary


if __name__ == "__main__":
    main()
