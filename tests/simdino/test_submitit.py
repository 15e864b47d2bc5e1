"""v1 launcher `simdino/run_with_submitit.py`: its flags, and main_dino run as a script through submitit's
debug cluster (in this process), interrupted, then requeued through `ScriptTask.checkpoint` and resumed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from simdino import run_with_submitit
from simdino.train import dino_loop
from simdinov2.run import submit

TINY = [
    "--arch", "vit_tiny", "--patch_size", "4", "--global_crops_size", "28", "--local_crops_size", "12",
    "--local_crops_number", "2", "--compile", "false", "--use_fp16", "false", "--num_workers", "0",
    "--batch_size_per_gpu", "4", "--hidden_dim", "256", "--z_dim", "64",
]  # fmt: skip


@pytest.fixture()
def small_train(tiny_imagefolder, tmp_path) -> Path:
    root = tmp_path / "train"
    for class_dir in sorted(p for p in (Path(tiny_imagefolder) / "train").iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:3]:
            (root / class_dir.name / image.name).symlink_to(image)
    return root


def test_launcher_flags_and_the_trainer_flags_it_passes_on():
    args = run_with_submitit.parse_args(
        ["--arch", "vit_base", "--eps", "0.05", "--use_volta32", "--partition", "learnfair", "--comment", "x",
         "--exclude", "node1", "--cpus_per_task", "6", "--mem_gb", "100", "--global_crops_scale", "0.3", "1",
         "--n", "3"]
    )  # fmt: skip
    # DINO's launcher defaults: 2 nodes x 8 GPUs, 2800 minutes
    assert (args.nodes, args.ngpus, args.timeout) == (2, 8, 2800)
    assert args.use_volta32 and args.partition == "learnfair"
    assert (args.comment, args.exclude, args.cpus_per_task, args.mem_gb) == ("x", "node1", 6, 100)
    assert args.output_dir == ""  # -> one folder per job under the shared folder
    # main_dino's flags, in order; no abbreviation of a launcher flag is taken for one of them
    assert args.script_argv == ["--arch", "vit_base", "--eps", "0.05", "--global_crops_scale", "0.3", "1", "--n", "3"]  # fmt: skip


@pytest.mark.slow
def test_debug_cluster_trains_then_requeued_job_resumes(small_train, tmp_path, monkeypatch):
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = run_with_submitit.parse_args(
            [*TINY, "--epochs", "2", "--data_path", str(small_train), "--output_dir", str(tmp_path / "%j"),
             "--cluster", "debug"]
        )  # fmt: skip

        class Preempted(BaseException):  # not an Exception: submitit's debug job would open pdb
            pass

        real_train_one_epoch = dino_loop.train_one_epoch

        def preempted_in_epoch_1(*a, **kw):
            if a[1] >= 1:  # the epoch argument (after the EpochLoop)
                raise Preempted
            return real_train_one_epoch(*a, **kw)

        monkeypatch.setattr(dino_loop, "train_one_epoch", preempted_in_epoch_1)
        with pytest.raises(Preempted):
            submit.submit_jobs(run_with_submitit.TRAINER, args, name="simdino", task_type=submit.ScriptTask)
        (out,) = [p for p in tmp_path.iterdir() if p.name.startswith("DEBUG_")]
        assert args.output_dir == str(out)  # %j became the job id
        assert len((out / "log.txt").read_text().splitlines()) == 1

        # submitit calls checkpoint() on timeout / preemption; the resubmitted task resumes
        monkeypatch.setattr(dino_loop, "train_one_epoch", real_train_one_epoch)
        assert "RANK" not in os.environ  # the debug job's rendezvous did not stay in this process
        resubmission = submit.ScriptTask(run_with_submitit.TRAINER, args).checkpoint()
        import submitit

        job = submitit.AutoExecutor(folder=tmp_path / "requeue", cluster="debug").submit(
            resubmission.function
        )
        job.result()
    finally:
        torch.set_num_threads(previous_threads)
    assert "resuming from epoch 1" in (out / "output.log").read_text()
    assert [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()] == [0, 1]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_local_job_preempted_mid_epoch_checkpoints_then_requeued_job_resumes(small_train, tmp_path):
    """SLURM's preemption signal (SIGUSR2, as submitit asks for) mid-epoch: the trainer writes the checkpoint
    of the iteration reached, then submitit's handler requeues the job, which resumes within the epoch."""
    import signal
    import time

    args = run_with_submitit.parse_args(
        [*TINY, "--epochs", "2", "--batch_size_per_gpu", "1", "--data_path", str(small_train),
         "--output_dir", str(tmp_path / "job"), "--cluster", "local", "--nodes", "1", "--ngpus", "0", "--cpus_per_task", "1"]
    )  # fmt: skip
    job = submit.submit_jobs(
        run_with_submitit.TRAINER, args, name="simdino", task_type=submit.ScriptTask, wait=False
    )
    metrics = tmp_path / "job" / "training_metrics.json"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and job.state != "FINISHED", job.stderr()
        time.sleep(0.2)  # iteration 0 of 9 logged: inside epoch 0
    (task,) = _children(job._process.pid)
    os.kill(task, signal.SIGUSR2)
    job.result()
    log = (tmp_path / "job" / "output.log").read_text()
    assert "SIGUSR2 received: stopping after this iteration" in log
    assert "resuming from epoch 0, iteration" in log and "of it" in log
    assert [
        json.loads(line)["epoch"] for line in (tmp_path / "job" / "log.txt").read_text().splitlines()
    ] == [0, 1]
