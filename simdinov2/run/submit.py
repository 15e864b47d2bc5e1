"""The one submitit launcher core of both trees (v1's submitit script, v2
`simdinov2/run/{train,eval}/*.py`).

It owns: the launcher flags (`--ngpus --ntasks_per_node --nodes --timeout --partition --use_volta32
--comment --exclude --cpus_per_task --mem_gb --cluster`), the choice of where to run (`--cluster auto`:
SLURM only when a cluster answers `scontrol ping`, this machine otherwise), the executor set-up for
SLURM (GPU or CPU-only partitions: `--ngpus 0` requests CPUs and tasks only, and the job trains on
gloo) / a local machine (sized to its GPUs or cores) / in-process debugging, the translation of
submitit's job environment into torch.distributed's `env://` variables, one-line launcher errors,
the console summary of where the results are, submitit's job folder (pickles and logs, in a folder only
the user can write: `private_job_root`, never the run folder), and requeueing: when SLURM (or the local controller) signals a timeout or a preemption, submitit calls
`SubmititTask.checkpoint`, which resubmits the same task; the program then resumes from the checkpoint
it wrote in its output folder (v1: `checkpoint.pth`, v2: its resumable checkpoints).

Entry points are named by string (`"package.module:function"`, called with the parsed `args`), so this
module imports neither torch nor the programs it launches until the job runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import runpy
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simdinov2.help_format import HelpFormatter

logger = logging.getLogger("simdinov2")

CLUSTERS = ("auto", "slurm", "local", "debug")
# How long `--cluster auto` waits for `scontrol ping` before running on this machine.
SLURM_PING_TIMEOUT_S = 10


class LauncherError(ValueError):
    """A submission that cannot go ahead (bad flags, sbatch refused the job, a task failed): one line."""


_REPO_ROOT = Path(__file__).resolve().parents[2]


def get_args_parser(
    description: str | None = None,
    parents: Sequence[argparse.ArgumentParser] | None = None,
    add_help: bool = True,
    nodes: int = 1,
    ngpus: int = 8,
    timeout: int = 2800,
) -> argparse.ArgumentParser:
    """Launcher flags on top of the program's own parser(s) given as `parents` (built with add_help=False).

    Both spellings are accepted for multi-word flags (`--use_volta32` as DINO, `--use-volta32` as DINOv2).
    """
    parser = argparse.ArgumentParser(
        description=description, parents=list(parents or []), add_help=add_help, formatter_class=HelpFormatter
    )
    group = parser.add_argument_group("submitit launcher")
    group.add_argument(
        "--ngpus",
        "--gpus",
        "--gpus-per-node",
        dest="ngpus",
        default=ngpus,
        type=int,
        help="""GPUs per node, one process each. 0: a CPU job (SLURM: no GPU requested, CPU-only
        partitions work; training uses gloo)""",
    )
    group.add_argument(
        "--ntasks_per_node",
        "--ntasks-per-node",
        dest="ntasks_per_node",
        default=None,
        type=int,
        help="Processes per node (default: --ngpus, or 1 when --ngpus is 0)",
    )
    group.add_argument(
        "--nodes", "--nnodes", dest="nodes", default=nodes, type=int, help="Number of nodes to request"
    )
    group.add_argument("--timeout", default=timeout, type=int, help="Duration of the job, in minutes")
    group.add_argument(
        "--partition", default=None, type=str, help="SLURM partition (default: the cluster's default)"
    )
    group.add_argument(
        "--use_volta32",
        "--use-volta32",
        dest="use_volta32",
        action="store_true",
        help="Request 32 GB V100 GPUs (SLURM constraint volta32gb)",
    )
    group.add_argument(
        "--comment", default="", type=str, help="Comment to pass to the scheduler, e.g. a priority message"
    )
    group.add_argument("--exclude", default="", type=str, help="Nodes to exclude (SLURM node list)")
    group.add_argument(
        "--cpus_per_task",
        "--cpus-per-task",
        dest="cpus_per_task",
        default=10,
        type=int,
        help="CPU cores per process (data-loading workers + main thread)",
    )
    group.add_argument(
        "--mem_gb",
        "--mem-gb",
        dest="mem_gb",
        default=None,
        type=int,
        help="Memory per node in GB (default: 40 x ngpus; CPU jobs: the cluster's default)",
    )
    group.add_argument(
        "--cluster",
        default="auto",
        choices=CLUSTERS,
        help="""Where to run: slurm (sbatch), local (processes on this machine, as many as its
        GPUs, or its cores / --cpus_per_task, allow; requeue works too), debug (in this process, one task)
        or auto (default): slurm when `scontrol ping` reaches a SLURM controller, local otherwise.""",
    )
    return parser


def get_shared_folder() -> Path:
    """Default parent of job folders: /checkpoint/$USER/experiments on FAIR-like clusters (as upstream),
    otherwise ./outputs/submitit under the current directory."""
    user = os.environ.get("USER", "user")
    checkpoint_root = Path("/checkpoint") / user
    if checkpoint_root.is_dir():
        return checkpoint_root / "experiments"
    return Path.cwd() / "outputs" / "submitit"


# Where submitit keeps its job pickles and logs (overridable, e.g. to a shared home on a cluster whose
# compute nodes do not mount ~): a folder only this user can write, never the run folder.
JOB_FOLDER_ENV = "SIMDINO_JOB_FOLDER"
# The link in the run folder to the job's logs (nothing reads pickles through it).
LOGS_LINK = "submitit_logs"


def private_job_root() -> Path:
    """The root of submitit's job folders: `$SIMDINO_JOB_FOLDER`, else `~/.simdino/jobs`, mode 0700.

    submitit unpickles `<job>_submitted.pkl` from its folder whenever a job starts or is requeued: a
    file there runs code. Kept out of the run folder (which collaborators, a shared project space or a
    copied-in result may write), in a folder only this user can write, no planted pickle is ever read.
    A root that others may write, or that belongs to someone else, is refused."""
    root = Path(os.environ.get(JOB_FOLDER_ENV) or Path.home() / ".simdino" / "jobs").expanduser().absolute()
    try:
        if not root.is_dir():
            root.mkdir(parents=True, mode=0o700)
            root.chmod(0o700)  # mkdir's mode is filtered by the umask
        info = root.stat()
    except OSError as e:
        raise LauncherError(
            f"cannot create the private job folder {root}: {e.strerror or e} "
            f"(set {JOB_FOLDER_ENV} to a folder of yours)"
        ) from None
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LauncherError(
            f"the job folder {root} must belong to you and be writable by you only "
            f"(chmod 700 {root}, or set {JOB_FOLDER_ENV} to such a folder)"
        )
    return root


def _new_job_folder(name: str) -> Path:
    return (
        private_job_root()
        / f"{name.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    )


def _link_logs(output_dir: str, job_folder: Path) -> None:
    """`<run folder>/submitit_logs` -> the job folder, so that the logs are found next to the results."""
    link = Path(output_dir) / LOGS_LINK
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(job_folder, target_is_directory=True)
    except OSError as e:
        logger.warning("could not link %s to the job's logs in %s: %s", link, job_folder, e)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_from_job_id(job_id: str) -> int:
    digits = "".join(c for c in str(job_id) if c.isdigit()) or "0"
    return 20000 + int(digits[-9:]) % 20000


def _export_torch_distributed_env(master_port: int | None) -> str:
    """Set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from submitit's job environment so
    `simdinov2.distributed.init_distributed` sees the same variables as under torchrun. Returns the job id."""
    import submitit

    env = submitit.JobEnvironment()
    hostnames = list(env.hostnames) if env.num_nodes > 1 else ["127.0.0.1"]
    port = master_port if master_port is not None else _port_from_job_id(env.job_id)
    os.environ.update(
        RANK=str(env.global_rank),
        WORLD_SIZE=str(env.num_tasks),
        LOCAL_RANK=str(env.local_rank),
        LOCAL_WORLD_SIZE=str(max(env.num_tasks // max(env.num_nodes, 1), 1)),
        MASTER_ADDR=hostnames[0],
        MASTER_PORT=str(port),
    )
    return str(env.job_id)


def _resolve_entry(entry: str) -> Any:
    module_name, _, function_name = entry.partition(":")
    if not function_name:
        raise ValueError(f"entry point {entry!r} must look like 'package.module:function'")
    module = importlib.import_module(module_name)
    return getattr(module, function_name)


class SubmititTask:
    """The picklable callable a job runs: sets up the distributed environment and the output folder of
    this job (`%j` → job id), then calls `entry(args)`. `checkpoint` is submitit's requeue hook."""

    def __init__(self, entry: str, args: argparse.Namespace, master_port: int | None = None) -> None:
        self.entry = entry
        self.args = args
        self.master_port = master_port

    def __call__(self) -> Any:
        environment = dict(os.environ)
        try:
            job_id = _export_torch_distributed_env(self.master_port)
            if getattr(self.args, "output_dir", None):
                self.args.output_dir = str(self.args.output_dir).replace("%j", job_id)
            return self.run_entry()
        finally:
            # A debug job runs in the caller's process, which must not keep this job's rendezvous.
            os.environ.clear()
            os.environ.update(environment)

    def run_entry(self) -> Any:
        return _resolve_entry(self.entry)(self.args)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on timeout / preemption (rank 0): resubmit the same task. The program resumes
        from the last checkpoint of its (already resolved) output folder."""
        import submitit

        logger.info("Requeuing %s with output_dir %s", self.entry, getattr(self.args, "output_dir", None))
        return submitit.helpers.DelayedSubmission(type(self)(self.entry, self.args, self.master_port))


class ScriptTask(SubmititTask):
    """A task whose program is a script, run as `python -m <entry> <args.script_argv> --output_dir <job
    folder>` would run it, in the job's process (submitit's signal handlers, hence requeueing, stay in
    charge). The script is executed, never imported as a library."""

    def run_entry(self) -> Any:
        argv = sys.argv
        sys.argv = [self.entry, *self.args.script_argv, "--output_dir", str(self.args.output_dir)]
        try:
            runpy.run_module(self.entry, run_name="__main__", alter_sys=True)
        finally:
            sys.argv = argv


def _ensure_repo_importable() -> None:
    """Jobs run `python -m submitit.core._submit` in a new interpreter: the repository on their PYTHONPATH
    (inherited by local subprocesses and by sbatch's --export=ALL) makes them import this very checkout."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(_REPO_ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(_REPO_ROOT), *paths])


def detect_cluster() -> tuple[str, str]:
    """("slurm" or "local", why): SLURM only when `sbatch` exists and a controller answers `scontrol ping`
    within `SLURM_PING_TIMEOUT_S` (an installed but unconfigured SLURM says "Could not establish a
    configuration source" and must not be used)."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "local", "no SLURM commands (sbatch) on this machine"
    try:
        ping = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=SLURM_PING_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return "local", f"no SLURM controller answered `scontrol ping` within {SLURM_PING_TIMEOUT_S} s"
    except OSError as e:
        return "local", f"`scontrol ping` failed ({e})"
    if ping.returncode == 0 and " UP" in ping.stdout:
        return "slurm", ping.stdout.strip().splitlines()[0]
    return (
        "local",
        f"no SLURM cluster answers ({_last_line(ping.stderr or ping.stdout) or 'scontrol ping failed'})",
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


SLURM_COMMANDS = ("sbatch", "srun")  # submission, and the job's tasks (submitit needs both here)


def _which_cluster(requested: str | None) -> str:
    if requested == "slurm":
        missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
        if missing:
            raise LauncherError(
                f"--cluster slurm: SLURM's {' and '.join(missing)} command{'s are' if len(missing) > 1 else ' is'} not "
                "installed here; run on this machine with --cluster local, or submit from a SLURM login node"
            )
    if requested and requested != "auto":
        return requested
    cluster, why = detect_cluster()
    hint = "--cluster local to skip this check" if cluster == "slurm" else "--cluster slurm to insist"
    _say(f"--cluster auto: {why}: running {'on SLURM' if cluster == 'slurm' else 'on this machine'} ({hint})")
    return cluster


def _say(message: str) -> None:
    """A launcher message for the person at the console (and the log)."""
    logger.info(message)
    print(message, flush=True)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _local_tasks(requested: int, ngpus: int, cpus_per_task: int) -> tuple[int, int, str]:
    """(processes, GPUs, description) of a local run sized to this machine: one process per GPU when it has
    GPUs and the run asks for them, else as many processes of `cpus_per_task` cores as its cores hold."""
    gpus = _cuda_device_count() if ngpus > 0 else 0
    if gpus > 0:
        tasks = min(requested, gpus)
        return tasks, tasks, f"{gpus} GPU(s)"
    cores = _usable_cores()
    per_task = max(1, min(cpus_per_task, cores))
    tasks = max(1, min(requested, cores // per_task))
    return tasks, 0, f"{cores} CPU core(s), --cpus_per_task {cpus_per_task}"


def _cuda_device_count() -> int:
    try:
        import torch  # only when sizing a local run: the launcher itself does not need torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch import failure
        return 0


def _check_flags(args: argparse.Namespace, cluster: str) -> int:
    """Validate the launcher flags; return the processes per node asked for."""
    if cluster not in CLUSTERS:
        raise LauncherError(f"--cluster must be one of {', '.join(CLUSTERS)} (got {cluster!r})")
    if args.nodes < 1 or args.ngpus < 0:
        raise LauncherError(f"--nodes must be >= 1 and --ngpus >= 0 (got {args.nodes} and {args.ngpus})")
    tasks = getattr(args, "ntasks_per_node", None)
    tasks = tasks if tasks is not None else max(args.ngpus, 1)
    if tasks < 1:
        raise LauncherError(f"--ntasks_per_node must be >= 1 (got {tasks})")
    if args.ngpus > 0 and tasks != args.ngpus:
        raise LauncherError(
            f"one process per GPU: --ntasks_per_node {tasks} differs from --ngpus {args.ngpus} "
            "(use --ngpus 0 for a CPU job with several processes)"
        )
    if cluster == "local" and args.nodes > 1:
        raise LauncherError(f"--cluster local runs on this machine only: use --nodes 1 (got {args.nodes})")
    return tasks


def _slurm_parameters(args: argparse.Namespace, tasks_per_node: int) -> dict[str, Any]:
    parameters: dict[str, Any] = dict(nodes=args.nodes, tasks_per_node=tasks_per_node)
    if args.ngpus > 0:
        parameters["gpus_per_node"] = args.ngpus
    # CPU jobs (--ngpus 0) request no generic resource at all: CPU-only partitions refuse any gres.
    mem_gb = args.mem_gb if args.mem_gb is not None else (40 * args.ngpus or None)
    if mem_gb is not None:
        parameters["mem_gb"] = mem_gb
    # SIGUSR2 2 minutes before the time limit, so the job can be requeued and resume in time.
    parameters["slurm_signal_delay_s"] = 120
    if args.partition:
        parameters["slurm_partition"] = args.partition
    if args.use_volta32:
        parameters["slurm_constraint"] = "volta32gb"
    if args.comment:
        parameters["slurm_comment"] = args.comment
    if args.exclude:
        parameters["slurm_exclude"] = args.exclude
    return parameters


def _submission_error(error: Exception, cluster: str, args: argparse.Namespace) -> LauncherError:
    """One line from a failed submission (sbatch's own last line, with the likely fix)."""
    line = _last_line(getattr(error, "stderr", None) or str(error)) or type(error).__name__
    if cluster != "slurm":
        return LauncherError(f"could not start the job on this machine: {line}")
    hint = "--cluster local runs on this machine"
    if "gres" in line.lower() or "generic resource" in line.lower():
        hint = f"does partition {args.partition or '(default)'} have GPUs? --ngpus 0 submits a CPU job"
    elif "configuration" in line.lower() or "unable to contact" in line.lower():
        hint = "is SLURM configured here? --cluster local runs on this machine"
    elif "node configuration is not available" in line.lower():
        hint = "ask for fewer --cpus_per_task / --mem_gb / --ntasks_per_node, or another --partition"
    return LauncherError(f"sbatch refused the job: {line} ({hint})")


def _failed_task_error(job: Any) -> LauncherError:
    """One line from a task that ended with an exception; its traceback stays in the job's log."""
    message = str(job.exception() or "")
    # submitit's message: a header, the task's traceback between dashed rules, then where the logs are.
    parts = message.split("----------------------")
    reason = _last_line(parts[1] if len(parts) > 2 else message) or "unknown error"
    return LauncherError(f"job {job.job_id} failed: {reason} (full log: {job.paths.stderr})")


def summarize_outputs(output_dir: str | os.PathLike) -> list[str]:
    """Console lines saying where the results of a finished run are: the last record of each results /
    metrics file the programs of both trees write (`results_eval_*.json`, `log.txt`,
    `training_metrics.json`), else the folder."""
    folder = Path(output_dir)
    lines = [f"Results in {folder}"]
    candidates = sorted(folder.glob("results*.json")) + [folder / "log.txt", folder / "training_metrics.json"]
    for path in candidates:
        if path.is_file():
            with open(path, errors="replace") as f:
                last = _last_line(f.read())
            if last:
                lines.append(f"  {path.name} (last record): {last[:400]}")
    return lines


def submit_jobs(
    entry: str, args: argparse.Namespace, name: str, wait: bool | None = None,
    task_type: type[SubmititTask] = SubmititTask,
) -> Any:  # fmt: skip
    """Submit `entry(args)` (or, with `task_type=ScriptTask`, the script module `entry`) with the launcher
    flags in `args`; return the submitit job.

    `args.output_dir` (may contain `%j`) is the program's output folder, with a link `submitit_logs` to
    submitit's job folder (its pickles and logs), which lies in `private_job_root()`; empty means `get_shared_folder()/%j`. Local and debug jobs are waited for (`wait=None`) and
    the results summarized on the console; SLURM jobs return right after submission with the commands to
    follow them. Raises `LauncherError` (one line) for bad flags, a refused submission or a failed task.
    """
    import submitit

    requested = getattr(args, "cluster", None)
    cluster = _which_cluster(requested)
    if cluster == "local" and requested in (None, "auto") and args.nodes > 1:
        _say(f"one machine: 1 node instead of --nodes {args.nodes}")
        args.nodes = 1
    tasks_per_node = _check_flags(args, cluster)
    if cluster == "debug" and args.nodes * tasks_per_node > 1:
        _say("--cluster debug runs one task in this process: ignoring --nodes/--ngpus/--ntasks_per_node")

    _ensure_repo_importable()
    if not getattr(args, "output_dir", None) or str(args.output_dir) == ".":
        args.output_dir = str(get_shared_folder() / "%j")
    args.output_dir = str(Path(args.output_dir).expanduser().absolute())
    try:
        Path(args.output_dir.split("%j")[0]).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LauncherError(f"cannot create the output folder {args.output_dir}: {e.strerror or e}") from None

    job_folder = _new_job_folder(name)
    executor = submitit.AutoExecutor(folder=job_folder, cluster=cluster, slurm_max_num_timeout=30)
    parameters: dict[str, Any] = dict(name=name, timeout_min=args.timeout, cpus_per_task=args.cpus_per_task)
    if cluster == "slurm":
        parameters.update(_slurm_parameters(args, tasks_per_node))
    elif cluster == "local":
        tasks, gpus, machine = _local_tasks(tasks_per_node, args.ngpus, args.cpus_per_task)
        if tasks != tasks_per_node:
            _say(
                f"local run sized to this machine ({machine}): {tasks} process(es) instead of {tasks_per_node}"
            )
        parameters.update(tasks_per_node=tasks, gpus_per_node=gpus)
    else:
        parameters.update(nodes=1, tasks_per_node=1)
    executor.update_parameters(**parameters)

    # The rendezvous port of local jobs is picked now (free on this machine); SLURM jobs derive it from
    # the job id, which is stable across requeues.
    master_port = _free_port() if cluster == "local" else None
    task = task_type(entry, args, master_port=master_port)
    sbatch_stderr = io.StringIO()  # submitit echoes sbatch's stderr; the one line below replaces it
    try:
        with contextlib.redirect_stderr(sbatch_stderr):
            job = executor.submit(task)
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as e:
        raise _submission_error(e, cluster, args) from None
    output_dir = args.output_dir.replace("%j", str(job.job_id))
    _link_logs(output_dir, job_folder)
    if cluster == "slurm":
        _say(
            f"Submitted SLURM job {job.job_id} ({args.nodes} node(s) x {tasks_per_node} task(s), "
            f"{args.ngpus} GPU(s) per node); follow it with: squeue -j {job.job_id}; tail -f {job.paths.stdout}"
        )
        _say(f"Logs, checkpoints and results will be in {output_dir}")
    else:
        _say(f"Started job {job.job_id} on this machine; logs: {job.paths.stdout}")
    if wait is None:
        wait = cluster in ("local", "debug")
    if wait:
        try:
            job.results()
        except submitit.core.utils.UncompletedJobError:
            raise _failed_task_error(job) from None
        for line in summarize_outputs(output_dir):
            _say(line)
    return job


def launch(
    program: str,
    description: str,
    name: str,
    argv: Sequence[str] | None = None,
    required: Sequence[str] = (),
) -> Any:
    """Body of the v2 launchers: `program` is a module with `get_args_parser(add_help=...)` and
    `main(args)` (e.g. `simdinov2.eval.knn`); its flags and the launcher flags are parsed together and
    `program:main` is submitted. `required` names flags (dest names) that must be given (a parent
    parser built with add_help=False may not enforce them). User errors end with one line (exit code 1)."""
    _ensure_repo_importable()
    module = importlib.import_module(program)
    parser = get_args_parser(description=description, parents=[module.get_args_parser(add_help=False)])
    args = parser.parse_args(argv)
    for dest in required:
        if not getattr(args, dest, None):
            raise SystemExit(f"{name}: error: --{dest.replace('_', '-')} is required")
    config_file = getattr(args, "config_file", None)
    if config_file and not os.path.isfile(config_file):
        raise SystemExit(f"{name}: error: --config-file {config_file} does not exist")
    try:
        return submit_jobs(f"{program}:main", args, name=name)
    except LauncherError as e:
        raise SystemExit(f"{name}: error: {e}") from None


__all__ = [
    "CLUSTERS",
    "LauncherError",
    "ScriptTask",
    "SubmititTask",
    "detect_cluster",
    "get_args_parser",
    "get_shared_folder",
    "launch",
    "submit_jobs",
    "summarize_outputs",
]
