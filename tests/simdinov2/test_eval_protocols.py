"""The evaluation protocols beyond k-NN / linear / log-reg basics: metric types and class mappings
(`simdinov2/eval/metrics.py`) against hand-computed values, the attentive probe, several test sets in
linear.py / knn.py / log_regression.py, and fine-tuning (`simdinov2/eval/finetuning.py`) on CPU, in one
process and with torchrun (2 gloo processes), stopped and resumed exactly."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_eval import _v2_args, v2_snapshot  # noqa: F401  (the module-scoped tiny v2 teacher snapshot)
from train_utils import free_port

from simdinov2.errors import MissingFileError, UserError
from simdinov2.eval.linear import AttentiveClassifier, AttentivePooling
from simdinov2.eval.metrics import (
    ClassificationCounts,
    MetricType,
    eval_sets_from_args,
    evaluate,
    load_class_mapping,
)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ metrics
def _counts() -> ClassificationCounts:
    """4 images of classes [0, 0, 0, 1] predicted [0, 0, 1, 1] (class 2 absent); second guesses 2, 1, 0, 2."""
    logits = torch.tensor([[3.0, 1.0, 2.0], [3.0, 2.0, 1.0], [2.0, 3.0, 1.0], [1.0, 3.0, 2.0]])
    counts = ClassificationCounts(3)
    counts.add_logits(logits, torch.tensor([0, 0, 0, 1]))
    return counts


def test_metric_types_match_hand_computed_values() -> None:
    counts = _counts()
    mean = counts.result(MetricType.MEAN_ACCURACY)
    assert mean["top1"] == pytest.approx(75.0) and mean["count"] == 4  # 3 of 4
    assert mean["top5"] == pytest.approx(100.0)  # 3 classes: top-5 is every class
    per_class_mean = counts.result(MetricType.MEAN_PER_CLASS_ACCURACY)
    assert per_class_mean["top1"] == pytest.approx((2 / 3 + 1) / 2 * 100)  # class 2 absent: not averaged
    per_class = counts.result(MetricType.PER_CLASS_ACCURACY)
    assert per_class["top1_per_class"] == pytest.approx([200 / 3, 100.0, None])
    assert per_class["top1"] == pytest.approx(per_class_mean["top1"])
    # loss: mean cross-entropy
    logits = torch.tensor([[3.0, 1.0, 2.0], [3.0, 2.0, 1.0], [2.0, 3.0, 1.0], [1.0, 3.0, 2.0]])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 0, 1])).item()
    assert mean["loss"] == pytest.approx(expected)


def test_evaluate_loop_with_a_class_mapping() -> None:
    """The shared loop: a mapping [2, 1, 0] reads output 2 as the set's class 0 (and so on)."""
    images = torch.eye(3)
    dataset = torch.utils.data.TensorDataset(images, torch.tensor([2, 1, 0]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    predict = lambda x: x * 5  # noqa: E731  (logits = one-hot of the image index)
    plain = evaluate(predict, loader, torch.device("cpu"), 3)["classifier"].result()
    mapped = evaluate(predict, loader, torch.device("cpu"), 3, torch.tensor([2, 1, 0]))["classifier"].result()
    assert plain["top1"] == pytest.approx(100 / 3) and mapped["top1"] == pytest.approx(100.0)


def _set_args(**values) -> argparse.Namespace:
    base = dict(
        val_dataset_str="V",
        test_dataset_strs=None,
        val_metric_type="mean_accuracy",
        test_metric_types=None,
        val_class_mapping_fpath=None,
        test_class_mapping_fpaths=None,
    )
    return argparse.Namespace(**{**base, **values})


def test_eval_set_flags_and_their_one_line_errors(tmp_path: Path) -> None:
    sets = eval_sets_from_args(
        _set_args(test_dataset_strs=["A", "B"], test_metric_types=["per_class_accuracy"])
    )
    assert [(s.dataset_str, s.metric_type.value) for s in sets] == [
        ("V", "mean_accuracy"),
        ("A", "per_class_accuracy"),
        ("B", "per_class_accuracy"),
    ]
    with pytest.raises(
        UserError, match=r"--test-metric-types: unknown metric type 'top1'; choose one of mean_accuracy"
    ):
        eval_sets_from_args(_set_args(test_dataset_strs=["A"], test_metric_types=["top1"]))
    with pytest.raises(UserError, match="unknown metric type 'accuracy'"):
        eval_sets_from_args(_set_args(val_metric_type="accuracy"))
    with pytest.raises(UserError, match="gives 2 values for 3 --test-datasets"):
        eval_sets_from_args(
            _set_args(test_dataset_strs=["A", "B", "C"], test_metric_types=["mean_accuracy"] * 2)
        )
    mapping = tmp_path / "map.npy"
    np.save(mapping, np.array([1, 0]))
    assert load_class_mapping(str(mapping), 2, 3, "A").tolist() == [1, 0]
    with pytest.raises(UserError, match="has 2 entries but A has 3 classes") as error:
        load_class_mapping(str(mapping), 3, 3, "A")
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match=r"outside \[0, 1\)"):
        load_class_mapping(str(mapping), 2, 1, "A")
    with pytest.raises(MissingFileError):
        load_class_mapping(str(tmp_path / "none.npy"), 2, 3, "A")


# ------------------------------------------------------------------------------------------- attentive probe
def test_attentive_probe_shapes_and_learning() -> None:
    torch.manual_seed(0)
    pooling = AttentivePooling(16, 4)
    assert pooling(torch.randn(2, 1, 16), torch.randn(2, 7, 16)).shape == (2, 16)
    with pytest.raises(UserError, match="does not divide"):
        AttentivePooling(16, 3)
    # two blocks of patch tokens; the class is whether token 0 of the last block is large
    labels = torch.randint(0, 2, (64,))
    patches = torch.randn(64, 5, 16)
    patches[:, 0, 0] += 4.0 * labels
    tokens = [(torch.randn(64, 5, 16), torch.randn(64, 16)), (patches, torch.randn(64, 16))]
    probe = AttentiveClassifier(
        16, use_n_blocks=2, use_avgpool=True, num_classes=2, num_heads=4, concat_cls=True
    )
    assert probe.linear.in_features == 16 * (2 * 2 + 1)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(probe(tokens), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (probe(tokens).argmax(1) == labels).float().mean() > 0.9


# --------------------------------------------------------------------------------- CLIs with several test sets
def _test_set_flags(data: Path, mapping: Path) -> list[str]:
    """Two test sets: the validation folder read under per-class accuracy through a class mapping, and the
    training folder under mean per-class accuracy."""
    return ["--test-datasets", f"ImageFolder:root={data}/val", f"ImageFolder:root={data}/train",
            "--test-metric-types", "per_class_accuracy", "mean_per_class_accuracy",
            "--test-class-mapping-fpaths", str(mapping), "None", "--image-size", "16"]  # fmt: skip


def _check_sets(eval_sets: dict, data: Path) -> None:
    val, train = f"ImageFolder:root={data}/val", f"ImageFolder:root={data}/train"
    assert list(eval_sets) == [val, train]
    assert set(eval_sets[val]) == {"mean_accuracy", "per_class_accuracy"}  # the val set twice, two metrics
    per_class = eval_sets[val]["per_class_accuracy"]
    assert len(per_class["top1_per_class"]) == 3 and per_class["count"] == 30
    assert per_class["top1"] == pytest.approx(sum(per_class["top1_per_class"]) / 3)
    assert eval_sets[train]["mean_per_class_accuracy"]["count"] == 120
    for metrics in eval_sets.values():
        for record in metrics.values():
            assert 0.0 <= record["top1"] <= record["top5"] <= 100.0


@pytest.mark.slow
def test_linear_attentive_knn_and_log_regression_with_two_test_sets(
    v2_snapshot,  # noqa: F811
    tiny_imagefolder: Path,
    tmp_path: Path,
) -> None:
    from simdinov2.eval import knn, linear, log_regression

    config, weights = v2_snapshot
    mapping = tmp_path / "reversed.npy"
    np.save(mapping, np.array([2, 1, 0]))
    extra = _test_set_flags(tiny_imagefolder, mapping)

    def args(module, name: str, *more: str) -> argparse.Namespace:
        return module.get_args_parser().parse_args(
            _v2_args(config, weights, tiny_imagefolder, tmp_path / name) + extra + list(more)
        )

    probe = ["--epochs", "1", "--epoch-length", "2", "--batch-size", "32", "--learning-rates", "0.1"]
    summary = linear.run_linear_probe(args(linear, "linear", *probe))
    _check_sets(summary["eval_sets"], tiny_imagefolder)
    assert summary["eval_sets"][f"ImageFolder:root={tiny_imagefolder}/val"]["mean_accuracy"][
        "top1"
    ] == pytest.approx(summary["best_classifier"]["top1"])
    attentive = linear.run_linear_probe(
        args(linear, "attentive", *probe, "--attentive", "--attentive_concat_cls")
    )
    assert attentive["attentive"] and len(attentive["classifiers"]) == 2  # blocks {1, 2} x 1 lr
    _check_sets(attentive["eval_sets"], tiny_imagefolder)
    state = torch.load(tmp_path / "attentive" / "linear_checkpoint.pth", weights_only=True)["classifiers"]
    assert any("query_token" in key for key in state) and any("poolers.1.q.weight" in key for key in state)

    records = knn.run_knn(args(knn, "knn", "--nb_knn", "5", "10"))
    for record in records:
        _check_sets(record["eval_sets"], tiny_imagefolder)
        assert (
            "loss"
            not in record["eval_sets"][f"ImageFolder:root={tiny_imagefolder}/train"][
                "mean_per_class_accuracy"
            ]
        )
    record = log_regression.run_log_regression(
        args(log_regression, "logreg", "--c-values", "1", "--max-train-iters", "30")
    )
    _check_sets(record["eval_sets"], tiny_imagefolder)


@pytest.mark.slow
def test_bad_test_sets_are_one_line(v2_snapshot, tiny_imagefolder: Path, tmp_path: Path) -> None:  # noqa: F811
    config, weights = v2_snapshot
    wrong = tmp_path / "two.npy"
    np.save(wrong, np.array([1, 0]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    base = _v2_args(config, weights, tiny_imagefolder, tmp_path / "o") + [
        "--image-size",
        "16",
        "--batch-size",
        "16",
    ]
    cases = {
        "missing": (
            ["--test-datasets", f"ImageFolder:root={tmp_path}/nowhere"],
            f"{tmp_path}/nowhere does not exist",
        ),
        "metric": (
            ["--test-datasets", f"ImageFolder:root={tiny_imagefolder}/val", "--test-metric-types", "top1"],
            "unknown metric type 'top1'",
        ),
        "mapping": (["--val-class-mapping-fpath", str(wrong)], "has 2 entries but"),
    }
    for program, (flags, message) in zip(
        ("linear.py", "knn.py", "finetuning.py"), cases.values(), strict=True
    ):
        proc = subprocess.run(
            [sys.executable, f"simdinov2/eval/{program}", *base, *flags],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert (
            proc.returncode == 1 and lines[-1].startswith(f"{program}: error: ") and message in lines[-1]
        ), proc.stderr


# ---------------------------------------------------------------------------------------------- fine-tuning
def _finetune_args(config: Path, weights: Path, data: Path, out: Path) -> list[str]:
    return [*_v2_args(config, weights, data, out), "--epochs", "2", "--epoch-length", "3", "--warmup-epochs", "1",
            "--batch-size", "16", "--image-size", "16", "--test-datasets", f"ImageFolder:root={data}/val",
            "--test-metric-types", "per_class_accuracy"]  # fmt: skip


@pytest.mark.slow
def test_finetuning_on_cpu_stops_and_resumes_exactly(
    v2_snapshot,  # noqa: F811
    tiny_imagefolder: Path,
    tmp_path: Path,
) -> None:
    from simdinov2.eval import finetuning

    config, weights = v2_snapshot
    parser = finetuning.get_args_parser()
    whole = finetuning.run_finetuning(
        parser.parse_args(_finetune_args(config, weights, tiny_imagefolder, tmp_path / "a"))
    )
    split = _finetune_args(config, weights, tiny_imagefolder, tmp_path / "b")
    assert finetuning.run_finetuning(parser.parse_args([*split, "--stop-at-iteration", "4"])) == {
        "stopped_at": 4
    }
    assert torch.load(tmp_path / "b" / "finetuning_checkpoint.pth", weights_only=True)["iteration"] == 4
    resumed = finetuning.run_finetuning(parser.parse_args(split))
    assert resumed == whole
    results = json.loads((tmp_path / "a" / "results_eval_finetuning.json").read_text())
    assert results["final"] == whole and [h["iteration"] for h in results["history"]] == [3]
    assert set(whole["eval_sets"][f"ImageFolder:root={tiny_imagefolder}/val"]) == {
        "mean_accuracy",
        "per_class_accuracy",
    }
    assert 0.0 <= whole["top1"] <= whole["top5"] <= 100.0 and whole["model_ema"]
    a = torch.load(tmp_path / "a" / "finetuning_checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "finetuning_checkpoint.pth", weights_only=True)
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    backbone_moved = any(not torch.equal(a["model"][k], a["ema"][k]) for k in a["model"])
    assert backbone_moved  # the EMA (decay 0.7) trails the trained weights


def _torchrun_finetuning(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "simdinov2/eval/finetuning.py",
        *args,
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_finetuning_two_processes_resumes_exactly(
    v2_snapshot,  # noqa: F811
    tiny_imagefolder: Path,
    tmp_path: Path,
) -> None:
    """2 gloo processes (global batch 2 x 8): uninterrupted, and stopped at iteration 4 then resumed."""
    config, weights = v2_snapshot
    common = ["--batch-size", "8", "--epoch-length", "4", "--num-workers", "0"]
    whole = _torchrun_finetuning(
        [*_finetune_args(config, weights, tiny_imagefolder, tmp_path / "a"), *common]
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    split = [*_finetune_args(config, weights, tiny_imagefolder, tmp_path / "b"), *common]
    stopped = _torchrun_finetuning([*split, "--stop-at-iteration", "5"])
    assert stopped.returncode == 0 and "stopped at iteration 5" in stopped.stderr + stopped.stdout, (
        stopped.stderr[-3000:]
    )
    resumed = _torchrun_finetuning(split)
    assert resumed.returncode == 0 and "at iteration 5" in resumed.stderr + resumed.stdout, resumed.stderr[
        -3000:
    ]
    final_a = json.loads((tmp_path / "a" / "results_eval_finetuning.json").read_text())
    final_b = json.loads((tmp_path / "b" / "results_eval_finetuning.json").read_text())
    assert final_a == final_b and final_a["final"]["iteration"] == 8
    a = torch.load(tmp_path / "a" / "finetuning_checkpoint.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "finetuning_checkpoint.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_linear_grid_with_the_backbone_trained_as_upstream_finetune_py(
    v2_snapshot,  # noqa: F811
    tiny_imagefolder: Path,
    tmp_path: Path,
) -> None:
    from simdinov2.eval import linear

    config, weights = v2_snapshot
    base = _v2_args(config, weights, tiny_imagefolder, tmp_path / "ft") + [
        "--epochs", "1", "--epoch-length", "2", "--batch-size", "32", "--learning-rates", "0.1", "--image-size", "16"]  # fmt: skip
    summary = linear.run_linear_probe(
        linear.get_args_parser().parse_args([*base, "--train-backbone-lr", "0.005"])
    )
    assert summary["iteration"] == 2
    state = torch.load(tmp_path / "ft" / "linear_checkpoint.pth", weights_only=True)
    snapshot = {
        k.removeprefix("backbone."): v for k, v in torch.load(weights, weights_only=True)["teacher"].items()
    }
    moved = [k for k, v in state["backbone"].items() if not torch.equal(v, snapshot[k])]
    assert any(k.endswith("attn.qkv.weight") for k in moved)  # the backbone was trained
    with pytest.raises(UserError, match="was written with --train-backbone-lr"):
        linear.run_linear_probe(linear.get_args_parser().parse_args([*base, "--epochs", "2"]))


@pytest.mark.slow
def test_finetuning_a_v1_checkpoint_takes_its_training_crop(tiny_imagefolder: Path, tmp_path: Path) -> None:
    from test_eval_backbone import write_v1_checkpoint

    from simdinov2.eval import finetuning

    weights = write_v1_checkpoint(tmp_path / "v1run" / "checkpoint.pth", depth=2, img_size=20)
    args = finetuning.get_args_parser().parse_args([
        "--pretrained-weights", str(weights), "--output-dir", str(tmp_path / "ft"), "--num-workers", "0",
        "--train-dataset", f"ImageFolder:root={tiny_imagefolder}/train",
        "--val-dataset", f"ImageFolder:root={tiny_imagefolder}/val",
        "--epochs", "1", "--epoch-length", "2", "--batch-size", "16", "--no-model-ema", "--drop-path", "0.2",
    ])  # fmt: skip
    final = finetuning.run_finetuning(args)
    assert final["image_size"] == 20 and not final["model_ema"]  # the crop the v1 run trained at
    state = torch.load(tmp_path / "ft" / "finetuning_checkpoint.pth", weights_only=True)
    assert state["ema"] is None and state["model"]["head.weight"].shape == (3, 192)
