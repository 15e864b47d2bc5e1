"""The `slurm_cluster` fixture: one real single-node SLURM cluster per test session (see single_node_slurm.py),
skipped with the reason only where Debian's `slurm-wlm` / `munge` are not installed (`.ci/run`
installs them as root) or cannot run for a non-root user."""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator

import pytest
from single_node_slurm import APT_PACKAGES, SlurmCluster, missing_programs


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    missing = missing_programs()
    if missing:
        pytest.skip(
            f"SLURM is not installed (no {', '.join(missing)}): as root, apt-get install {APT_PACKAGES}"
        )
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    atexit.register(cluster.stop)  # also on an interrupted session
    try:
        cluster.start()
    except RuntimeError as e:
        cluster.stop()
        if os.getuid() != 0:
            pytest.skip(f"could not start a single-node SLURM as a non-root user: {str(e).splitlines()[0]}")
        raise
    yield cluster
    cluster.stop()
    assert cluster.running() == [], "daemons still running after stop()"
