"""Smoke tests of `benchmarks/`: every script runs end to end in its tiny `--quick` setting and prints its
table; the shared helpers count FLOPs correctly. No timing is asserted (timings belong in
benchmarks/RESULTS.md, measured on a quiet machine), only what must hold whatever the speed: tables
and JSON are produced, numbers are finite, the alternative log-det paths agree with ours in float64,
and our k-NN predictions agree with scikit-learn's under the same voting rule.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks import common

pytestmark = pytest.mark.slow


def test_count_flops_matches_matmul_and_cpu_attention_formulas():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert common.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    q = torch.randn(2, 3, 10, 8, requires_grad=True)
    batch, heads, length, head_dim = q.shape
    forward = 4 * batch * heads * length * length * head_dim  # QKᵀ and PV
    flops = common.count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    # forward + backward (2.5x forward) of the attention matmuls, on the CPU flash kernel too
    assert flops == forward + int(2.5 * forward)


def test_v1_settings_are_the_v1_trainers_defaults():
    from simdino import main_dino  # the script under comparison, read here only for its defaults

    defaults = vars(main_dino.get_args_parser().parse_args([]))
    for key, value in common.V1_TRAINER_DEFAULTS.items():
        assert defaults[key] == value, key
    args = common.v1_model_args(arch="vit_tiny", use_simdino=False)
    assert args.arch == "vit_tiny" and not args.use_simdino and args.z_dim == defaults["z_dim"]
    with pytest.raises(ValueError, match="not v1 trainer settings: archh"):
        common.v1_model_args(archh="vit_tiny")


def test_format_table_and_matmul_peak():
    table = common.format_table([{"a": 1.23456, "b": "x"}, {"a": float("nan"), "b": None}])
    lines = table.splitlines()
    assert lines[0].startswith("| a") and "1.235" in lines[2] and lines[3].count("-") >= 2
    peak = common.measure_matmul_peak(torch.float32, torch.device("cpu"), sizes=(64,), min_time=0.0)
    assert math.isfinite(peak) and peak > 0


def test_train_step_ours_quick(tmp_path, capsys):
    from benchmarks import train_step

    out = tmp_path / "train_step.json"
    result = train_step.main(
        [
            "--quick",
            "--threads",
            "1",
            "--methods",
            "simdino",
            "dino",
            "--dtypes",
            "fp32",
            "bf16",
            "--json",
            str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "| method" in printed and "MFU %" in printed
    rows = result["rows"]
    assert {(r["method"], r["dtype"]) for r in rows} == {
        ("ours v1 SimDINO", "fp32"),
        ("ours v1 DINO", "fp32"),
        ("ours v1 SimDINO", "bf16"),
        ("ours v1 DINO", "bf16"),
    }
    for row in rows:
        assert row["ms/step"] > 0 and row["GFLOP/step"] > 0 and math.isfinite(row["MFU %"])
    # Same model and crops: the FLOP count of a step does not depend on the autocast dtype.
    simdino = [r["GFLOP/step"] for r in rows if r["method"] == "ours v1 SimDINO"]
    assert simdino[0] == simdino[1]
    assert json.loads(out.read_text())["rows"][0]["method"] == rows[0]["method"]


def test_train_step_against_lightly_quick(capsys):
    pytest.importorskip("lightly")
    pytest.importorskip("timm")
    from benchmarks import train_step

    result = train_step.main(
        [
            "--quick",
            "--threads",
            "1",
            "--methods",
            "simdino",
            "lightly",
            "--dtypes",
            "fp32",
            "--profile",
            "--profile-top",
            "5",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "x vs lightly+timm DINO" in printed and "torch.profiler" in printed
    peer = next(r for r in result["rows"] if r["method"] == train_step.PEER)
    assert peer["x vs lightly+timm DINO"] == pytest.approx(1.0)
    ours = next(r for r in result["rows"] if r["method"] == "ours v1 SimDINO")
    assert ours["x vs lightly+timm DINO"] > 0


def test_loss_quick(capsys):
    from benchmarks import loss

    result = loss.main(["--quick", "--collapse", "--threads", "1"])
    assert "| features" in capsys.readouterr().out
    rows = result["rows"]
    assert {r["variant"] for r in rows} == set(loss.VARIANTS)
    for row in rows:
        if row["variant"] in ("logdet f64", "slogdet f64"):
            # Same float64 matrix, LU instead of Cholesky: same loss and gradient to rounding.
            assert row["|loss - ours|"] < 1e-5 and row["grad rel err"] < 1e-5, row
        if row["status"] == "ok":
            assert row["ms fwd+bwd"] > 0


def test_knn_quick(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from benchmarks import knn

    result = knn.main(["--quick", "--json", str(tmp_path / "knn.json")])
    assert "| dim" in capsys.readouterr().out
    details = next(iter(result["details"].values()))
    # Our per-image predictions are those of the core: same top-1 accuracy as knn_classify.
    assert details["ours"]["predict_top1"] == pytest.approx(details["ours"]["top1"])
    # Same rule (exp(sim/T) weighted vote, same k) on the same features: the same classes.
    assert details["agreement_pct"] >= 99.0


def test_augment_quick(capsys):
    from benchmarks import augment

    result = augment.main(["--quick"])
    assert "| data" in capsys.readouterr().out
    ours = [r for r in result["rows"] if r["method"].startswith("ours")]
    assert ours and all(r["img/s"] > 0 for r in ours)
    assert any(r["data"] == "224px JPEG" for r in ours)


def test_optim_pieces_quick(capsys):
    from benchmarks import optim_pieces

    result = optim_pieces.main(["--quick", "--threads", "1"])
    assert "| student" in capsys.readouterr().out
    clip_rows = [r for r in result["rows"] if "clip" in r["piece"]]
    # DINO's per-tensor clipping loop must give what ours (multi-tensor) gives: norms and clipped gradients.
    assert clip_rows and all(r["same result"] == "yes" for r in clip_rows)
    assert all(r["ms"] > 0 for r in result["rows"])


def test_attention_small(capsys):
    from benchmarks import attention

    result = attention.main(
        ["--dim", "32", "--heads", "2", "--batch", "4", "--tokens", "5", "--repeats", "1", "--threads", "1"]
    )
    assert "| dtype" in capsys.readouterr().out
    rows = {r["dtype"]: r for r in result["rows"]}
    assert rows["fp32"]["shipped"] == "sdpa" and rows["bf16"]["shipped"] == "explicit"
    assert rows["fp32"]["out rel err"] < 1e-5 and rows["bf16"]["out rel err"] < 2e-2
    assert all(r["sdpa ms"] > 0 and r["explicit ms"] > 0 for r in result["rows"])


def test_gradient_checkpointing_small(capsys):
    from benchmarks import gradient_checkpointing

    result = gradient_checkpointing.main(["--arch", "vit_tiny", "--patch-size", "4", "--global-size", "16",
                                          "--local-size", "8", "--local-crops", "1", "--batch", "2",
                                          "--repeats", "1", "--threads", "1"])  # fmt: skip
    assert "| dtype" in capsys.readouterr().out
    off, on = result["rows"]
    assert off["grads identical"] and on["grads identical"]
    assert on["activations MB"] < off["activations MB"]  # only the block inputs stay


def test_listing_quick(tmp_path, capsys):
    from benchmarks import listing

    result = listing.main(
        ["--files", "300", "--per_folder", "100", "--quick", "--root", str(tmp_path / "files")]
    )
    assert [row["images"] for row in result["rows"]] == [
        300
    ] * 4  # every method finds every image, no README.txt
    assert "| cached" in capsys.readouterr().out
