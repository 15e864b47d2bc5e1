"""The one submitit launcher core of both trees (v1 `simdino/run_with_submitit.py`, v2
`simdinov2/run/{train,eval}/*.py`).

It owns: the launcher flags (`--ngpus --nodes --timeout --partition --use_volta32 --comment --exclude
--cpus_per_task --mem_gb --cluster`), the executor set-up for SLURM / a local machine / in-process
debugging, the translation of submitit's job environment into torch.distributed's `env://` variables,
and requeueing: when SLURM (or the local controller) signals a timeout or a preemption, submitit calls
`SubmititTask.checkpoint`, which resubmits the same task; the program then resumes from the checkpoint
it wrote in its output folder (v1: `checkpoint.pth`, v2: its resumable checkpoints).

Entry points are named by string (`"package.module:function"`, called with the parsed `args`), so this
module imports neither torch nor the programs it launches until the job runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("simdinov2")

CLUSTERS = ("local", "debug", "slurm")
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
    parser = argparse.ArgumentParser(description=description, parents=list(parents or []), add_help=add_help)
    group = parser.add_argument_group("submitit launcher")
    group.add_argument("--ngpus", "--gpus", "--gpus-per-node", dest="ngpus", default=ngpus, type=int,
                       help="Processes (GPUs) per node; on a CPU-only machine, CPU processes per node")
    group.add_argument("--nodes", "--nnodes", dest="nodes", default=nodes, type=int, help="Number of nodes to request")
    group.add_argument("--timeout", default=timeout, type=int, help="Duration of the job, in minutes")
    group.add_argument("--partition", default=None, type=str, help="SLURM partition (default: the cluster's default)")
    group.add_argument("--use_volta32", "--use-volta32", dest="use_volta32", action="store_true",
                       help="Request 32 GB V100 GPUs (SLURM constraint volta32gb)")
    group.add_argument("--comment", default="", type=str,
                       help="Comment to pass to the scheduler, e.g. a priority message")
    group.add_argument("--exclude", default="", type=str, help="Nodes to exclude (SLURM node list)")
    group.add_argument("--cpus_per_task", "--cpus-per-task", dest="cpus_per_task", default=10, type=int,
                       help="CPU cores per process (data-loading workers + main thread)")
    group.add_argument("--mem_gb", "--mem-gb", dest="mem_gb", default=None, type=int,
                       help="Memory per node in GB (default: 40 x ngpus)")
    group.add_argument("--cluster", default=None, choices=CLUSTERS,
                       help="""Where to run: slurm (sbatch), local (subprocesses on this machine, requeue works
        too) or debug (in this process, one task, for debugging). Default: slurm when sbatch is available,
        else local.""")
    return parser


def get_shared_folder() -> Path:
    """Default parent of job folders: /checkpoint/$USER/experiments on FAIR-like clusters (as upstream),
    otherwise ./outputs/submitit under the current directory."""
    user = os.environ.get("USER", "user")
    checkpoint_root = Path("/checkpoint") / user
    if checkpoint_root.is_dir():
        return checkpoint_root / "experiments"
    return Path.cwd() / "outputs" / "submitit"


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
        job_id = _export_torch_distributed_env(self.master_port)
        if getattr(self.args, "output_dir", None):
            self.args.output_dir = str(self.args.output_dir).replace("%j", job_id)
        function = _resolve_entry(self.entry)
        return function(self.args)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on timeout / preemption (rank 0): resubmit the same task. The program resumes
        from the last checkpoint of its (already resolved) output folder."""
        import submitit

        logger.info("Requeuing %s with output_dir %s", self.entry, getattr(self.args, "output_dir", None))
        return submitit.helpers.DelayedSubmission(type(self)(self.entry, self.args, self.master_port))


def _ensure_repo_importable() -> None:
    """Jobs run `python -m submitit.core._submit` elsewhere; without `pip install -e .` they need the
    repository on PYTHONPATH (inherited by local subprocesses and by sbatch's --export=ALL)."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(_REPO_ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(_REPO_ROOT), *paths])
    if str(_REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(_REPO_ROOT))


def _which_cluster(requested: str | None) -> str:
    if requested:
        return requested
    import shutil

    return "slurm" if shutil.which("sbatch") else "local"


def _cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch import failure
        return 0


def submit_jobs(entry: str, args: argparse.Namespace, name: str, wait: bool | None = None) -> Any:
    """Submit `entry(args)` with the launcher flags in `args`; return the submitit job.

    `args.output_dir` (may contain `%j`) is the job folder (submitit logs) and the program's output
    folder; empty means `get_shared_folder()/%j`. Local and debug jobs are waited for (`wait=None`) and
    their result returned by `job.result()`; SLURM jobs return right after submission.
    """
    import submitit

    cluster = _which_cluster(getattr(args, "cluster", None))
    if cluster not in CLUSTERS:
        raise ValueError(f"--cluster must be one of {', '.join(CLUSTERS)} (got {cluster!r})")
    if args.nodes < 1 or args.ngpus < 1:
        raise ValueError(f"--nodes and --ngpus must be >= 1 (got {args.nodes} and {args.ngpus})")
    if cluster == "local" and args.nodes > 1:
        raise ValueError(f"--cluster local runs on this machine only: use --nodes 1 (got {args.nodes})")
    if cluster == "debug" and args.nodes * args.ngpus > 1:
        logger.warning("--cluster debug runs one task in this process: ignoring --nodes/--ngpus")
        print("--cluster debug runs one task in this process: ignoring --nodes/--ngpus")

    _ensure_repo_importable()
    if not getattr(args, "output_dir", None) or str(args.output_dir) == ".":
        args.output_dir = str(get_shared_folder() / "%j")
    args.output_dir = str(Path(args.output_dir).expanduser().absolute())
    Path(args.output_dir.split("%j")[0]).mkdir(parents=True, exist_ok=True)

    executor = submitit.AutoExecutor(folder=args.output_dir, cluster=cluster, slurm_max_num_timeout=30)
    tasks_per_node = 1 if cluster == "debug" else args.ngpus
    parameters: dict[str, Any] = dict(
        name=name,
        timeout_min=args.timeout,
        nodes=1 if cluster == "debug" else args.nodes,
        tasks_per_node=tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb if args.mem_gb is not None else 40 * args.ngpus,
    )
    if cluster == "slurm":
        parameters["gpus_per_node"] = args.ngpus
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
    elif cluster == "local":
        # Give the local processes GPUs only when this machine has them (CPU runs use gloo).
        parameters["gpus_per_node"] = min(args.ngpus, _cuda_device_count())
    executor.update_parameters(**parameters)

    # The rendezvous port of local jobs is picked now (free on this machine); SLURM jobs derive it from
    # the job id, which is stable across requeues.
    master_port = _free_port() if cluster == "local" else None
    task = SubmititTask(entry, args, master_port=master_port)
    job = executor.submit(task)
    logger.info("Submitted job_id: %s", job.job_id)
    print(f"Submitted job_id: {job.job_id}")
    print(f"Logs and checkpoints will be saved at: {args.output_dir.replace('%j', str(job.job_id))}")
    if wait is None:
        wait = cluster in ("local", "debug")
    if wait:
        job.results()  # raises if a task failed (its log tail is in the message)
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
    except ValueError as e:
        raise SystemExit(f"{name}: error: {e}") from None


__all__ = ["CLUSTERS", "SubmititTask", "get_args_parser", "get_shared_folder", "launch", "submit_jobs"]
