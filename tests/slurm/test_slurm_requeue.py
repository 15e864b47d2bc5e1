"""Both trees' submitit launchers on a real SLURM cluster (CPU-only partition): submitted as the README
says (`--cluster auto` finds the cluster), requeued mid-run with `scontrol requeue`, resumed from their
checkpoints with contiguous logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from single_node_slurm import APT_PACKAGES, SlurmCluster, missing_programs

REPO_ROOT = Path(__file__).resolve().parents[2]
V1_EPOCHS = 10  # long enough that v1 is still running while v2 is being submitted
V2_EPOCHS = 2
V2_EPOCH_LEN = 3  # 12 images / batch 4
TIMEOUT_S = 480  # a guard for a loaded machine; about 150 s on a busy 2-core one


@pytest.fixture(scope="module")
def twelve_images(tiny_imagefolder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slurm_data") / "train"
    for class_dir in sorted(p for p in (tiny_imagefolder / "train").iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:4]:
            shutil.copy(image, root / class_dir.name / image.name)
    return root


def _submit(argv: list[str], cwd: Path, cluster: SlurmCluster) -> tuple[str, str]:
    """Run a launcher as a user does; return (job id, console output)."""
    env = dict(cluster.env, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    match = re.search(r"Submitted SLURM job (\d+)", output)
    assert match, output
    return match.group(1), output


@dataclass
class Run:
    """One submitted job, how far it got (`progress()`: units done), and when to requeue it."""

    name: str
    job_id: str
    output_dir: Path
    progress: Callable[[], int]
    requeue_at: int
    total: int
    requeued_at_progress: int | None = None
    states: list[str] = field(default_factory=list)


def _v1_epochs_logged(output_dir: Path) -> list[int]:
    log = output_dir / "log.txt"
    return [json.loads(line)["epoch"] for line in log.read_text().splitlines()] if log.is_file() else []


def _v2_iterations_logged(output_dir: Path) -> list[int]:
    log = output_dir / "training_metrics.json"
    return [json.loads(line)["iteration"] for line in log.read_text().splitlines()] if log.is_file() else []


def _log_tail(run: Run) -> str:
    texts = [
        p.read_text(errors="replace")[-2500:] for p in sorted(run.output_dir.glob("submitit_logs/*_log.*"))
    ]
    return f"{run.name} job {run.job_id}:\n" + "\n".join(texts)


@pytest.mark.slurm
@pytest.mark.slow
def test_both_launchers_requeued_mid_run_resume_with_contiguous_logs(slurm_cluster, twelve_images, tmp_path):
    started = time.monotonic()
    v1_out, v2_out = tmp_path / "v1", tmp_path / "v2"
    # 1 CPU each: the two jobs run side by side on the 2-CPU node; no GPU is requested (--ngpus 0).
    launcher = ["--nodes", "1", "--ngpus", "0", "--cpus_per_task", "1", "--timeout", "10"]
    v1_id, v1_console = _submit(
        ["run_with_submitit.py", *launcher, "--output_dir", str(v1_out), "--data_path", str(twelve_images),
         "--arch", "vit_tiny", "--patch_size", "4", "--global_crops_size", "32", "--local_crops_size", "16",
         "--local_crops_number", "2", "--batch_size_per_gpu", "4", "--hidden_dim", "64", "--z_dim", "32",
         "--epochs", str(V1_EPOCHS), "--warmup_epochs", "1", "--num_workers", "0", "--compile", "false",
         "--use_fp16", "false", "--saveckp_freq", "0"],
        REPO_ROOT / "simdino", slurm_cluster,
    )  # fmt: skip
    assert "--cluster auto: Slurmctld" in v1_console and "running on SLURM" in v1_console
    assert f"squeue -j {v1_id}" in v1_console and str(v1_out) in v1_console
    v2_id, _ = _submit(
        ["simdinov2/run/train/train.py", *launcher, "--config-file", "simdinov2/configs/simdino_config.yaml",
         "--output-dir", str(v2_out), f"train.dataset_path=ImageFolder:root={twelve_images}",
         "student.arch=vit_tiny", "student.patch_size=4", "crops.global_crops_size=16", "crops.local_crops_size=8",
         "crops.local_crops_number=2", "dino.head_hidden_dim=64", "dino.head_bottleneck_dim=32",
         "ibot.head_hidden_dim=64", "ibot.head_bottleneck_dim=32", "train.batch_size_per_gpu=4", "train.num_workers=0", "train.print_freq=1", "compile=false",
         f"optim.epochs={V2_EPOCHS}", "optim.warmup_epochs=1", "checkpointing.period=1",
         "evaluation.eval_period_epochs=1"],
        REPO_ROOT, slurm_cluster,
    )  # fmt: skip
    runs = [
        Run("v1", v1_id, v1_out, lambda: len(_v1_epochs_logged(v1_out)), requeue_at=1, total=V1_EPOCHS),
        Run(
            "v2",
            v2_id,
            v2_out,
            lambda: len(_v2_iterations_logged(v2_out)),
            requeue_at=2,
            total=V2_EPOCHS * V2_EPOCH_LEN,
        ),
    ]

    # Requeue each job once it has checkpointed some progress, then let it finish.
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        for run in runs:
            state = slurm_cluster.job_state(run.job_id)
            if not run.states or run.states[-1] != state:
                run.states.append(state)
            if run.requeued_at_progress is None and state == "RUNNING" and run.progress() >= run.requeue_at:
                run.requeued_at_progress = run.progress()
                slurm_cluster.run(["scontrol", "requeue", run.job_id])
            elif run.requeued_at_progress is not None and state == "PENDING":
                # SLURM holds a requeued job for 2 minutes before it is eligible again: start it now.
                slurm_cluster.run(["scontrol", "update", f"JobId={run.job_id}", "StartTime=now"], check=False)
        if all(run.states[-1] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for run in runs):
            break
        assert time.monotonic() < deadline, "\n".join(f"{r.name}: {r.states}\n{_log_tail(r)}" for r in runs)
        time.sleep(0.5)

    for run in runs:
        assert run.states[-1] == "COMPLETED", f"{run.states}\n{_log_tail(run)}"
        assert run.requeued_at_progress is not None, f"{run.name} finished before it could be requeued"
        assert run.requeued_at_progress < run.total, (
            f"{run.name} was requeued after its last unit: not mid-run"
        )
        show = slurm_cluster.run(["scontrol", "show", "job", "-o", run.job_id])
        assert "Restarts=1" in show, show
        assert "DUE TO JOB REQUEUE" in "".join(
            p.read_text() for p in run.output_dir.glob("submitit_logs/*_log.*")
        )

    # v1: resumed from checkpoint.pth at the epoch after the last logged one; one log line per epoch.
    resumed_at = [
        int(e) for e in re.findall(r"resuming from epoch (\d+)", (v1_out / "output.log").read_text())
    ]
    assert len(resumed_at) == 1 and resumed_at[0] >= runs[0].requeue_at
    assert _v1_epochs_logged(v1_out) == list(range(V1_EPOCHS))
    # v2: continued at the iteration after its last checkpoint; one metrics row per iteration.
    console = "".join(p.read_text() for p in v2_out.glob("submitit_logs/*_log.*"))
    resumed_at = [int(i) for i in re.findall(r"continuing at iteration (\d+)", console)]
    assert len(resumed_at) == 1 and resumed_at[0] >= runs[1].requeue_at, console[-3000:]
    assert _v2_iterations_logged(v2_out) == list(range(V2_EPOCHS * V2_EPOCH_LEN))
    print(f"slurm requeue test: {time.monotonic() - started:.0f} s; states {[r.states for r in runs]}")


@pytest.mark.slurm
def test_installed_but_unconfigured_slurm_is_not_used(tmp_path):
    """The newcomer's machine: Debian's SLURM installed, no configuration. `--cluster auto` runs locally and
    quotes SLURM's own complaint, in one line, without waiting."""
    if missing_programs():
        pytest.skip(f"SLURM is not installed: as root, apt-get install {APT_PACKAGES}")
    if Path("/etc/slurm/slurm.conf").exists():
        pytest.skip("this machine has a SLURM configuration (/etc/slurm/slurm.conf)")
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin"])
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from simdinov2.run.submit import detect_cluster; print(json.dumps(detect_cluster()))",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    cluster, why = json.loads(result.stdout)
    assert cluster == "local" and why.startswith("no SLURM cluster answers (scontrol: fatal: "), why
    assert "\n" not in why
    assert time.monotonic() - started < 30
