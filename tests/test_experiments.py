"""Smoke tests of `experiments/fmnist.py` (the commands behind docs/RESULTS.md): a row command trains for a
few seconds on the tiny ImageFolder, evaluates on it and writes a results.json whose numbers are consistent;
the evaluation pieces behave as their definitions say; the v2 budget mapping keeps each warm-up's fraction.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from experiments import fmnist


def _check_record(record: dict, out, method: str) -> None:
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert on_disk["method"] == method
    for key in ("knn_top1", "linear_top1", "effective_rank"):
        assert math.isfinite(on_disk[key])
    assert 0.0 <= on_disk["knn_top1"] <= 100.0 and 0.0 <= on_disk["linear_top1"] <= 100.0
    assert on_disk["command"].startswith("python -m experiments.fmnist")
    assert on_disk["machine"]["threads"] == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_v1_row_trains_for_its_budget_and_writes_results(tmp_path, tiny_imagefolder):
    out = tmp_path / "simdino"
    argv = ["--method", "simdino", "--seconds", "6", "--out", str(out), "--data_path", str(tiny_imagefolder),
            "--threads", "1", "--c_values", "1", "--max_iter", "50",
            "--", "--batch_size_per_gpu", "16", "--use_fp16", "false", "--depth_placeholder_unused"]  # fmt: skip
    # fp32: on a CPU without bf16 instructions one bf16-autocast step of this ViT takes 8-14 s, longer than
    # the margin below (the budget stops training at the first iteration boundary after it).
    with pytest.raises(SystemExit):  # an unknown trainer flag is refused by main_dino's own parser
        fmnist.main(argv)
    argv = argv[:-1]
    record = fmnist.main(argv)
    _check_record(record, out, "simdino")
    assert record["tree"] == "v1" and (out / "checkpoint.pth").is_file()
    # the budget bounds the training time; the override reached the trainer
    assert 0 < record["train_seconds"] < 6 + 5
    assert record["images_seen"] == 16 * record["iterations"] > 0
    assert (
        "--batch_size_per_gpu 16" in record["trainer_command"]
        and "--time_budget 6.0" in record["trainer_command"]
    )
    assert "--batch_size_per_gpu 128" not in record["trainer_command"]  # the override replaced the recipe's
    assert record["knn_train_images"] == 120 and record["knn_test_images"] == 30
    with pytest.raises(SystemExit, match="already holds a run"):
        fmnist.main(argv)

    # the table lists the row and its command
    pixels = fmnist.main(["--method", "pixels", "--out", str(tmp_path / "pixels"), "--data_path",
                          str(tiny_imagefolder), "--threads", "1", "--c_values", "1", "--max_iter", "50"])  # fmt: skip
    _check_record(pixels, tmp_path / "pixels", "pixels")
    assert pixels["feature_dim"] == 3 * 28 * 28 and "images_seen" not in pixels
    table = fmnist.markdown_table(tmp_path)
    assert "| simdino | simdino | 0 | 6 |" in table and "| pixels | pixels |" in table
    assert f"`{record['command']}`" in table


@pytest.mark.slow
def test_v2_row_trains_for_the_time_budget(tmp_path, tiny_imagefolder):
    out = tmp_path / "simdinov2"
    record = fmnist.main(["--method", "simdinov2", "--seconds", "4", "--out", str(out), "--data_path",
                          str(tiny_imagefolder), "--threads", "1",
                          "--c_values", "1", "--max_iter", "50", "--", "train.batch_size_per_gpu=16"])  # fmt: skip
    _check_record(record, out, "simdinov2")
    assert record["tree"] == "v2"
    # The trainer's own budget: it stopped at the first iteration after 4 s of training.
    assert 4.0 <= record["train_seconds"] < 4.0 + 30.0
    assert record["iterations"] >= 1 and record["images_seen"] == 16 * record["iterations"]
    config = OmegaConf.load(out / "config.yaml")
    assert (
        config.train.time_budget == 4.0 and config.optim.epochs == 100 and config.student.arch == "vit_tiny"
    )
    assert config.crops.global_crops_size == 28 and config.train.batch_size_per_gpu == 16


def test_v2_recipe_matches_the_v1_learning_rate():
    from simdinov2.configs import apply_scaling_rules_to_cfg, get_cfg

    opts = fmnist.v2_recipe_overrides("FashionMNIST:split=TRAIN", seed=0, num_workers=0)
    cfg = get_cfg(str(fmnist.V2_CONFIG_DIR / "simdino_config.yaml"), opts)
    apply_scaling_rules_to_cfg(cfg, 1)
    recipe = fmnist.RESULTS_RECIPE
    assert cfg.optim.lr == pytest.approx(recipe["lr"] * recipe["batch_size_per_gpu"] / 256, rel=1e-4)


def test_effective_rank_and_linear_probe():
    torch.manual_seed(0)
    assert fmnist.effective_rank(torch.randn(1, 8).repeat(100, 1) + 1e-9 * torch.randn(100, 8)) < 1.5
    assert fmnist.effective_rank(torch.randn(4000, 8)) > 7.5
    # two separable classes: the probe is perfect; shuffled labels: chance
    x = torch.randn(600, 4)
    y = (x[:, 0] > 0).long()
    probe = fmnist.linear_probe(x[:500], y[:500], x[500:], y[500:], c_values=(1.0, 100.0), max_iter=100)
    assert probe["top1"] > 95 and probe["best_C"] in (1.0, 100.0)
    noise = fmnist.linear_probe(
        x[:500], y[torch.randperm(600)][:500], x[500:], y[500:], c_values=(1.0,), max_iter=100
    )
    assert noise["top1"] < 75


def test_random_init_takes_the_backbone_flags_of_the_overrides():
    # docs/RESULTS.md: `--method random_init ... -- --depth 6` is the untrained 6-block network
    assert fmnist._backbone_flags(["--depth", "6", "--eps", "0.05", "--global_crops_scale", "0.3", "1"]) == {
        "depth": 6
    }
    flags = fmnist.v1_flags("simdino", 1.0, "out", "x", seed=0, num_workers=0)
    model = fmnist.knn.random_init_backbone({**flags, **fmnist._backbone_flags(["--depth", "2"])})
    assert len(model.blocks) == 2
