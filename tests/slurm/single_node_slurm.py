"""A real single-node SLURM cluster for tests: `munged`, `slurmctld` and `slurmd` from Debian's
`munge` / `slurm-wlm` packages, with every file (key, config, state, spool, logs, sockets) under one
folder, started in the foreground so that each daemon is ours by PID and stopped by PID.

Client commands (`sbatch`, `squeue`, `scontrol`, submitit) find this cluster through `SLURM_CONF`,
which `SlurmCluster.env` holds: pass it to the processes that should see the cluster. It is not exported
to the test process, so other tests' `--cluster auto` never finds this cluster.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel")
APT_PACKAGES = "slurmctld slurmd slurm-client munge"


def missing_programs() -> list[str]:
    """Programs of the cluster that are not installed (daemons live in /usr/sbin)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in DAEMONS + CLIENTS if shutil.which(name, path=path) is None]


def _program(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    assert found, name
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """One controller and one compute node (this machine, all its CPUs) in `root`."""

    def __init__(self, root: Path, cpus: int | None = None) -> None:
        self.root = Path(root)
        self.hostname = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.processes: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------------------------ set-up
    def _write_munge_key(self) -> Path:
        key = self.root / "munge" / "munge.key"
        key.parent.mkdir(parents=True, exist_ok=True)
        key.parent.chmod(0o700)
        subprocess.run(
            [_program("mungekey"), "--create", "--force", "--keyfile", str(key)],
            check=True,
            capture_output=True,
        )
        key.chmod(0o400)
        return key

    def _memory_mb(self) -> int:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return max(pages * page_size // 2**20 - 512, 512)  # slurmd refuses a node bigger than it is

    def _write_conf(self) -> None:
        state, spool, logs = self.root / "state", self.root / "spool", self.root / "log"
        for folder in (state, spool, logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=simdino-test",
                    f"SlurmctldHost={self.hostname}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    f"SlurmUser={self.user}",
                    f"SlurmdUser={self.user}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "JobRequeue=1",
                    "SchedulerType=sched/builtin",
                    "SchedulerParameters=sched_interval=1",
                    "MinJobAge=300",
                    "KillWait=5",
                    "SlurmctldTimeout=30",
                    "SlurmdTimeout=30",
                    "InactiveLimit=0",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    f"StateSaveLocation={state}",
                    f"SlurmdSpoolDir={spool}",
                    f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={logs / 'slurmctld.log'}",
                    f"SlurmdLogFile={logs / 'slurmd.log'}",
                    f"NodeName={self.hostname} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self._memory_mb()} State=UNKNOWN",
                    f"PartitionName=cpu Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        # The daemon keeps its own copy of the descriptor; ours is closed right after the spawn.
        log = open(self.root / "log" / f"{name}.stdout", "wb")  # noqa: SIM115
        self.processes[name] = subprocess.Popen(
            argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def start(self, timeout: float = 60.0) -> None:
        """Start the three daemons and wait until the node accepts jobs; raises RuntimeError with the
        daemons' log tails when it does not."""
        self.root.mkdir(parents=True, exist_ok=True)
        key = self._write_munge_key()
        self._write_conf()
        munge_dir = self.munge_socket.parent
        self._spawn(
            "munged",
            [
                _program("munged"),
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged did not create its socket")
        self._spawn("slurmctld", [_program("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._ok(["scontrol", "ping"]), timeout, "slurmctld does not answer")
        self._spawn("slurmd", [_program("slurmd"), "-D", "-N", self.hostname, "-f", str(self.conf)])
        self._wait(self._node_idle, timeout, "slurmd did not register an idle node")

    def _ok(self, argv: list[str]) -> bool:
        try:
            return subprocess.run(argv, env=self.env, capture_output=True, timeout=15).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _node_idle(self) -> bool:
        out = self.run(["sinfo", "-h", "-N", "-o", "%t"], check=False)
        return out.strip() in ("idle", "mix", "alloc")

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.2)

    # ---------------------------------------------------------------------------------- using it
    def run(self, argv: list[str], check: bool = True) -> str:
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        return result.stdout

    def job_state(self, job_id: str) -> str:
        """SLURM's state of a job (PENDING, RUNNING, COMPLETED, ...; '' once forgotten)."""
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return ""

    def log_tail(self, lines: int = 15) -> str:
        tails = []
        for path in sorted((self.root / "log").glob("*")) + [self.munge_socket.parent / "munged.log"]:
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                tails.append(f"--- {path.name}:\n" + "\n".join(text))
        return "\n".join(tails)

    # ----------------------------------------------------------------------------------- teardown
    def stop(self) -> None:
        """Cancel every job, then stop the daemons we started (reverse order), by PID."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run(["scancel", "--full", f"--user={self.user}"], check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.run(["squeue", "-h"], check=False).strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)

    def running(self) -> list[str]:
        """Names of the daemons still alive."""
        return [name for name, process in self.processes.items() if process.poll() is None]
