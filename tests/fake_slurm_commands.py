"""Fake SLURM commands for the launcher tests, so that they never depend on what the host has installed.

`install_fake_slurm(folder, monkeypatch)` writes a fake for every SLURM command (the ones submitit and
`simdinov2/run/submit.py` call behave like a small cluster that accepts jobs; the others fail with a line
saying they are not faked) and puts `folder` first on PATH: the host's own SLURM, installed or not, is
never reached by name. Tests replace a fake with `write_command(folder, name, body)`, or delete it.
Every call is appended to `folder / "calls.log"` (one line per call: the command and its arguments).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FAKE_JOB_ID = "4242"
SUBMITTED_SCRIPT = "submitted.sh"
# What the fakes do by default: `sbatch` keeps the batch script (SUBMITTED_SCRIPT in the folder) and
# accepts it; `srun` is only looked for by submitit on the submitting side (jobs never run here).
DEFAULT_BODIES = {
    "sbatch": f'cp "$1" "${{0%/*}}/{SUBMITTED_SCRIPT}"; echo "Submitted batch job {FAKE_JOB_ID}"',
    "srun": "echo 'fake srun: jobs do not run under the fake SLURM' >&2; exit 1",
    "scontrol": 'if [ "$1" = ping ]; then echo "Slurmctld(primary) at fake-node is UP"; fi',
    "sacct": "exit 0",  # no rows: submitit reads the job state as UNKNOWN
    "squeue": "exit 0",
    "sinfo": "exit 0",
    "scancel": "exit 0",
}
# Every other client command and daemon of SLURM and munge: shadowed so that the host's never runs.
OTHER_SLURM_PROGRAMS = (
    "sacctmgr",
    "salloc",
    "sattach",
    "sbcast",
    "scrontab",
    "sdiag",
    "sh5util",
    "sprio",
    "sreport",
    "sshare",
    "sstat",
    "strigger",
    "sview",
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "slurmstepd",
    "munge",
    "munged",
    "mungekey",
    "unmunge",
    "remunge",
)
SLURM_PROGRAMS = (*DEFAULT_BODIES, *OTHER_SLURM_PROGRAMS)


def write_command(folder: Path, name: str, body: str) -> Path:
    """A `/bin/sh` script `folder/name` running `body` (after logging its call to calls.log)."""
    path = Path(folder) / name
    log = 'echo "${0##*/} $*" >> "${0%/*}/calls.log"\n'  # shell built-ins only: PATH may hold only the fakes
    path.write_text("#!/bin/sh\n" + log + body + "\n")
    path.chmod(0o755)
    return path


def install_fake_slurm(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write every fake into `folder` (created) and put it first on PATH for the test; returns `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in DEFAULT_BODIES.items():
        write_command(folder, name, body)
    for name in OTHER_SLURM_PROGRAMS:
        write_command(folder, name, f"echo 'fake SLURM: {name} is not faked by this test' >&2; exit 1")
    monkeypatch.setenv("PATH", os.pathsep.join([str(folder), os.environ.get("PATH", "")]))
    for variable in [name for name in os.environ if name.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        monkeypatch.delenv(variable)  # a test run inside a SLURM job must not look like a job itself
    return folder


def calls(folder: Path) -> list[str]:
    """The fake commands called so far, one `name args` string per call."""
    log = Path(folder) / "calls.log"
    return log.read_text().splitlines() if log.exists() else []
