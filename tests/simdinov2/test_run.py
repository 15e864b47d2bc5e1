"""Shared submitit launcher `simdinov2/run/submit.py` and the v2 launchers: flags, the debug and local
clusters, the torch.distributed environment of local tasks, and requeue on preemption."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fake_slurm_commands import write_command as _fake_command

from simdinov2.run import submit

# A tiny program the jobs run: importable by name in the job processes (its folder goes on PYTHONPATH).
PROGRAM = textwrap.dedent(
    '''
    import json, os, time
    from pathlib import Path


    def record(args):
        """Write what the task saw; with args.collective, all-reduce across the job's processes."""
        out = {"output_dir": args.output_dir, "rank": os.environ["RANK"], "world": os.environ["WORLD_SIZE"],
               "local_rank": os.environ["LOCAL_RANK"], "master": os.environ["MASTER_ADDR"]}
        if getattr(args, "collective", False):
            import torch
            import torch.distributed as dist
            from simdinov2.distributed import init_distributed
            torch.set_num_threads(1)
            init_distributed("cpu")
            value = torch.tensor([float(dist.get_rank() + 1)])
            dist.all_reduce(value)
            out["sum"] = value.item()
            dist.destroy_process_group()
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / f"rank{out['rank']}.json").write_text(json.dumps(out))
        return out


    def failing(args):
        raise ValueError("the dataset folder /nowhere does not exist")


    def evaluate(args):
        """Write a results file as the eval programs do."""
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "results_eval_knn.json").write_text(json.dumps({"top1": 61.5}) + "\\n")
        return 0


    def preemptible(args):
        """First run: announce the pid, then wait to be preempted. Requeued run: finish."""
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "started").exists():
            return "resumed"
        (folder / "started").write_text("1")
        (folder / "pid").write_text(str(os.getpid()))
        time.sleep(120)
        return "not preempted"
    '''
)


@pytest.fixture()
def program(tmp_path, monkeypatch) -> str:
    folder = tmp_path / "program"
    folder.mkdir()
    (folder / "submit_test_program.py").write_text(PROGRAM)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    sys.modules.pop("submit_test_program", None)
    return "submit_test_program"


def launcher_args(output_dir: Path, *extra: str):
    import argparse

    program_parser = argparse.ArgumentParser(add_help=False)
    program_parser.add_argument("--output_dir", default="")
    program_parser.add_argument("--collective", action="store_true")
    return submit.get_args_parser(parents=[program_parser]).parse_args(
        ["--output_dir", str(output_dir), *extra]
    )


def test_flags_both_spellings_and_defaults():
    args = submit.get_args_parser().parse_args([])
    assert (args.ngpus, args.nodes, args.timeout, args.cpus_per_task) == (8, 1, 2800, 10)
    assert args.partition is None and not args.use_volta32 and args.comment == "" and args.exclude == ""
    assert args.cluster == "auto" and args.mem_gb is None and args.ntasks_per_node is None
    dino = ["--use_volta32", "--cpus_per_task", "4", "--mem_gb", "64"]
    dinov2 = ["--use-volta32", "--cpus-per-task", "4", "--mem-gb", "64"]
    for argv in (dino, dinov2):
        args = submit.get_args_parser().parse_args(argv)
        assert args.use_volta32 and args.cpus_per_task == 4 and args.mem_gb == 64
    args = submit.get_args_parser(nodes=2).parse_args(
        ["--ngpus", "4", "--partition", "p", "--comment", "c", "--exclude", "n1", "--cluster", "slurm", "--timeout", "60"]
    )  # fmt: skip
    assert (args.nodes, args.ngpus, args.partition, args.comment, args.exclude, args.cluster, args.timeout) == (
        2, 4, "p", "c", "n1", "slurm", 60,
    )  # fmt: skip
    with pytest.raises(SystemExit):
        submit.get_args_parser().parse_args(["--cluster", "kubernetes"])


def test_debug_cluster_runs_in_process_and_resolves_job_id(program, tmp_path):
    args = launcher_args(tmp_path / "jobs" / "%j", "--cluster", "debug")
    job = submit.submit_jobs(f"{program}:record", args, name="test")
    result = job.result()
    assert result["rank"] == "0" and result["world"] == "1"
    assert "%j" not in result["output_dir"] and str(job.job_id) in result["output_dir"]
    assert (Path(result["output_dir"]) / "rank0.json").is_file()


def test_checkpoint_requeues_the_same_task():
    import argparse

    import submitit

    args = argparse.Namespace(output_dir="/tmp/x", epochs=3, script_argv=["--epochs", "3"])
    for task in (submit.SubmititTask("json:dumps", args, master_port=12345),
                 submit.ScriptTask("simdino.main_dino", args, master_port=12345)):  # fmt: skip
        resubmission = task.checkpoint()
        assert isinstance(resubmission, submitit.helpers.DelayedSubmission)
        again = resubmission.function
        assert type(again) is type(task) and again is not task
        assert (again.entry, again.args, again.master_port) == (task.entry, task.args, task.master_port)


def test_user_errors_are_one_line(tmp_path):
    args = launcher_args(tmp_path, "--cluster", "local", "--nodes", "2")
    with pytest.raises(submit.LauncherError, match="use --nodes 1"):
        submit.submit_jobs("json:dumps", args, name="test")
    args = launcher_args(tmp_path, "--cluster", "local", "--ngpus", "-1")
    with pytest.raises(submit.LauncherError, match="--ngpus >= 0"):
        submit.submit_jobs("json:dumps", args, name="test")
    args = launcher_args(tmp_path, "--cluster", "local", "--ngpus", "2", "--ntasks_per_node", "3")
    with pytest.raises(submit.LauncherError, match="one process per GPU"):
        submit.submit_jobs("json:dumps", args, name="test")
    with pytest.raises(SystemExit) as exc:
        submit.launch("simdinov2.eval.knn", "k-NN", "simdinov2:knn", ["--cluster", "debug"],
                      required=("config_file", "pretrained_weights"))  # fmt: skip
    assert "--config-file is required" in str(exc.value.code)
    with pytest.raises(SystemExit) as exc:
        submit.launch("simdinov2.eval.knn", "k-NN", "simdinov2:knn",
                      ["--config-file", str(tmp_path / "none.yaml"), "--pretrained-weights", "w"])  # fmt: skip
    assert "does not exist" in str(exc.value.code)


@pytest.mark.slow
@pytest.mark.distributed
def test_local_cluster_gives_each_task_a_torch_distributed_environment(program, tmp_path):
    args = launcher_args(tmp_path / "%j", "--cluster", "local", "--ngpus", "0", "--ntasks_per_node", "2",
                         "--cpus_per_task", "1", "--timeout", "5", "--collective")  # fmt: skip
    job = submit.submit_jobs(f"{program}:record", args, name="test")
    results = job.results()
    assert sorted(r["rank"] for r in results) == ["0", "1"]
    assert all(r["world"] == "2" and r["sum"] == 3.0 for r in results)  # 1 + 2 over a gloo group
    assert all(str(job.job_id) in r["output_dir"] for r in results)


@pytest.mark.slow
def test_local_job_is_requeued_after_preemption_and_resumes(program, tmp_path):
    out = tmp_path / "preempt"
    args = launcher_args(out, "--cluster", "local", "--ngpus", "1", "--cpus_per_task", "1", "--timeout", "5")
    job = submit.submit_jobs(f"{program}:preemptible", args, name="test", wait=False)
    deadline = time.time() + 120
    while not (out / "pid").exists():
        assert time.time() < deadline, "the job never started"
        assert job.state != "FINISHED", job.stderr()
        time.sleep(0.2)
    time.sleep(0.5)  # the pid is written from inside the task, after submitit installed its handlers
    os.kill(int((out / "pid").read_text()), signal.SIGUSR2)  # what SLURM sends before a timeout
    assert job.result() == "resumed"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


@pytest.mark.parametrize("launcher, program, flags", [
    ("simdinov2.run.eval.knn", "simdinov2.eval.knn", ["--nb_knn", "--train-dataset"]),
    ("simdinov2.run.eval.linear", "simdinov2.eval.linear", ["--learning-rates", "--epoch-length"]),
    ("simdinov2.run.eval.log_regression", "simdinov2.eval.log_regression", ["--train-dataset"]),
    ("simdinov2.run.eval.finetuning", "simdinov2.eval.finetuning", ["--layer-decay", "--test-datasets", "--model-ema"]),
    ("simdinov2.run.train.train", "simdinov2.train.train", ["--config-file", "--no-resume"]),
])  # fmt: skip
def test_v2_launchers_join_program_and_launcher_flags(launcher, program, flags, capsys):
    if not _importable(program):
        pytest.skip(f"{program} is not written yet")
    module = pytest.importorskip(launcher)
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in [*flags, "--ngpus", "--nodes", "--timeout", "--partition", "--comment", "--exclude", "--cluster"]:  # fmt: skip
        assert flag in text, flag


def test_v2_eval_launcher_passes_parsed_args_to_the_program(tmp_path, monkeypatch):
    if not _importable("simdinov2.eval.knn"):
        pytest.skip("simdinov2.eval.knn is not written yet")
    import simdinov2.eval.knn as knn
    from simdinov2.run.eval import knn as knn_launcher

    seen = {}
    monkeypatch.setattr(knn, "main", lambda args: seen.update(vars(args)) or 0)
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    knn_launcher.main([
        "--config-file", str(config), "--pretrained-weights", "w.pth", "--output-dir", str(tmp_path / "%j"),
        "--nb_knn", "10", "20", "--cluster", "debug",
    ])  # fmt: skip
    assert seen["config_file"] == str(config) and seen["nb_knn"] == [10, 20]
    assert "%j" not in seen["output_dir"] and "DEBUG" in seen["output_dir"]
    assert json.dumps(seen["nb_knn"]) == "[10, 20]"


# ------------------------------------------------------------------------------ choosing where to run
# `fake_slurm` (tests/conftest.py): a fake for every SLURM command, first on PATH.


@pytest.mark.parametrize("present", [(), ("sbatch",)])
def test_cluster_slurm_without_slurm_is_one_line_and_creates_nothing(tmp_path, monkeypatch, present):
    """The newcomer's case: `--cluster slurm` on a machine without SLURM."""
    from simdino import run_with_submitit

    empty = tmp_path / "bin"
    empty.mkdir()
    for command in present:
        _fake_command(empty, command, "exit 0")
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "out"
    missing = "srun command is" if present else "sbatch and srun commands are"
    with pytest.raises(SystemExit) as exit_info:
        run_with_submitit.main(["--cluster", "slurm", "--output_dir", str(out / "%j"), "--arch", "vit_tiny"])
    assert exit_info.value.code == (
        f"run_with_submitit.py: error: --cluster slurm: SLURM's {missing} not installed here; run on this "
        "machine with --cluster local, or submit from a SLURM login node"
    )
    config = Path(submit.__file__).parent.parent / "configs" / "simdino_config.yaml"
    with pytest.raises(SystemExit) as exit_info:
        submit.launch("simdinov2.train.train", "train", "simdinov2:train",
                      ["--config-file", str(config), "--output-dir", str(out / "%j"), "--cluster", "slurm"])  # fmt: skip
    assert (
        f"{missing} not installed here" in exit_info.value.code and "--cluster local" in exit_info.value.code
    )
    assert not out.exists()


@pytest.mark.slow
def test_auto_runs_locally_when_slurm_is_installed_but_no_cluster_answers(
    fake_slurm, program, tmp_path, capsys
):
    """The newcomer's case: `sbatch` exists, SLURM is not configured."""
    _fake_command(
        fake_slurm, "sbatch", "echo 'sbatch: fatal: Could not establish a configuration source' >&2; exit 1"
    )
    _fake_command(fake_slurm, "scontrol", "echo 'scontrol: error: fetch_config: DNS SRV lookup failed' >&2\n"
                  "echo 'scontrol: fatal: Could not establish a configuration source' >&2; exit 1")  # fmt: skip
    assert submit.detect_cluster() == (
        "local",
        "no SLURM cluster answers (scontrol: fatal: Could not establish a configuration source)",
    )
    args = launcher_args(tmp_path / "%j", "--cpus_per_task", "1", "--nodes", "2")  # v1's default is 2 nodes
    assert args.cluster == "auto"
    submit.submit_jobs(f"{program}:evaluate", args, name="test")
    out = capsys.readouterr().out
    assert "--cluster auto: no SLURM cluster answers" in out and "running on this machine" in out
    assert "1 node instead of --nodes 2" in out
    assert 'results_eval_knn.json (last record): {"top1": 61.5}' in out  # the results, not only a job id


def test_auto_detection_without_sbatch_and_with_a_live_controller(fake_slurm, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_slurm))  # no sbatch anywhere
    (fake_slurm / "sbatch").unlink()
    assert submit.detect_cluster()[0] == "local"
    _fake_command(fake_slurm, "sbatch", "exit 0")
    _fake_command(fake_slurm, "scontrol", "echo 'Slurmctld(primary) at node1 is UP'")
    assert submit.detect_cluster() == ("slurm", "Slurmctld(primary) at node1 is UP")
    _fake_command(fake_slurm, "scontrol", "exec /bin/sleep 5")
    monkeypatch.setattr(submit, "SLURM_PING_TIMEOUT_S", 0.5)
    cluster, why = submit.detect_cluster()
    assert cluster == "local" and "within 0.5 s" in why


def _sbatch_recorder(folder: Path, record: Path) -> None:
    """A fake sbatch that keeps the batch script it was given and accepts it."""
    _fake_command(folder, "sbatch", f'cp "$1" {record}; echo "Submitted batch job 4242"')


def test_cpu_job_requests_cpus_and_tasks_but_no_gpu(fake_slurm, tmp_path, capsys):
    script = tmp_path / "script.sh"
    _sbatch_recorder(fake_slurm, script)
    args = launcher_args(tmp_path / "%j", "--cluster", "slurm", "--ngpus", "0", "--ntasks_per_node", "3",
                         "--cpus_per_task", "2", "--partition", "cpu")  # fmt: skip
    job = submit.submit_jobs("json:dumps", args, name="test")
    assert job.job_id == "4242"
    sbatch = script.read_text()
    assert "gpu" not in sbatch and "gres" not in sbatch
    assert "#SBATCH --ntasks-per-node=3" in sbatch and "#SBATCH --cpus-per-task=2" in sbatch
    assert "#SBATCH --partition=cpu" in sbatch and "--mem" not in sbatch  # the cluster's default memory
    out = capsys.readouterr().out
    assert "Submitted SLURM job 4242" in out and "squeue -j 4242" in out and str(tmp_path / "4242") in out

    args = launcher_args(tmp_path / "%j", "--cluster", "slurm", "--ngpus", "2")
    submit.submit_jobs("json:dumps", args, name="test")
    sbatch = script.read_text()
    assert "#SBATCH --gpus-per-node=2" in sbatch and "#SBATCH --ntasks-per-node=2" in sbatch
    assert "#SBATCH --mem=80GB" in sbatch


def test_refused_submission_is_one_line_with_the_fix(fake_slurm, tmp_path, capsys):
    _fake_command(fake_slurm, "sbatch", "echo 'sbatch: error: Batch job submission failed: Invalid generic "
                  "resource (gres) specification' >&2; exit 1")  # fmt: skip
    args = launcher_args(tmp_path / "%j", "--cluster", "slurm", "--ngpus", "8")
    with pytest.raises(submit.LauncherError) as exc:
        submit.submit_jobs("json:dumps", args, name="test")
    message = str(exc.value)
    assert "\n" not in message and "Invalid generic resource (gres) specification" in message
    assert "--ngpus 0 submits a CPU job" in message
    assert capsys.readouterr().err == ""  # submitit's echo of sbatch's stderr is replaced by that line

    _fake_command(
        fake_slurm, "sbatch", "echo 'sbatch: fatal: Could not establish a configuration source' >&2; exit 1"
    )
    with pytest.raises(SystemExit) as exit_info:
        submit.launch("simdinov2.eval.knn", "k-NN", "simdinov2:knn",
                      ["--config-file", str(Path(submit.__file__).parent.parent / "configs" / "simdino_config.yaml"),
                       "--pretrained-weights", "w", "--output-dir", str(tmp_path / "%j"), "--cluster", "slurm"])  # fmt: skip
    assert exit_info.value.code == (
        "simdinov2:knn: error: sbatch refused the job: sbatch: fatal: Could not establish a configuration source "
        "(is SLURM configured here? --cluster local runs on this machine)"
    )


def test_local_runs_are_sized_to_the_machine(monkeypatch):
    monkeypatch.setattr(submit, "_usable_cores", lambda: 2)
    monkeypatch.setattr(submit, "_cuda_device_count", lambda: 0)
    assert submit._local_tasks(8, 8, 10)[:2] == (1, 0)  # not 8 processes on 2 cores
    assert submit._local_tasks(8, 8, 1)[:2] == (2, 0)
    assert submit._local_tasks(1, 0, 1)[:2] == (1, 0)
    monkeypatch.setattr(submit, "_cuda_device_count", lambda: 4)
    assert submit._local_tasks(8, 8, 10)[:2] == (4, 4)  # one process per GPU present
    assert submit._local_tasks(2, 0, 1)[:2] == (2, 0)  # --ngpus 0: a CPU run even on a GPU machine


@pytest.mark.slow
def test_failed_local_task_is_one_line_naming_its_log(program, tmp_path, capsys):
    args = launcher_args(tmp_path / "%j", "--cluster", "local", "--ngpus", "0", "--timeout", "5")
    with pytest.raises(submit.LauncherError) as exc:
        submit.submit_jobs(f"{program}:failing", args, name="test")
    message = str(exc.value)
    assert "\n" not in message
    assert "failed: ValueError: the dataset folder /nowhere does not exist (full log: " in message
    log = Path(message.split("(full log: ")[1].rstrip(")"))
    assert "Traceback" in log.read_text()  # the traceback is kept, in the log


class _Payload:
    """What an attacker plants as a submitit pickle: unpickling it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_planted_submitit_pickle_in_the_run_folder_never_runs_on_requeue(program, tmp_path):
    """A requeue starts `python -m submitit.core._submit <job folder>` again, which unpickles
    `<job>_submitted.pkl` there: that folder is private (0700, outside the run folder), so a pickle planted
    in the run folder is never read."""
    out = tmp_path / "run"
    args = launcher_args(out, "--cluster", "local", "--ngpus", "0", "--cpus_per_task", "1", "--timeout", "5")
    job = submit.submit_jobs(f"{program}:record", args, name="test")
    folder = job.paths.folder
    assert out not in [folder, *folder.parents] and not list(out.glob("*.pkl"))
    assert (submit.private_job_root().stat().st_mode & 0o777) == 0o700
    assert (out / submit.LOGS_LINK).resolve() == folder.resolve()  # the logs are found from the run folder
    marker = tmp_path / "payload_ran"
    for name in (f"{job.job_id}_submitted.pkl", f"{job.job_id}_0_result.pkl"):
        (out / name).write_bytes(pickle.dumps(_Payload(marker)))
    env = {**os.environ, "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": str(job.job_id),
           "SUBMITIT_LOCAL_NTASKS": "1", "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
           "SUBMITIT_LOCAL_LOCALID": "0", "SUBMITIT_LOCAL_GLOBALID": "0"}  # fmt: skip
    requeued = subprocess.run([sys.executable, "-m", "submitit.core._submit", str(folder)], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert not marker.exists()  # before: the planted pickle ran `touch`
    assert requeued.returncode == 0, requeued.stderr[-2000:]
    assert json.loads((out / "rank0.json").read_text())["rank"] == "0"  # the real task ran again


def test_a_job_folder_others_may_write_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv(submit.JOB_FOLDER_ENV, str(shared))
    with pytest.raises(submit.LauncherError, match="writable by you only"):
        submit.private_job_root()
    monkeypatch.setenv(submit.JOB_FOLDER_ENV, str(tmp_path / "new" / "jobs"))
    assert (submit.private_job_root().stat().st_mode & 0o777) == 0o700
