"""Shared submitit launcher `simdinov2/run/submit.py` and the v2 launchers: flags, the debug and local
clusters, the torch.distributed environment of local tasks, and requeue on preemption."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

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
    return submit.get_args_parser(parents=[program_parser]).parse_args(["--output_dir", str(output_dir), *extra])


def test_flags_both_spellings_and_defaults():
    args = submit.get_args_parser().parse_args([])
    assert (args.ngpus, args.nodes, args.timeout, args.cpus_per_task) == (8, 1, 2800, 10)
    assert args.partition is None and not args.use_volta32 and args.comment == "" and args.exclude == ""
    assert args.cluster is None and args.mem_gb is None
    dino = ["--use_volta32", "--cpus_per_task", "4", "--mem_gb", "64"]
    dinov2 = ["--use-volta32", "--cpus-per-task", "4", "--mem-gb", "64"]
    for argv in (dino, dinov2):
        args = submit.get_args_parser().parse_args(argv)
        assert args.use_volta32 and args.cpus_per_task == 4 and args.mem_gb == 64
    args = submit.get_args_parser(nodes=2).parse_args(
        ["--ngpus", "4", "--partition", "p", "--comment", "c", "--exclude", "n1", "--cluster", "slurm", "--timeout", "60"]
    )
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

    args = argparse.Namespace(output_dir="/tmp/x", epochs=3)
    task = submit.SubmititTask("simdino.main_dino:main", args, master_port=12345)
    resubmission = task.checkpoint()
    assert isinstance(resubmission, submitit.helpers.DelayedSubmission)
    again = resubmission.function
    assert type(again) is submit.SubmititTask and again is not task
    assert (again.entry, again.args, again.master_port) == (task.entry, task.args, task.master_port)


def test_user_errors_are_one_line(tmp_path):
    args = launcher_args(tmp_path, "--cluster", "local", "--nodes", "2")
    with pytest.raises(ValueError, match="use --nodes 1"):
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
    args = launcher_args(tmp_path / "%j", "--cluster", "local", "--ngpus", "2", "--timeout", "5", "--collective")
    job = submit.submit_jobs(f"{program}:record", args, name="test")
    results = job.results()
    assert sorted(r["rank"] for r in results) == ["0", "1"]
    assert all(r["world"] == "2" and r["sum"] == 3.0 for r in results)  # 1 + 2 over a gloo group
    assert all(str(job.job_id) in r["output_dir"] for r in results)


@pytest.mark.slow
def test_local_job_is_requeued_after_preemption_and_resumes(program, tmp_path):
    out = tmp_path / "preempt"
    args = launcher_args(out, "--cluster", "local", "--ngpus", "1", "--timeout", "5")
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
    for flag in [*flags, "--ngpus", "--nodes", "--timeout", "--partition", "--comment", "--exclude", "--cluster"]:
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
