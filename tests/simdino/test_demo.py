"""`python -m simdino.demo`: one-line data errors, a reproducible recipe command, and a short end-to-end
run (train for a few seconds, k-NN of teacher / random init / pixels, results.json and both figures)."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image

from simdino import demo
from simdino.fmnist import adapt, data, knn, machine, recipe, report
from simdinov2 import precision
from simdinov2.errors import UserError

HAS_FASHION_MNIST = data.fashion_mnist_installed() is None


def exit_message(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value.code)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_fashion_mnist_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEFAULT_FASHION_MNIST_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit) as excinfo:
        demo.main(["--seconds", "1", "--output_dir", str(tmp_path / "out")])
    message = exit_message(excinfo)
    assert "sudo apt-get install dataset-fashion-mnist" in message and "--data_path" in message
    assert not (tmp_path / "out").exists()  # nothing started


def test_data_path_needs_train_and_val_folders(tmp_path):
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    with pytest.raises(SystemExit) as excinfo:
        demo.main(
            ["--seconds", "1", "--output_dir", str(tmp_path / "out"), "--data_path", str(tmp_path / "data")]
        )
    message = exit_message(excinfo)
    assert "val" in message and "ImageFolder" in message


def test_recipe_command_is_the_trainer_command_of_the_flags(tmp_path):
    flags = recipe.recipe_flags(123.0, tmp_path, "FashionMNIST:split=TRAIN", num_workers=1, eps=0.05)
    assert flags["time_budget"] == 123.0 and flags["eps"] == 0.05
    assert flags["patch_size"] == recipe.DEMO_RECIPE["patch_size"] and flags["output_dir"] == str(tmp_path)
    words = shlex.split(recipe.recipe_command(flags))
    assert words[:2] == ["python", "simdino/main_dino.py"]
    assert words[words.index("--local_crops_scale") + 1 : words.index("--local_crops_scale") + 3] == [
        "0.1",
        "0.4",
    ]
    assert words[words.index("--time_budget") + 1] == "123.0" and words[words.index("--eps") + 1] == "0.05"


def test_threads_workers_and_knn_sizes_follow_the_machine_and_budget():
    assert machine.default_threads(2, 0.2) == 2  # idle: every core
    assert machine.default_threads(2, 1.0) == 1  # one core busy elsewhere: the free one only
    assert machine.default_threads(2, 6.0) == 1  # never fewer than one
    assert machine.default_threads(16, 4.2) == 12
    assert knn.default_knn_images(recipe.DEFAULT_SECONDS) == (None, None)  # the real demo: every image
    bank, queries = knn.default_knn_images(30)
    assert 0 < queries < bank < 60000


def test_layouts_on_every_core_are_timed_whatever_the_load_average(monkeypatch, capsys):
    """A job that ended a minute ago still counts in the load average: the demo times layouts on every
    core (and one fewer) and lets the timing choose, rather than dropping to the cores the average leaves."""
    timed: dict = {}

    def fake_measure(flags_of, dataset, cores, bf16, threads=None, num_workers=None):
        timed["layouts"] = adapt.candidate_layouts(cores, bf16, threads, num_workers)
        return {name: (adapt.Layout(cores, 1, bf16), 1.0) for name in flags_of}, dict.fromkeys(flags_of, 1e-3)

    monkeypatch.setattr(machine, "available_cores", lambda: 2)
    monkeypatch.setattr(machine, "load_average", lambda: [0.8, 0.5, 0.2])
    monkeypatch.setattr(adapt, "measure_machine", fake_measure)
    plan = demo.plan_for_machine(540.0, lambda *a, **k: None, None, None, None, {"use_fp16": False})
    assert {layout.threads for layout in timed["layouts"]} == {1, 2}
    assert plan.choice.layout.threads == 2
    assert "load average 0.8" in capsys.readouterr().out


@pytest.mark.slow
def test_random_init_is_the_initial_network_of_the_run(tiny_imagefolder, tmp_path):
    # With a zero learning rate and weight decay nothing moves: the saved teacher is the initial network,
    # which random_init_backbone must rebuild exactly from the run's flags.
    flags = recipe.recipe_flags(
        0.0,
        tmp_path,
        str(Path(tiny_imagefolder) / "train"),
        num_workers=0,
        lr=0.0,
        min_lr=0.0,
        weight_decay=0.0,
        weight_decay_end=0.0,
        epochs=1,
        batch_size_per_gpu=40,
        local_crops_number=1,
        hidden_dim=64,
        use_fp16=False,
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = recipe.train_for_budget(flags)
    finally:
        torch.set_num_threads(previous_threads)
    assert summary["iterations"] == 3 and summary["images_seen"] == 120  # 120 images, batch 40
    for key, value in flags.items():  # the trainer ran with every flag of the command
        got = getattr(summary["args"], key)
        assert (list(got) if isinstance(got, tuple) else got) == (
            list(value) if isinstance(value, tuple) else value
        ), key
    teacher = knn.trained_teacher(tmp_path).state_dict()
    initial = knn.random_init_backbone(flags).state_dict()
    assert teacher.keys() == initial.keys()
    for key in teacher:
        assert torch.equal(teacher[key], initial[key]), key
    other_seed = knn.random_init_backbone({**flags, "seed": 1}).state_dict()
    assert not torch.equal(other_seed["pos_embed"], initial["pos_embed"])
    # a flag main_dino does not have: its own one-line error
    with pytest.raises(UserError, match="unrecognized arguments: --depthh 3"):
        recipe.train_for_budget({**flags, "depthh": 3})


def test_pixel_features_are_the_flattened_input():
    images = torch.randn(2, 3, 4, 4)
    assert torch.equal(knn.pixel_features()(images), images.reshape(2, -1))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FASHION_MNIST, reason="needs the Debian package dataset-fashion-mnist")
@pytest.mark.timeout(900)
def test_short_demo_end_to_end(tmp_path, capsys):
    seconds = 30.0
    out = tmp_path / "demo"
    out.mkdir()
    (out / "results.json").write_text("{}")  # a previous demo's files are replaced, others are kept
    (out / "notes.txt").write_text("mine")
    previous_threads = torch.get_num_threads()
    try:
        results = demo.main([
            "--seconds", str(seconds), "--output_dir", str(out), "--threads", "1",
            "--knn_train_images", "2000", "--knn_test_images", "400",
        ])  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for key in ("knn_top1", "random_init_knn_top1", "pixels_knn_top1"):
        assert 0.0 <= on_disk[key] <= 100.0
    assert on_disk["knn_top1"] == on_disk["knn"]["teacher"][str(knn.KNN_K)]["top1"]
    assert set(on_disk["knn"]["teacher"]) == {str(k) for k in knn.KNN_KS}
    for entry in on_disk["knn"].values():
        for k in entry.values():
            assert k["top1"] <= k["top5"] <= 100.0
    # The budget is honoured: training stops at the first iteration that would start after it.
    assert seconds <= on_disk["train_seconds"] < seconds + 30
    batch = on_disk["recipe"]["batch_size_per_gpu"]
    assert on_disk["images_seen"] == on_disk["iterations"] * batch > 0
    assert on_disk["knn_train_images"] == 2000 and on_disk["knn_test_images"] == 400
    assert on_disk["train_images"] == 60000
    assert "--time_budget 30.0" in on_disk["command"]

    for name in ("loss_curve.png", "attention.png", "pca.png"):
        with Image.open(out / name) as image:
            assert image.width > 200 and image.height > 200
    assert (out / "notes.txt").read_text() == "mine"
    metrics = [json.loads(line) for line in (out / "training_metrics.json").read_text().splitlines()]
    assert {"iteration", "loss", "comp_loss", "expa_loss", "lr"} <= set(metrics[0])
    # the health panel's two signals: the teacher's effective rank and the k-NN monitor on a small labeled set
    assert any("effective_rank" in row for row in metrics)
    assert any(0.0 <= row.get("knn_monitor_top1", -1.0) <= 100.0 for row in metrics)

    printed = capsys.readouterr().out
    for row in ("SimDINO teacher (trained)", "same network, random init", "raw pixels"):
        assert row in printed
    assert "reference run" in printed
    if on_disk["plan"]["variant"] == "standard":  # the README machine's run of the variant
        assert "74.61%" in printed
    assert "k-NN on a random 2000 of the 60000 training images and 400 of the 10000 test images" in printed


def test_reading_guide_says_which_way_is_good_and_what_a_smoke_run_shows():
    smoke = report.reading_guide(iterations=12, coeff=1.0)
    assert "loss = -(1*comp_loss + expa_loss) is minimised" in smoke
    assert "comp_loss: cosine similarity of student and teacher views" in smoke
    assert "expa_loss: coding rate of the features" in smoke
    assert "This was a smoke run (12 iterations" in smoke and "It cannot show how good the" in smoke
    full = report.reading_guide(iterations=560, coeff=1.0)
    assert "smoke run" not in full and "both parts are maximised" in full


@pytest.mark.slow
def test_smoke_demo_prints_the_reading_guide(tiny_imagefolder, tmp_path, capsys):
    """`python -m simdino.demo --seconds 3` (on an ImageFolder here): the summary labels the loss parts and
    says what a smoke run can and cannot show."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_imagefolder, data)
    for image in sorted((data / "train").glob("*/*.png")):  # 240 training images: one recipe batch is 128
        shutil.copy(image, image.with_name(f"copy_{image.name}"))
    previous_threads = torch.get_num_threads()
    try:
        results = demo.main(["--seconds", "3", "--output_dir", str(tmp_path / "demo"), "--threads", "1",
                             "--data_path", str(data)])  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)
    printed = capsys.readouterr().out
    assert results["iterations"] < report.SMOKE_RUN_ITERATIONS
    assert f"This was a smoke run ({results['iterations']} iterations" in printed
    assert (
        f"chose recipe variant '{results['plan']['variant']}'" in printed
        and "s per step measured here" in printed
    )
    assert results["plan"]["measured_step_seconds"] > 0 and set(results["plan"]["alternatives"]) == {
        "standard",
        "lean",
    }
    assert "comp_loss: cosine similarity of student and teacher views" in printed
    assert (tmp_path / "demo" / "loss_curve.png").is_file()


def test_bf16_autocast_only_on_cpus_that_compute_bf16(monkeypatch, tmp_path):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    real_read_text = Path.read_text
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **kw: real_read_text(cpuinfo if str(self) == "/proc/cpuinfo" else self, *a, **kw),
    )
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not precision.cpu_has_bf16()
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert precision.cpu_has_bf16()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # torch told to run as an AVX2-only CPU
    assert not precision.cpu_has_bf16()


def test_results_record_of_a_run(tmp_path):
    flags = recipe.recipe_flags(60.0, tmp_path, "FashionMNIST:split=TRAIN", num_workers=0, eps=0.05)
    run = report.DemoRun(
        args=argparse.Namespace(**flags, unrelated=1),
        flags=flags,
        summary={"images_seen": 1280, "iterations": 10, "train_seconds": 61.0},
        seconds=60.0,
        knn={"teacher": {20: (80.0, 98.0)}, "random_init": {20: (70.0, 96.0)}, "pixels": {10: (84.0, 99.0)}},
        data_name="Fashion-MNIST",
        images={"train": 60000, "test": 10000, "knn_train": 10000, "knn_test": 2000},
        threads=2,
        num_workers=0,
        times={"started": 0.0, "train_done": 62.0, "eval_done": 100.0},
        loads={"before": [1.0, 1.0, 1.0]},
    )
    run.plan = {"variant": "standard"}
    record = report.results_record(run, now=110.0)
    assert (record["knn_top1"], record["random_init_knn_top1"], record["pixels_knn_top1"]) == (
        80.0,
        70.0,
        84.0,
    )
    assert record["knn"]["pixels"] == {"10": {"top1": 84.0, "top5": 99.0}}
    assert record["eval_seconds"] == 38.0 and record["total_seconds"] == 110.0
    assert record["epochs_over_train_set"] == 1280 / 60000 and record["knn_test_images"] == 2000
    assert record["recipe"]["eps"] == 0.05 and "unrelated" not in record["recipe"]
    assert record["recipe"]["local_crops_scale"] == [0.1, 0.4]
    assert record["machine"]["load_average_before"] == [1.0, 1.0, 1.0] and "--eps 0.05" in record["command"]
    assert record["plan"] == {"variant": "standard"} and record["test_images"] == 10000
