"""The `fake_slurm` fixture: the launcher tests see the same fake cluster whether the host has SLURM or not."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import submitit
from fake_slurm_commands import (
    FAKE_JOB_ID,
    SLURM_PROGRAMS,
    SUBMITTED_SCRIPT,
    calls,
    install_fake_slurm,
    write_command,
)


@pytest.mark.parametrize("host_has_slurm", [False, True])
def test_fakes_shadow_every_slurm_program_of_the_host(host_has_slurm, tmp_path, monkeypatch):
    host = tmp_path / "host_bin"
    host.mkdir()
    if host_has_slurm:  # a host SLURM whose every program leaves a mark and fails
        for name in SLURM_PROGRAMS:
            write_command(host, name, f"touch {tmp_path}/host_slurm_ran; exit 97")
    monkeypatch.setenv("PATH", os.pathsep.join([str(host), os.environ["PATH"]]))
    fakes = install_fake_slurm(tmp_path / "fakes", monkeypatch)

    for name in SLURM_PROGRAMS:
        assert shutil.which(name) == str(fakes / name), name
    executor = submitit.SlurmExecutor(folder=tmp_path / "jobs")  # raises unless `srun` is found
    executor.update_parameters(time=1, ntasks_per_node=1)
    job = executor.submit(print, "hello")
    assert job.job_id == FAKE_JOB_ID
    assert "#SBATCH --ntasks-per-node=1" in (fakes / SUBMITTED_SCRIPT).read_text()
    assert calls(fakes)[0].startswith("sbatch ")
    assert not (tmp_path / "host_slurm_ran").exists()


def test_a_test_replaces_one_fake(fake_slurm: Path):
    write_command(fake_slurm, "scontrol", "echo 'scontrol: fatal: no controller' >&2; exit 1")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    assert ping.returncode == 1 and "no controller" in ping.stderr
    assert calls(fake_slurm) == ["scontrol ping"]
