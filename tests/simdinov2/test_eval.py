"""simdinov2/eval: the shared k-NN / linear / logistic-regression cores against simple references, and the
v2 CLIs (knn.py, linear.py, log_regression.py) on a synthetic teacher snapshot with a resolved config."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import TensorDataset

from simdinov2.eval.features import (
    ShardSampler,
    class_balanced_subset,
    extract_features,
    make_eval_loader,
)
from simdinov2.eval.knn import knn_classify, knn_correct_counts
from simdinov2.eval.linear import (
    AllClassifiers,
    LinearClassifier,
    ModelWithIntermediateLayers,
    create_linear_input,
    evaluate_classifiers,
    setup_linear_classifiers,
    train_step,
)
from simdinov2.eval.log_regression import accuracy, fit_logistic_regression
from simdinov2.models import build_vit

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ k-NN core
def reference_knn(train_x, train_y, test_x, test_y, k, temperature):
    """Textbook loop: sort every training sample by similarity, sum exp(sim/T) per class over the k best;
    a hit at n when the true class got a vote and fewer than n classes scored higher."""
    hits1 = hits5 = 0
    for i in range(test_x.shape[0]):
        sims = sorted(
            ((float(test_x[i] @ train_x[j]), int(train_y[j])) for j in range(train_x.shape[0])),
            key=lambda s: -s[0],
        )
        scores: dict[int, float] = {}
        for sim, label in sims[:k]:
            scores[label] = scores.get(label, 0.0) + math.exp(sim / temperature)
        true = int(test_y[i])
        if true in scores:
            higher = sum(1 for v in scores.values() if v > scores[true])
            hits1 += higher < 1
            hits5 += higher < 5
    return hits1, hits5


def random_bank(n_train=150, n_test=41, dim=12, classes=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    train_y = torch.randint(0, classes, (n_train,), generator=g)
    test_y = torch.randint(0, classes, (n_test,), generator=g)
    train_x = F.normalize(
        centers[train_y] + 1.5 * torch.randn(n_train, dim, generator=g, dtype=torch.float64), dim=1
    )
    test_x = F.normalize(
        centers[test_y] + 1.5 * torch.randn(n_test, dim, generator=g, dtype=torch.float64), dim=1
    )
    return train_x, train_y, test_x, test_y


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_matches_loop_reference_exactly(temperature: float) -> None:
    train_x, train_y, test_x, test_y = random_bank()
    ks = [1, 3, 10, 20, 150]
    counts = knn_correct_counts(train_x, train_y, test_x, test_y, ks, temperature, chunk_size=7)
    for k in ks:
        assert counts[k] == reference_knn(train_x, train_y, test_x, test_y, k, temperature), k
    accuracies = knn_classify(train_x, train_y, test_x, test_y, ks, temperature)
    for k in ks:
        assert accuracies[k] == (100.0 * counts[k][0] / 41, 100.0 * counts[k][1] / 41)


def test_knn_chunking_and_dtype_do_not_change_results() -> None:
    train_x, train_y, test_x, test_y = random_bank(seed=1)
    whole = knn_classify(train_x, train_y, test_x, test_y, [5, 20], chunk_size=10_000)
    for chunk in (1, 4, 41):
        assert knn_classify(train_x, train_y, test_x, test_y, [5, 20], chunk_size=chunk) == whole
    assert knn_classify(train_x.float(), train_y, test_x.float(), test_y, [5, 20]) == whole


def test_knn_separable_clusters_and_bad_k() -> None:
    train_x = torch.eye(4).repeat_interleave(5, dim=0)  # 4 classes, 5 identical points each
    train_y = torch.arange(4).repeat_interleave(5)
    test_x, test_y = torch.eye(4), torch.arange(4)
    assert knn_classify(train_x, train_y, test_x, test_y, [5]) == {5: (100.0, 100.0)}
    with pytest.raises(ValueError, match="exceeds the 20 training samples"):
        knn_classify(train_x, train_y, test_x, test_y, [21])
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(train_x, train_y, test_x, test_y, [5], temperature=0.0)


# ------------------------------------------------------------------------------------------------ features
class FlattenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.scale


def test_extract_features_returns_dataset_order() -> None:
    images = torch.randn(23, 2, 3)
    labels = torch.randint(0, 4, (23,))
    dataset = TensorDataset(images, labels)
    features, out_labels = extract_features(FlattenModel(), make_eval_loader(dataset, batch_size=5))
    assert torch.equal(features, images.flatten(1)) and torch.equal(out_labels, labels)
    # plain (images, labels) batches of an ordered single-process loader work too
    plain = torch.utils.data.DataLoader(dataset, batch_size=4)
    features2, labels2 = extract_features(FlattenModel(), plain)
    assert torch.equal(features2, features) and torch.equal(labels2, labels)


def test_shard_sampler_covers_every_index() -> None:
    for world in (1, 2, 3, 4):
        padded = [list(ShardSampler(10, rank=r, world_size=world, pad=True)) for r in range(world)]
        assert len({len(p) for p in padded}) == 1  # equal shards: per-batch gathers line up
        assert sorted(set(sum(padded, []))) == list(range(10))
        exact = [list(ShardSampler(10, rank=r, world_size=world, pad=False)) for r in range(world)]
        assert sorted(sum(exact, [])) == list(range(10))  # each index exactly once


def test_class_balanced_subset() -> None:
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 7)
    subset = class_balanced_subset(labels, 2, seed=0)
    assert torch.bincount(labels[subset]).tolist() == [2, 2, 2]
    assert torch.equal(subset, class_balanced_subset(labels, 2, seed=0))
    assert torch.equal(class_balanced_subset(labels, -1, seed=0), torch.arange(15))


# ------------------------------------------------------------------------------------------------ linear core
def test_create_linear_input_concatenates_cls_and_mean_patch() -> None:
    outputs = [(torch.full((2, 3, 4), float(i)), torch.full((2, 4), 10.0 + i)) for i in range(4)]
    x = create_linear_input(outputs, use_n_blocks=2, use_avgpool=False)
    assert torch.equal(x, torch.cat([torch.full((2, 4), 12.0), torch.full((2, 4), 13.0)], dim=1))
    x = create_linear_input(outputs, use_n_blocks=1, use_avgpool=True)
    assert torch.equal(x, torch.cat([torch.full((2, 4), 13.0), torch.full((2, 4), 3.0)], dim=1))
    with pytest.raises(ValueError, match="use_n_blocks"):
        create_linear_input(outputs, use_n_blocks=5, use_avgpool=False)


def test_vit_features_shared_by_the_grid_and_training_learns() -> None:
    from simdinov2.models import DinoVisionTransformer

    torch.manual_seed(0)
    vit = DinoVisionTransformer(img_size=12, patch_size=4, embed_dim=32, depth=4, num_heads=2)
    feature_model = ModelWithIntermediateLayers(vit, n_last_blocks=4)
    images = torch.randn(16, 3, 12, 12)
    labels = torch.arange(16) % 2
    images[labels == 1] += 1.5  # a linearly separable shift
    sample = feature_model(images[:1])
    assert len(sample) == 4 and sample[-1][1].shape == (1, vit.embed_dim)
    classifiers, groups = setup_linear_classifiers(
        sample, [1, 4], [False, True], [0.1, 1.0], batch_size=16, num_classes=2
    )
    assert len(classifiers) == 8 and len(groups) == 8
    dims = {c.linear.in_features for c in classifiers.classifiers_dict.values()}
    assert dims == {32, 2 * 32, 4 * 32, 5 * 32}
    assert {g["lr"] for g in groups} == {0.1 * 16 / 256, 1.0 * 16 / 256}
    backbone_before = [p.clone() for p in vit.parameters()]
    optimizer = torch.optim.SGD(groups, momentum=0.9)
    calls = {"n": 0}

    class CountingModel(nn.Module):
        def forward(self, x):
            calls["n"] += 1
            return feature_model(x)

    first = train_step(CountingModel(), classifiers, optimizer, images, labels).item()
    for _ in range(15):
        last = train_step(CountingModel(), classifiers, optimizer, images, labels).item()
    assert calls["n"] == 16  # one backbone pass per step for all 8 classifiers
    assert last < first
    assert all(
        torch.equal(a, b) for a, b in zip(backbone_before, vit.parameters(), strict=True)
    )  # backbone frozen
    loader = make_eval_loader(TensorDataset(images, labels), batch_size=5, pad=False)
    results = evaluate_classifiers(feature_model, classifiers, loader, torch.device("cpu"))
    assert set(results) == set(classifiers.classifiers_dict)
    best = max(r["top1"] for r in results.values())
    assert best == 100.0
    # the reported accuracy is the plain argmax accuracy of that classifier
    name = max(results, key=lambda n: results[n]["top1"])
    with torch.no_grad():
        predicted = classifiers.classifiers_dict[name](feature_model(images)).argmax(1)
    assert 100.0 * (predicted == labels).float().mean().item() == pytest.approx(results[name]["top1"])


def test_stretch_cosine_schedule_continues_on_the_longer_curve() -> None:
    from simdinov2.eval.linear import stretch_cosine_schedule

    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr": 1.0}], momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 4)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the old run ended at 0
    restored = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 8)
    restored.load_state_dict(scheduler.state_dict())  # what resuming does: T_max comes back as 4
    stretch_cosine_schedule(restored, 8)
    for step in range(4, 8):
        expected = 0.5 * (1 + math.cos(math.pi * step / 8))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-9), step
        optimizer.step()
        restored.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_linear_classifier_init() -> None:
    torch.manual_seed(0)
    classifier = LinearClassifier(500, num_classes=300)
    assert classifier.linear.bias.abs().sum() == 0
    assert classifier.linear.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert isinstance(AllClassifiers({"a": classifier}), nn.Module)


# ------------------------------------------------------------------------------------------------ log regression
def test_logistic_regression_matches_scikit_learn() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()  # 3 classes
    for C in (0.05, 1.0):
        weight, bias = fit_logistic_regression(x, y, 3, C, max_iter=500, tolerance=1e-10)
        reference = sklearn.LogisticRegression(C=C, max_iter=5000, tol=1e-10).fit(x.numpy(), y.numpy())
        ours = torch.softmax(x.double() @ weight.T + bias, dim=1)  # fitted in float64
        theirs = torch.from_numpy(reference.predict_proba(x.numpy())).double()
        assert torch.allclose(ours, theirs, atol=2e-3), C
    top1, top5 = accuracy(x, y, weight, bias)
    assert top1 > 80.0 and top5 == 100.0


# ------------------------------------------------------------------------------------------------ v2 CLIs
@pytest.fixture(scope="module")
def v2_snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config.yaml, teacher_checkpoint.pth) as a tiny SimDINOv2 run writes them: registers, LayerScale
    and chunked blocks of simdino_config.yaml, with a head entry the loader must ignore."""
    from simdinov2.configs import get_cfg
    from simdinov2.models import build_model

    run = tmp_path_factory.mktemp("v2run")
    cfg = get_cfg(
        REPO / "simdinov2/configs/simdino_config.yaml",
        ["student.arch=vit_tiny", "student.patch_size=4", "crops.global_crops_size=28"],
    )
    OmegaConf.save(cfg, run / "config.yaml")
    torch.manual_seed(0)
    teacher, _ = build_model(cfg.student, only_teacher=True, img_size=28)
    state = {f"backbone.{k}": v for k, v in teacher.state_dict().items()}
    state["dino_head.mlp.0.weight"] = torch.randn(32, teacher.embed_dim)
    snapshot = run / "eval" / "training_9" / "teacher_checkpoint.pth"
    snapshot.parent.mkdir(parents=True)
    torch.save({"teacher": state}, snapshot)
    return run / "config.yaml", snapshot


def _v2_args(config: Path, weights: Path, data: Path, out: Path) -> list[str]:
    return ["--config-file", str(config), "--pretrained-weights", str(weights), "--output-dir", str(out),
            "--train-dataset", f"ImageFolder:root={data}/train", "--val-dataset", f"ImageFolder:root={data}/val",
            "--num-workers", "0"]  # fmt: skip


@pytest.mark.slow
def test_v2_knn_cli(v2_snapshot, tiny_imagefolder: Path, tmp_path: Path) -> None:
    """The issue's command (`python simdinov2/eval/knn.py ... --nb_knn 10 20`), plus a few-shot bank."""
    config, weights = v2_snapshot
    out = tmp_path / "knn"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "simdinov2/eval/knn.py", *_v2_args(config, weights, tiny_imagefolder, out),
         "--nb_knn", "10", "20", "--n-per-class-list", "-1", "5", "--n-tries", "2", "--batch-size", "64"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    records = [json.loads(line) for line in (out / "results_eval_knn.json").read_text().splitlines()]
    full = {r["k"]: r for r in records if r["n_per_class"] == "full"}
    assert sorted(full) == [10, 20]
    few = [r for r in records if r["n_per_class"] == 5]
    assert [r["k"] for r in few] == [10]  # k=20 > 3 classes x 5 samples: skipped with a warning
    assert len(few[0]["top1_per_try"]) == 2
    assert "skipping k=20" in proc.stdout + proc.stderr
    assert (out / "log.txt").is_file()
    for r in records:
        assert 0.0 <= r["top1"] <= r["top5"] <= 100.0
        assert r["image_size"] == 28  # the training global crop size of the config


@pytest.mark.slow
def test_v2_linear_and_log_regression(v2_snapshot, tiny_imagefolder: Path, tmp_path: Path, caplog) -> None:
    """In-process runs of both mains: the linear grid trains (saying its size, then its measured time),
    checkpoints and resumes; the logistic regression writes its result."""
    from simdinov2.eval import linear, log_regression

    config, weights = v2_snapshot
    out = tmp_path / "linear"
    # 16-pixel crops (position embedding interpolated from the 28-pixel grid) keep the CPU time small.
    base = _v2_args(config, weights, tiny_imagefolder, out) + ["--batch-size", "32", "--image-size", "16"]

    def run(*extra: str) -> dict:
        return linear.run_linear_probe(linear.get_args_parser().parse_args(base + list(extra)))

    with caplog.at_level("INFO", logger="simdinov2"):
        summary = run("--epochs", "1", "--learning-rates", "0.01", "0.1", "--eval-period-iterations", "2",
                      "--epoch-length", "0", "--full-grid")  # fmt: skip
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("linear probe: ")]
    assert said[0].startswith(
        "linear probe: 8 classifiers, 1 epochs x 3 iterations = 3 iterations of 32 images"
    )
    assert "shorten with --epoch-length 0" in said[0]
    assert re.fullmatch(r"linear probe: [0-9.]+ s per iteration, about 0:00:\d\d for the 1 iterations left; .*",
                        said[1]), said  # fmt: skip
    checkpoint = torch.load(out / "linear_checkpoint.pth", weights_only=True)
    epoch_length = 120 // 32
    assert checkpoint["iteration"] == epoch_length == summary["iteration"]
    assert len(summary["classifiers"]) == 2 * 2 * 2  # lrs x {1, 4} blocks x avgpool (--full-grid)
    lines = [json.loads(line) for line in (out / "results_eval_linear.json").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [2, epoch_length]  # periodic eval, then the final one
    best = summary["best_classifier"]
    assert best["top1"] == max(summary["classifiers"].values())
    assert best["n_last_blocks"] in (1, 4)
    # rerun with 2 epochs: resumes at the saved iteration and trains only the second epoch
    resumed = run("--epochs", "2", "--learning-rates", "0.01", "0.1", "--epoch-length", "0", "--full-grid")
    assert resumed["iteration"] == 2 * epoch_length
    resumed_state = torch.load(out / "linear_checkpoint.pth", weights_only=True)
    assert resumed_state["iteration"] == 2 * epoch_length
    assert resumed_state["scheduler"]["T_max"] == 2 * epoch_length  # the cosine follows the new length
    with pytest.raises(ValueError, match="another classifier grid"):
        run("--epochs", "2", "--learning-rates", "0.5", "--epoch-length", "0", "--full-grid")

    out_lr = tmp_path / "logreg"
    args = log_regression.get_args_parser().parse_args(
        _v2_args(config, weights, tiny_imagefolder, out_lr)
        + ["--c-values", "0.1", "10", "--max-train-iters", "50", "--image-size", "16"]
    )
    record = log_regression.run_log_regression(args)
    assert json.loads((out_lr / "results_eval_log_regression.json").read_text().splitlines()[-1]) == record
    assert record["best_C"] in (0.1, 10.0) and set(record["holdout_top1"]) == {"0.1", "10.0"}
    assert 0.0 <= record["top1"] <= record["top5"] <= 100.0


@pytest.mark.slow
def test_v2_bad_inputs(v2_snapshot, tiny_imagefolder: Path, tmp_path: Path) -> None:
    from simdinov2.eval import knn
    from simdinov2.eval.setup import setup_and_build_model

    config, weights = v2_snapshot
    parser = knn.get_args_parser()
    with pytest.raises(FileNotFoundError, match="--config-file"):
        setup_and_build_model(
            parser.parse_args(_v2_args(tmp_path / "none.yaml", weights, tiny_imagefolder, tmp_path))
        )
    other = tmp_path / "other.yaml"
    cfg = OmegaConf.load(config)
    cfg.student.arch = "vit_small"
    OmegaConf.save(cfg, other)
    # a config describing another model: the checkpoint's architecture is evaluated (one log line)
    model, _, _ = setup_and_build_model(
        parser.parse_args(_v2_args(other, weights, tiny_imagefolder, tmp_path))
    )
    assert model.embed_dim == 192 and model.num_register_tokens == 4
    # an explicit --opts statement that contradicts the weights: refused, naming the option to change
    with pytest.raises(
        ValueError, match=r"--opts student.arch=vit_small contradicts .*--opts student.arch=vit_tiny"
    ):
        setup_and_build_model(
            parser.parse_args(
                _v2_args(config, weights, tiny_imagefolder, tmp_path) + ["--opts", "student.arch=vit_small"]
            )
        )
    # through the CLI entry point: one line, exit code 1
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            sys.executable,
            "simdinov2/eval/linear.py",
            *_v2_args(config, tmp_path / "missing.pth", tiny_imagefolder, tmp_path / "o"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("linear.py: error: ") and "missing.pth" in last


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_knn_and_autocast_features_match_cpu() -> None:
    train_x, train_y, test_x, test_y = random_bank(seed=2)
    on_cpu = knn_classify(train_x.float(), train_y, test_x.float(), test_y, [5, 20])
    assert knn_classify(train_x.float().cuda(), train_y.cuda(), test_x.float(), test_y, [5, 20]) == on_cpu
    from simdinov2.models import DinoVisionTransformer

    vit = DinoVisionTransformer(img_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=2).cuda()
    images = torch.randn(4, 3, 16, 16, device="cuda")
    reference = ModelWithIntermediateLayers(vit, 2)(images)
    half = ModelWithIntermediateLayers(vit, 2, autocast_dtype=torch.float16)(images)
    for (p_ref, c_ref), (p_half, c_half) in zip(reference, half, strict=True):
        assert c_half.dtype == torch.float32  # classifiers always see float32
        assert torch.allclose(c_half, c_ref, atol=5e-2) and torch.allclose(p_half, p_ref, atol=5e-2)


def test_v2_linear_defaults_are_upstream_simdinov2s() -> None:
    """The reported SimDINOv2 linear numbers come from upstream's script: its grid and epoch length."""
    from simdinov2.eval import linear

    args = linear.get_args_parser().parse_args([])
    assert args.epoch_length == 1250 and args.eval_period_iterations == 1250 and args.epochs == 10
    assert args.learning_rates is None and args.n_last_blocks is None and not args.full_grid
    assert linear.DEFAULT_LEARNING_RATES == [2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2]
    assert (linear.DEFAULT_N_LAST_BLOCKS, linear.DEFAULT_AVGPOOL) == ([1, 2], [True])
    assert len(linear.FULL_GRID_LEARNING_RATES) == 13 and linear.FULL_GRID_AVGPOOL == [False, True]


def test_log_regression_defaults_are_upstream_simdinov2s() -> None:
    """C grid 10^linspace(-6, 5, 45), float64 fit with tolerance 1e-12, resize to the crop size."""
    from simdinov2.eval import log_regression

    c = log_regression.DEFAULT_C_VALUES
    assert len(c) == 45 and math.isclose(c[0], 1e-6) and math.isclose(c[-1], 1e5)
    assert math.isclose(c[1] / c[0], 10 ** (11 / 44))
    assert torch.float64 == log_regression.FIT_DTYPE and log_regression.FIT_TOLERANCE == 1e-12
    x, y = torch.randn(40, 6), torch.arange(40) % 3
    weight, bias = fit_logistic_regression(x, y, 3, 1.0, max_iter=50)
    assert weight.dtype == bias.dtype == torch.float64


def test_linear_global_batch_arithmetic_in_one_line() -> None:
    from simdinov2.eval.linear import check_global_batch

    check_global_batch(1024, 128, 8)  # exactly one global batch trains
    with pytest.raises(ValueError) as exc:
        check_global_batch(500, 128, 8)
    assert str(exc.value) == (
        "--batch-size 128 per process x 8 processes = global batch 1024 > 500 training images: "
        "pass --batch-size 62 or less (or use fewer processes)"
    )
    with pytest.raises(ValueError, match="use fewer processes"):
        check_global_batch(3, 1, 4)


@pytest.mark.slow
def test_v2_linear_defaults_on_a_small_set_say_the_arithmetic(
    v2_snapshot, tiny_imagefolder: Path, tmp_path: Path
) -> None:
    """`python simdinov2/eval/linear.py` with the default --batch-size 128 on 120 training images."""
    config, weights = v2_snapshot
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            sys.executable,
            "simdinov2/eval/linear.py",
            *_v2_args(config, weights, tiny_imagefolder, tmp_path / "o"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "linear.py: error: --batch-size 128 per process x 1 process = global batch 128 > 120 training images: "
        "pass --batch-size 120 or less"
    )


class _Killed(BaseException):
    """`kill -9` at a chosen point: nothing after it runs."""


@pytest.mark.slow
def test_v2_linear_killed_resumes_to_the_rows_of_an_uninterrupted_run(
    v2_snapshot, tiny_imagefolder: Path, tmp_path: Path, monkeypatch
) -> None:
    """Rows at iterations 1, 2, 3, the final one at 4; checkpoints at 2 and 4. Killed at the save of 4
    (row 3 written after checkpoint 2): before, row 3 came twice. Killed right after checkpoint 2 was
    written: before, row 2 (written after the checkpoint) was lost."""
    from simdinov2.eval import linear

    config, weights = v2_snapshot

    def run(out: Path) -> None:
        argv = _v2_args(config, weights, tiny_imagefolder, out) + [
            "--batch-size", "32", "--image-size", "16", "--epochs", "2", "--epoch-length", "2",
            "--eval-period-iterations", "1", "--save-checkpoint-frequency", "1", "--learning-rates", "0.1"]  # fmt: skip
        linear.run_linear_probe(linear.get_args_parser().parse_args(argv))

    def rows(out: Path) -> list[int]:
        return [
            json.loads(line)["iteration"]
            for line in (out / "results_eval_linear.json").read_text().splitlines()
        ]

    run(tmp_path / "full")
    assert rows(tmp_path / "full") == [1, 2, 3, 4]
    real_save = linear.atomic_torch_save
    for kill in ("after_a_row", "right_after_the_checkpoint"):

        def killing_save(state, path, kill=kill):
            if kill == "after_a_row" and state["iteration"] == 4:
                raise _Killed
            real_save(state, path)
            if kill == "right_after_the_checkpoint" and state["iteration"] == 2:
                raise _Killed

        monkeypatch.setattr(linear, "atomic_torch_save", killing_save)
        with pytest.raises(_Killed):
            run(tmp_path / kill)
        monkeypatch.undo()
        run(tmp_path / kill)
        assert rows(tmp_path / kill) == [1, 2, 3, 4], kill
    run(tmp_path / kill)  # resuming a finished run adds nothing
    assert rows(tmp_path / kill) == [1, 2, 3, 4]


@pytest.mark.slow
def test_v1_eval_linear_killed_at_its_checkpoint_save_resumes_to_an_uninterrupted_log(
    tmp_path: Path, monkeypatch, tiny_imagefolder: Path
) -> None:
    """Killed while saving epoch 1's checkpoint (log line written, a temporary half written): before,
    log.txt held epochs [0, 1, 1] and the temporary stayed."""
    from simdino import eval_linear

    v1_weights = tmp_path / "v1.pth"
    backbone = build_vit("vit_tiny", patch_size=4, v1=True, img_size=28)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, v1_weights)

    def run(out: Path) -> None:
        argv = ["--arch", "vit_tiny", "--patch_size", "4", "--img_size", "28", "--num_workers", "0",
                "--batch_size_per_gpu", "32", "--epochs", "2", "--pretrained_weights", str(v1_weights),
                "--data_path", str(tiny_imagefolder), "--output_dir", str(out)]  # fmt: skip
        eval_linear.main(eval_linear.get_args_parser().parse_args(argv))

    def epochs(out: Path) -> list[int]:
        return [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()]

    run(tmp_path / "full")
    real_save = eval_linear.atomic_torch_save

    def killing_save(state, path):
        if state["epoch"] == 2:
            (Path(path).parent / f".{Path(path).name}.0123abcd.tmp").write_bytes(b"partial")
            raise _Killed
        real_save(state, path)

    monkeypatch.setattr(eval_linear, "atomic_torch_save", killing_save)
    with pytest.raises(_Killed):
        run(tmp_path / "killed")
    monkeypatch.undo()
    run(tmp_path / "killed")
    assert epochs(tmp_path / "killed") == epochs(tmp_path / "full") == [0, 1]
    assert not list((tmp_path / "killed").glob(".*.tmp"))
