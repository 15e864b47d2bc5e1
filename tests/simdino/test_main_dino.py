"""v1 trainer `simdino/main_dino.py`: flags, upstream output files, resume equality, DINO baseline,
optimizers, trackers, non-finite loss, bad inputs and a 2-process torchrun (CPU, tiny ViT)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from simdino import main_dino
from simdino.train.multicrop import MultiCropWrapper
from simdinov2.precision import resolve_amp

REPO = Path(__file__).resolve().parents[2]
SIMDINO_DIR = REPO / "simdino"

TINY = [
    "--arch", "vit_tiny", "--patch_size", "4", "--global_crops_size", "28", "--local_crops_size", "12",
    "--local_crops_number", "2", "--compile", "false", "--use_fp16", "false", "--num_workers", "0",
    "--warmup_epochs", "1", "--hidden_dim", "256", "--z_dim", "64",
]  # fmt: skip
PER_CLASS = 3  # 9 training images: 2 iterations per epoch at batch 4


def run_main(data: Path, out: Path, *extra: str, batch: int = 4, epochs: int = 1) -> None:
    argv = [*TINY, "--data_path", str(data), "--output_dir", str(out), "--batch_size_per_gpu", str(batch),
            "--epochs", str(epochs), *extra]  # fmt: skip
    main_dino.main(main_dino.get_args_parser().parse_args(argv))


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def load_ckpt(path: Path) -> dict:
    from simdinov2.checkpoint import safe_torch_load

    return safe_torch_load(path)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # In-process training on 2 shared cores: one intra-op thread is several times faster than two
    # fighting other processes for the cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def train_dir(tiny_imagefolder, tmp_path_factory) -> Path:
    """A few images per class of the shared tiny ImageFolder (links, so nothing is copied)."""
    root = tmp_path_factory.mktemp("small_train")
    for class_dir in sorted(p for p in (Path(tiny_imagefolder) / "train").iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir()
        for image in sorted(class_dir.iterdir())[:PER_CLASS]:
            (root / class_dir.name / image.name).symlink_to(image)
    return root


def test_every_reference_flag_and_default():
    args = main_dino.get_args_parser().parse_args([])
    expected = {
        "arch": "vit_small", "patch_size": 16, "out_dim": 65536, "norm_last_layer": True,
        "momentum_teacher": 0.996, "use_bn_in_head": False, "z_dim": 256, "hidden_dim": 2048,
        "use_simdino": True, "warmup_teacher_temp": 0.04, "teacher_temp": 0.04,
        "warmup_teacher_temp_epochs": 0, "compile": True, "use_fp16": None, "weight_decay": 0.04,
        "weight_decay_end": 0.4, "clip_grad": 3.0, "batch_size_per_gpu": 64, "epochs": 100,
        "freeze_last_layer": 1, "lr": 0.0005, "warmup_epochs": 10, "min_lr": 1e-6, "optimizer": "adamw",
        "drop_path_rate": 0.1, "local_crops_number": 8, "output_dir": ".", "saveckp_freq": 10, "seed": 0,
        "num_workers": 10, "dist_url": "env://", "local_rank": 0, "track_wandb": False, "track_swan": False,
        "coeff": 1.0, "eps": 0.5, "reduce_cov": 0, "expa_type": 1, "global_crops_size": 224,
        "local_crops_size": 96, "device": "auto", "amp_dtype": "auto",
    }  # fmt: skip
    for key, value in expected.items():
        assert getattr(args, key) == value, key
    # use_fp16 unset = upstream's true on CUDA, the CPU rule on a CPU (simdinov2.precision.resolve_amp)
    assert resolve_amp(torch.device("cuda"), args.use_fp16).dtype == torch.float16
    assert tuple(args.global_crops_scale) == (0.4, 1.0)
    assert tuple(args.local_crops_scale) == (0.05, 0.4)
    # the upstream README command parses as written
    readme = ["--arch", "vit_base", "--patch_size", "16", "--local_crops_number", "10", "--eps", "0.05",
              "--coeff", "1", "--output_dir", "o", "--data_path", "d", "--track_wandb"]  # fmt: skip
    args = main_dino.get_args_parser().parse_args(readme)
    assert args.arch == "vit_base" and args.local_crops_number == 10 and args.eps == 0.05 and args.track_wandb
    for arch in ("vit_tiny", "vit_small", "vit_base", "vit_large", "resnet50"):
        assert main_dino.get_args_parser().parse_args(["--arch", arch]).arch == arch


def test_multicrop_wrapper_runs_each_resolution_once_and_is_view_major():
    from simdinov2.layers import DINOHead
    from simdinov2.models import build_vit

    torch.manual_seed(0)
    backbone = build_vit("vit_tiny", patch_size=4, v1=True, img_size=28)
    head = DINOHead(backbone.embed_dim, out_dim=32, hidden_dim=64, bottleneck_dim=32, remove_last_layer=True)
    wrapper = MultiCropWrapper(backbone, head).eval()
    crops = [
        torch.randn(3, 3, 28, 28),
        torch.randn(3, 3, 28, 28),
        torch.randn(3, 3, 12, 12),
        torch.randn(3, 3, 12, 12),
    ]
    calls = []
    backbone.register_forward_hook(lambda mod, inp, out: calls.append(len(inp[0])))
    with torch.no_grad():
        out = wrapper(crops)
        separate = torch.cat([head(backbone(c)) for c in crops])
    assert calls[0] == 2  # one backbone call with the 2 size groups
    assert out.shape == (12, 32)
    torch.testing.assert_close(out, separate, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(12))  # SimDINO features are L2-normalised


@pytest.fixture(scope="module")
def base_run(train_dir, tmp_path_factory) -> Path:
    """One SimDINO epoch with wandb offline, shared read-only by several tests (copy before changing)."""
    out = tmp_path_factory.mktemp("base_run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        run_main(train_dir, out, "--saveckp_freq", "1", *(["--track_wandb"] if _has("wandb") else []))
    return out


def _has(package: str) -> bool:

    return importlib.util.find_spec(package) is not None


def copy_run(run: Path, dest: Path) -> Path:

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("wandb*", "checkpoint0*"))
    return dest


@pytest.mark.slow
def test_one_epoch_writes_the_upstream_files(base_run):
    out = base_run
    for name in ("checkpoint.pth", "checkpoint0000.pth", "log.txt", "args.log", "output.log"):
        assert (out / name).is_file(), name
    ckpt = load_ckpt(out / "checkpoint.pth")
    # upstream's keys, and the epoch's log.txt line (a resume writes it if a kill came before it)
    assert set(ckpt) == {"student", "teacher", "optimizer", "epoch", "args", "dino_loss", "log_stats"}
    assert ckpt["epoch"] == 1 and ckpt["args"].arch == "vit_tiny"
    assert [ckpt["log_stats"]] == read_log(out)
    for part in ("student", "teacher"):
        roots = {key.split(".")[0] for key in ckpt[part]}
        assert roots == {"backbone", "head"}, roots
    assert "backbone.mask_token" not in ckpt["student"]  # DINO v1 layout
    assert ckpt["optimizer"]["state"] and all("exp_avg" in s for s in ckpt["optimizer"]["state"].values())
    (line,) = read_log(out)
    # upstream's keys, then the teacher's effective rank (ours)
    assert list(line) == [
        "train_loss",
        "train_expa_loss",
        "train_comp_loss",
        "train_lr",
        "train_wd",
        "train_effective_rank",
        "train_effective_rank_head",
        "epoch",
    ]
    assert line["epoch"] == 0
    # loss = -(coeff * comp + expa) on every iteration, so also for the epoch averages
    assert line["train_loss"] == pytest.approx(-(line["train_comp_loss"] + line["train_expa_loss"]), abs=1e-5)
    assert "arch: vit_tiny" in (out / "args.log").read_text()
    console = (out / "output.log").read_text()
    assert "Epoch: [0/1]" in console
    progress = [ln for ln in console.splitlines() if "eta:" in ln and "loss:" in ln]
    assert progress, console
    for field in ("[0/2]", "comp_loss:", "expa_loss:", "lr:", "wd:", "time:"):
        assert field in progress[0]
    # per-iteration metrics for loss curves (plot_log reads them)
    records = [json.loads(x) for x in (out / "training_metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1]
    assert {"loss", "comp_loss", "expa_loss", "lr", "wd"} <= set(records[0])
    # the teacher loads into a fresh ViT through the shared loader (what the evals do)
    from simdinov2.checkpoint import load_backbone_weights
    from simdinov2.models import build_vit

    report = load_backbone_weights(
        build_vit("vit_tiny", patch_size=4, v1=True, img_size=28), out / "checkpoint.pth"
    )
    assert report.loaded and not report.missing_keys


@pytest.mark.slow
def test_wandb_logs_offline(base_run):
    pytest.importorskip("wandb")
    runs = list((base_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))


@pytest.fixture(scope="module")
def two_epoch_run(train_dir, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run with a checkpoint per epoch: the reference of the resume tests (read-only)."""
    full = tmp_path_factory.mktemp("two_epoch_run") / "full"
    run_main(train_dir, full, "--saveckp_freq", "1", epochs=2)
    return full


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(two_epoch_run, train_dir, tmp_path):
    full, resumed = two_epoch_run, tmp_path / "resumed"
    # What a run killed after epoch 0 leaves behind: its epoch-0 checkpoint and first log line.
    resumed.mkdir()
    (resumed / "checkpoint.pth").write_bytes((full / "checkpoint0000.pth").read_bytes())
    (resumed / "log.txt").write_text((full / "log.txt").read_text().splitlines(keepends=True)[0])
    run_main(train_dir, resumed, "--saveckp_freq", "1", epochs=2)
    assert "resuming from epoch 1" in (resumed / "output.log").read_text()

    assert (resumed / "log.txt").read_text() == (full / "log.txt").read_text()
    a, b = load_ckpt(full / "checkpoint.pth"), load_ckpt(resumed / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == 2
    for part in ("student", "teacher"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    for pid, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][pid][name]))


class _Killed(BaseException):
    """`kill -9` at a chosen point: nothing after it runs (not an Exception: no handler catches it)."""


def _metric_iterations(out: Path) -> list[int]:
    return [
        json.loads(line)["iteration"] for line in (out / "training_metrics.json").read_text().splitlines()
    ]


@pytest.mark.slow
def test_kill_after_checkpoint_rename_loses_nothing_on_resume(
    two_epoch_run, train_dir, tmp_path, monkeypatch
):
    from simdino.train import epoch_checkpoint

    full, killed = two_epoch_run, tmp_path / "killed"

    real_save = epoch_checkpoint.atomic_torch_save

    def save_then_die(state, path):
        real_save(state, path)
        if Path(path).name == "checkpoint.pth" and state["epoch"] == 2:
            # killed after the rename, with another write's temporary half done
            (Path(path).parent / ".checkpoint0001.pth.0123abcd.tmp").write_bytes(b"partial")
            raise _Killed

    monkeypatch.setattr(epoch_checkpoint, "atomic_torch_save", save_then_die)
    with pytest.raises(_Killed):
        run_main(train_dir, killed, "--saveckp_freq", "1", epochs=2)
    monkeypatch.setattr(epoch_checkpoint, "atomic_torch_save", real_save)
    assert len(read_log(killed)) == 1 and not (killed / "checkpoint0001.pth").exists()

    run_main(train_dir, killed, "--saveckp_freq", "1", epochs=2)
    assert (killed / "log.txt").read_text() == (full / "log.txt").read_text()
    periodic_full, periodic = load_ckpt(full / "checkpoint0001.pth"), load_ckpt(killed / "checkpoint0001.pth")
    assert periodic["epoch"] == periodic_full["epoch"] == 2
    for key in periodic_full["teacher"]:
        assert torch.equal(periodic["teacher"][key], periodic_full["teacher"][key]), key
    assert not list(killed.glob(".*.tmp"))
    assert _metric_iterations(killed) == _metric_iterations(full)
    # resuming again (nothing left to train) writes nothing twice
    run_main(train_dir, killed, "--saveckp_freq", "1", epochs=2)
    assert (killed / "log.txt").read_text() == (full / "log.txt").read_text()


@pytest.mark.slow
def test_kill_mid_epoch_leaves_no_duplicate_metric_rows(two_epoch_run, train_dir, tmp_path):
    full, resumed = two_epoch_run, tmp_path / "resumed"
    rows = (full / "training_metrics.json").read_text().splitlines(keepends=True)
    epoch0 = [row for row in rows if json.loads(row)["iteration"] < 2]  # 2 iterations per epoch
    assert 0 < len(epoch0) < len(rows)
    # killed during epoch 1: its first row written, the next one cut short
    resumed.mkdir()
    (resumed / "checkpoint.pth").write_bytes((full / "checkpoint0000.pth").read_bytes())
    (resumed / "log.txt").write_text((full / "log.txt").read_text().splitlines(keepends=True)[0])
    (resumed / "training_metrics.json").write_text(
        "".join(epoch0) + rows[len(epoch0)] + '{"iteration": 3, "lo'
    )
    run_main(train_dir, resumed, "--saveckp_freq", "1", epochs=2)
    assert _metric_iterations(resumed) == _metric_iterations(full)
    assert (resumed / "log.txt").read_text() == (full / "log.txt").read_text()


@pytest.mark.slow
def test_kill_before_the_first_checkpoint_leaves_no_duplicate_rows(train_dir, tmp_path):
    """Killed in epoch 0: no checkpoint.pth, some rows (and half a row) of epoch 0 written. Before: the
    rerun appended its rows after them (iterations [0, 0, 1, ...])."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_main(train_dir, full, epochs=2)
    rows = (full / "training_metrics.json").read_text().splitlines(keepends=True)
    resumed.mkdir()
    (resumed / "training_metrics.json").write_text(rows[0] + '{"iteration": 1, "lo')
    (resumed / ".log.txt.0123abcd.tmp").write_text("{")  # a write cut short
    run_main(train_dir, resumed, epochs=2)
    assert _metric_iterations(resumed) == _metric_iterations(full)
    assert [row["epoch"] for row in read_log(resumed)] == [row["epoch"] for row in read_log(full)] == [0, 1]
    assert not list(resumed.glob("*.tmp"))


@pytest.mark.parametrize("content", ["v2_snapshot", "no_student", "list", "folder"])
def test_a_checkpoint_pth_that_is_not_a_v1_checkpoint_is_one_line(content, train_dir, tmp_path):
    """Before: a KeyError / TypeError traceback, or (a folder) a traceback after a full epoch."""
    out = tmp_path / "run"
    out.mkdir()
    path = out / "checkpoint.pth"
    if content == "folder":
        path.mkdir()
    else:
        obj = {
            "v2_snapshot": {"teacher": {"backbone.cls_token": torch.zeros(1)}},
            "no_student": {"teacher": {}, "optimizer": {}, "epoch": 1},
            "list": [1, 2],
        }[content]
        torch.save(obj, path)
    with pytest.raises(SystemExit) as exc:
        run_main(train_dir, out)
    message = _error_line(exc)
    assert f"cannot resume from {path}" in message and "another --output_dir" in message
    assert not (out / "log.txt").exists()  # refused before training


@pytest.mark.slow
def test_dino_baseline_trains_with_prototypes_centering_and_frozen_last_layer(train_dir, tmp_path):
    out = tmp_path / "dino"
    run_main(train_dir, out, "--use_simdino", "false", "--out_dim", "256", "--warmup_teacher_temp_epochs", "1",
             "--teacher_temp", "0.07", "--warmup_epochs", "0")  # fmt: skip
    (line,) = read_log(out)
    assert list(line) == [
        "train_loss",
        "train_lr",
        "train_wd",
        "train_effective_rank",
        "epoch",
    ]  # no head rank: DINO
    assert line["train_loss"] > 0  # a cross-entropy
    ckpt = load_ckpt(out / "checkpoint.pth")
    center = ckpt["dino_loss"]["center"]
    assert center.shape == (1, 256) and center.abs().sum() > 0  # centering ran
    student, teacher = ckpt["student"], ckpt["teacher"]
    assert student["head.last_layer.weight_v"].shape == (256, 64)
    # frozen during epoch 0: the prototypes did not move (and the EMA teacher's copy is the same)...
    assert torch.equal(student["head.last_layer.weight_v"], teacher["head.last_layer.weight_v"])
    # ...while the rest of the student was trained
    assert not torch.equal(
        student["backbone.blocks.0.attn.qkv.weight"], teacher["backbone.blocks.0.attn.qkv.weight"]
    )


@pytest.mark.parametrize(
    "optimizer, state_key", [("sgd", "momentum_buffer"), ("lars", "mu")]
)  # adamw: base_run
@pytest.mark.slow
def test_each_optimizer_takes_a_step(train_dir, tmp_path, optimizer, state_key):
    out = tmp_path / optimizer
    n_images = len([p for p in train_dir.rglob("*") if p.is_file()])
    # one step: the whole (tiny) dataset in one batch, no warm-up so the learning rate is not 0
    run_main(train_dir, out, "--optimizer", optimizer, "--warmup_epochs", "0", batch=n_images)
    ckpt = load_ckpt(out / "checkpoint.pth")
    states = ckpt["optimizer"]["state"]
    assert states and all(state_key in s for s in states.values())
    key = "backbone.blocks.0.mlp.fc1.weight"
    assert not torch.equal(ckpt["student"][key], ckpt["teacher"][key])


def test_missing_tracker_package_is_one_line(train_dir, tmp_path, monkeypatch, capsys):

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "swanlab" else real_find_spec(name, *a)
    )
    with pytest.raises(SystemExit) as exc:
        run_main(train_dir, tmp_path / "swan", "--track_swan")
    message = str(exc.value.code)
    assert "pip install swanlab" in message and "\n" not in message
    assert not (tmp_path / "swan" / "checkpoint.pth").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--patch_size", "32"], "--global_crops_size 28 is smaller than one patch (--patch_size 32)"),
        (["--patch_size", "16"], "--local_crops_size 12 is smaller than one patch (--patch_size 16)"),
    ],
)
def test_patch_larger_than_a_crop_is_one_line(train_dir, tmp_path, flags, message):
    with pytest.raises(SystemExit) as exc:
        run_main(train_dir, tmp_path / "out", *flags)
    assert (
        str(exc.value.code)
        == f"main_dino.py: error: {message}: raise {message.split()[0]} or lower --patch_size"
    )
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(base_run, train_dir, tmp_path, monkeypatch):
    out = copy_run(base_run, tmp_path / "nan")
    good = (out / "checkpoint.pth").read_bytes()

    from simdinov2.loss import MCRLoss

    real_forward = MCRLoss.forward
    calls = {"n": 0}

    def nan_on_second_call(self, student, teacher):
        calls["n"] += 1
        loss, parts = real_forward(self, student, teacher)
        if calls["n"] == 2:
            loss = loss * float("nan")
            parts = {**parts, "expa_loss": parts["expa_loss"] * float("nan")}
        return loss, parts

    monkeypatch.setattr(MCRLoss, "forward", nan_on_second_call)
    with pytest.raises(SystemExit) as exc:
        run_main(train_dir, out, epochs=2)
    message = str(exc.value.code)
    assert exc.value.code not in (0, None)
    n_iter = load_ckpt(out / "checkpoint.pth")  # still loadable, still epoch 1
    assert n_iter["epoch"] == 1
    assert "non-finite loss" in message and "\n" not in message
    assert "iteration" in message and "comp_loss=" in message and "expa_loss=nan" in message
    assert hashlib.sha256((out / "checkpoint.pth").read_bytes()).digest() == hashlib.sha256(good).digest()
    assert len(read_log(out)) == 1


def _error_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value.code)
    assert exc.value.code not in (0, None)
    assert "\n" not in message, message
    return message


def test_bad_inputs_give_one_clear_line(train_dir, tmp_path, capsys):
    def fails(*argv: str) -> str:
        with pytest.raises(SystemExit) as exc:
            main_dino.main(
                main_dino.get_args_parser().parse_args([*TINY, "--output_dir", str(tmp_path / "o"), *argv])
            )
        return _error_line(exc)

    assert "--data_path is missing" in fails()
    assert "does not exist" in fails("--data_path", str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert "empty folder" in fails("--data_path", str(tmp_path / "empty"))
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "notes.txt").write_text("not an image")
    assert "no images" in fails("--data_path", str(tmp_path / "noimg"))
    assert "--eps 0.0 is invalid: it must be > 0" in fails("--data_path", str(train_dir), "--eps", "0")
    assert "--eps -0.5 is invalid: it must be > 0" in fails("--data_path", str(train_dir), "--eps", "-0.5")
    assert "fewer than one step" in fails("--data_path", str(train_dir), "--batch_size_per_gpu", "100000")

    with pytest.raises(SystemExit) as exc:
        main_dino.get_args_parser().parse_args(["--arch", "vit_huge"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'vit_huge'" in err and "vit_small" in err


def test_unreadable_image_is_fatal_and_named(train_dir, tmp_path):

    data = tmp_path / "data"
    shutil.copytree(train_dir, data, symlinks=True)
    first_class = sorted(p for p in data.iterdir() if p.is_dir())[0]
    bad = first_class / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    n_images = len([p for p in data.rglob("*") if p.is_file()])
    with pytest.raises(SystemExit) as exc:
        run_main(data, tmp_path / "o", batch=n_images, epochs=1)
    message = _error_line(exc)
    assert "broken.jpg" in message


@pytest.mark.slow
def test_resuming_a_checkpoint_of_another_arch_fails_clearly(base_run, train_dir, tmp_path):
    out = copy_run(base_run, tmp_path / "arch")
    with pytest.raises(SystemExit) as exc:
        run_main(train_dir, out, "--patch_size", "7", epochs=2)
    message = _error_line(exc)
    assert "cannot resume" in message and "--patch_size 4" in message and "--output_dir" in message
    ckpt = load_ckpt(out / "checkpoint.pth")
    ckpt["args"].arch = "vit_small"
    torch.save(ckpt, out / "checkpoint.pth")
    with pytest.raises(SystemExit) as exc:
        run_main(train_dir, out, epochs=2)
    assert "--arch vit_small" in _error_line(exc)
    # without recorded args (a checkpoint written elsewhere) the weights themselves are checked
    del ckpt["args"]
    torch.save(ckpt, out / "checkpoint.pth")
    with pytest.raises(SystemExit) as exc:
        run_main(train_dir, out, "--patch_size", "7", epochs=2)
    assert "do not fit this model" in _error_line(exc)


@pytest.mark.slow
def test_cli_error_exit_code_and_single_stderr_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "main_dino.py", *TINY, "--data_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path)],
        cwd=SIMDINO_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0], proc.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_truncated_jpeg_under_torchrun_is_one_line_not_a_gloo_traceback(train_dir, tmp_path):
    """Before: the right line inside 129 lines of the waiting rank's gloo traceback."""
    data = tmp_path / "data"
    shutil.copytree(train_dir, data, symlinks=False)
    first_class = sorted(p for p in data.iterdir() if p.is_dir())[0]
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(jpeg, format="JPEG")
    # one process meets it while the other waits in a collective
    (first_class / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "main_dino.py", *TINY,
           "--batch_size_per_gpu", "4", "--epochs", "1", "--data_path", str(data), "--output_dir", str(tmp_path / "o")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=SIMDINO_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "main_dino.py: error:" in line]
    assert len(errors) == 1 and "cut" in errors[0] and ".jpg" in errors[0], proc.stderr[-3000:]
    assert "Connection closed by peer" not in proc.stderr and "gloo" not in proc.stderr.lower(), proc.stderr[
        -3000:
    ]


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_then_resume(train_dir, tmp_path):
    out = tmp_path / "ddp"
    data = train_dir
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def torchrun(epochs: int) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "main_dino.py",
            "--arch", "vit_tiny", "--patch_size", "4", "--global_crops_size", "28", "--local_crops_size", "12",
            "--local_crops_number", "2", "--batch_size_per_gpu", "4", "--epochs", str(epochs),
            "--compile", "false", "--use_fp16", "false", "--num_workers", "0",
            "--data_path", str(data), "--output_dir", str(out), "--hidden_dim", "256", "--z_dim", "64",
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=SIMDINO_DIR, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    torchrun(2)
    for name in ("checkpoint.pth", "checkpoint0000.pth", "log.txt", "args.log", "output.log"):
        assert (out / name).is_file(), name
    assert "world size 2" in (out / "output.log").read_text()
    assert [rec["epoch"] for rec in read_log(out)] == [0, 1]
    torchrun(3)
    assert "resuming from epoch 2" in (out / "output.log").read_text()
    assert [rec["epoch"] for rec in read_log(out)] == [0, 1, 2]
    ckpt = load_ckpt(out / "checkpoint.pth")
    assert ckpt["epoch"] == 3
    assert not any(k.startswith("module.") for k in ckpt["student"])


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_to_torchrun_checkpoints_mid_epoch_with_one_line(tiny_imagefolder, tmp_path):
    """SIGTERM to torchrun (which forwards it to the workers' process groups, loader workers included):
    the workers write the checkpoint of the iteration reached and say so in one line; the run resumes.
    torchrun as `python -m simdinov2.run.torchrun`, whose own ending is one line too, without torch's
    `SignalException` traceback."""

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "simdinov2.run.torchrun", "--nproc_per_node=2", "main_dino.py", *TINY[:-8],
        "--num_workers", "1", "--hidden_dim", "256", "--z_dim", "64", "--batch_size_per_gpu", "4",
        "--data_path", str(Path(tiny_imagefolder) / "train"), "--output_dir", str(out),
    ]  # fmt: skip
    with subprocess.Popen([*cmd, "--epochs", "20"], cwd=SIMDINO_DIR, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as proc:  # fmt: skip
        metrics = out / "training_metrics.json"
        deadline = time.monotonic() + 240
        while (
            not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline
        ):
            time.sleep(0.5)  # two rows: iterations 0 and 10, well inside epoch 0 (15 iterations)
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr and "SignalException" not in stderr, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1].startswith("torchrun: stopped by SIGTERM"), stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "interrupted by SIGTERM" in line]
    assert len(lines) == 1 and lines[0].startswith(
        "main_dino.py: interrupted by SIGTERM: checkpoint of epoch"
    ), stderr[-3000:]
    assert "DataLoader worker" not in stderr
    ckpt = load_ckpt(out / "checkpoint.pth")
    assert ckpt["epoch_step"] > 0 and len(ckpt["rng"]) == 2
    done = subprocess.run(
        [*cmd, "--epochs", "1"], cwd=SIMDINO_DIR, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from epoch 0, iteration {ckpt['epoch_step']} of it" in (out / "output.log").read_text()
    assert [rec["epoch"] for rec in read_log(out)] == [0]


# ------------------------------------------------------------------------------------------- GPU only
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@gpu
@pytest.mark.gpu
def test_gpu_fp16_scaler_and_compile(train_dir, tmp_path):
    out = tmp_path / "gpu"
    argv = [a for a in TINY if a not in ()]
    argv[argv.index("--compile") + 1] = "true"
    argv[argv.index("--use_fp16") + 1] = "true"
    main_dino.main(main_dino.get_args_parser().parse_args(
        [*argv, "--data_path", str(train_dir), "--output_dir", str(out), "--batch_size_per_gpu", "8",
         "--epochs", "1", "--device", "cuda"]
    ))  # fmt: skip
    ckpt = load_ckpt(out / "checkpoint.pth")
    assert "fp16_scaler" in ckpt and ckpt["fp16_scaler"]["scale"] > 0
    assert not any("_orig_mod" in k for k in ckpt["student"])  # in-place compile keeps the plain keys
    assert all(torch.isfinite(torch.tensor(v)) for v in read_log(out)[0].values())


@gpu
@pytest.mark.gpu
@pytest.mark.distributed
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for nccl")
def test_gpu_torchrun_nccl(train_dir, tmp_path):
    out = tmp_path / "nccl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "main_dino.py", *TINY,
           "--batch_size_per_gpu", "8", "--epochs", "1", "--data_path", str(train_dir), "--output_dir", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=SIMDINO_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend nccl" in (out / "output.log").read_text()


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("_time")} for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_stop_signal_mid_epoch_resumes_exactly(train_dir, tmp_path, monkeypatch, capsys, workers):
    """SIGTERM during iteration 5 (epoch 1, its 2nd of 4 iterations): one line, the checkpoint of that
    iteration, and the resumed run's files, losses and weights are the uninterrupted run's, bit for bit
    (with loader workers too: the skipped batches are loaded again so their random streams continue)."""

    from simdino.main_dino import dino_loop

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    extra = ("--saveckp_freq", "1", "--num_workers", workers)
    run_main(train_dir, full, *extra, batch=2, epochs=2)  # 9 images: 4 iterations per epoch

    real_step, calls = dino_loop.train_step, []

    def step_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(dino_loop, "train_step", step_then_signal)
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_dir, stopped, *extra, batch=2, epochs=2)
    monkeypatch.undo()
    assert exit_info.value.code == 128 + signal.SIGTERM and len(calls) == 6
    lines = [line for line in capsys.readouterr().err.splitlines() if "interrupted by SIGTERM" in line]
    assert len(lines) == 1 and "epoch 1, iteration 2 of 4" in lines[0], lines
    assert load_ckpt(stopped / "checkpoint.pth")["epoch_step"] == 2 and len(read_log(stopped)) == 1

    run_main(train_dir, stopped, *extra, batch=2, epochs=2)
    assert "resuming from epoch 1, iteration 2 of it" in (stopped / "output.log").read_text()
    assert (stopped / "log.txt").read_text() == (full / "log.txt").read_text()
    assert _without_times(
        json.loads(line) for line in (stopped / "training_metrics.json").read_text().splitlines()
    ) == _without_times(
        json.loads(line) for line in (full / "training_metrics.json").read_text().splitlines()
    )
    a, b = load_ckpt(full / "checkpoint.pth"), load_ckpt(stopped / "checkpoint.pth")
    for part in ("student", "teacher"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
