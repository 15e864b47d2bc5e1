#!/usr/bin/env python
"""k-NN evaluation cost: our `simdinov2.eval.knn` core against scikit-learn's brute-force
`KNeighborsClassifier(metric="cosine")` on the same features, with the same voting rule.

Owns the evidence for the k-NN goal (≥ 10× faster than scikit-learn, identical predictions). Features are
synthetic but of the real sizes (Fashion-MNIST: 60k train × 10k test; dim 192 = ViT-Ti, 768 = ViT-B),
L2-normalised, with class structure (10 noisy class centres, so the vote is neither trivial nor random).

Both sides apply DINO's weighted vote: the k nearest training features by cosine similarity, each adding
exp(sim / T) to its class. scikit-learn gets it through a callable `weights` (cosine distance d = 1 − sim,
so exp((1 − d) / T) is the same weight); our side is `knn_classify` (timed as the eval calls it) plus the
per-image prediction of the same rule computed from the same chunked matmul + top-k, whose accuracy is
checked against `knn_classify`'s so the agreement really is that of our core. Each method runs in a fresh
child process so that its peak resident memory (getrusage) is its own; the table reports the peak
minus the process's memory once the features are loaded.

    python -m benchmarks.knn                  # 60k x 10k, dims 192 and 768, k = 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    current_rss_mb,
    format_table,
    machine_info,
    peak_rss_mb,
    print_header,
    write_json,
)


# -------------------------------------------------------------------------------------------- data
def make_features(
    n: int, dim: int, n_classes: int, noise: float, rng: np.random.Generator, centres: np.ndarray
):
    """`n` L2-normalised features around the class centres, labels balanced."""
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    feats = centres[labels] + noise * rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats.astype(np.float32), labels.astype(np.int64)


def write_dataset(
    folder: Path, n_train: int, n_test: int, dim: int, n_classes: int, noise: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    train_x, train_y = make_features(n_train, dim, n_classes, noise, rng, centres)
    test_x, test_y = make_features(n_test, dim, n_classes, noise, rng, centres)
    for name, arr in (("train_x", train_x), ("train_y", train_y), ("test_x", test_x), ("test_y", test_y)):
        np.save(folder / f"{name}.npy", arr)


def load_dataset(folder: Path) -> tuple[np.ndarray, ...]:
    return tuple(np.load(folder / f"{name}.npy") for name in ("train_x", "train_y", "test_x", "test_y"))


# ------------------------------------------------------------------------------------------ children
def predict_ours(train_x, train_y, test_x, k: int, temperature: float, num_classes: int):
    """Per-image prediction of the weighted vote with the core's arithmetic: chunked similarity matmul
    against the bank, top-k, exp(sim/T) relative to the row's best, scatter-add per class, argmax."""
    import torch

    from simdinov2.eval import knn as knn_core

    chunk = max(1, knn_core._SIMILARITY_BUDGET // train_x.shape[0])
    bank_t = train_x.t()
    preds = []
    for start in range(0, test_x.shape[0], chunk):
        sims = test_x[start : start + chunk] @ bank_t
        top_sim, top_idx = sims.topk(k, dim=1, largest=True, sorted=True)
        del sims
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        scores = torch.zeros(top_idx.shape[0], num_classes, dtype=weights.dtype)
        scores.scatter_add_(1, train_y[top_idx], weights)
        preds.append(scores.argmax(dim=1))
    return torch.cat(preds)


def child_ours(folder: Path, k: int, all_ks: list[int], temperature: float) -> dict[str, Any]:
    import torch

    from simdinov2.eval.knn import knn_classify

    train_x, train_y, test_x, test_y = (torch.from_numpy(a) for a in load_dataset(folder))
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    base_mb = current_rss_mb()
    start = time.perf_counter()
    acc = knn_classify(train_x, train_y, test_x, test_y, [k], temperature, num_classes)
    core_s = time.perf_counter() - start
    core_peak_mb = peak_rss_mb() - base_mb
    start = time.perf_counter()
    acc_all = knn_classify(train_x, train_y, test_x, test_y, all_ks, temperature, num_classes)
    all_ks_s = time.perf_counter() - start
    start = time.perf_counter()
    preds = predict_ours(train_x, train_y, test_x, k, temperature, num_classes)
    predict_s = time.perf_counter() - start
    np.save(folder / "pred_ours.npy", preds.numpy())
    return {
        "time_s": core_s,
        "peak_extra_mb": core_peak_mb,
        "top1": acc[k][0],
        "all_ks_time_s": all_ks_s,
        "all_ks": {str(kk): v for kk, v in acc_all.items()},
        "predict_time_s": predict_s,
        "predict_top1": 100.0 * float((preds == test_y).double().mean()),
        "threads": torch.get_num_threads(),
    }


def child_sklearn(folder: Path, k: int, temperature: float, n_jobs: int | None) -> dict[str, Any]:
    from sklearn.neighbors import KNeighborsClassifier

    train_x, train_y, test_x, test_y = load_dataset(folder)
    base_mb = current_rss_mb()

    def dino_weights(distances: np.ndarray) -> np.ndarray:
        # cosine distance d = 1 - sim; exp(sim/T) relative to the row's nearest neighbour (same ranking).
        sims = 1.0 - distances
        return np.exp((sims - sims.max(axis=1, keepdims=True)) / temperature)

    start = time.perf_counter()
    clf = KNeighborsClassifier(
        n_neighbors=k, metric="cosine", algorithm="brute", weights=dino_weights, n_jobs=n_jobs
    )
    clf.fit(train_x, train_y)
    preds = clf.predict(test_x)
    elapsed = time.perf_counter() - start
    np.save(folder / "pred_sklearn.npy", preds)
    return {
        "time_s": elapsed,
        "peak_extra_mb": peak_rss_mb() - base_mb,
        "top1": 100.0 * float((preds == test_y).mean()),
    }


def run_child(method: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        # as a module from the repository root: `benchmarks.common` resolves whatever the caller's PYTHONPATH
        sys.executable, "-m", "benchmarks.knn", "--child", method, "--data", str(folder),
        "--k", str(args.k), "--temperature", str(args.temperature), "--all-ks", *map(str, args.all_ks),
    ]  # fmt: skip
    if args.sklearn_jobs is not None:
        cmd += ["--sklearn-jobs", str(args.sklearn_jobs)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise SystemExit(f"k-NN child {method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------- driver
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--dims", type=int, nargs="+", default=[192, 768])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument(
        "--noise",
        type=float,
        default=None,
        help="noise norm relative to the unit class centre (default 0.7·dim^0.36: roughly 80%% top-1 at dims 192 and 768)",
    )
    p.add_argument("--k", type=int, default=20, help="neighbours for the compared predictions")
    p.add_argument(
        "--all-ks", type=int, nargs="+", default=[10, 20, 100, 200], help="the eval's k list (ours only)"
    )
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument(
        "--sklearn-jobs", type=int, default=None, help="KNeighborsClassifier n_jobs (default: sklearn's)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke setting: 3000 x 500, dim 32")
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = get_args_parser().parse_args(argv)
    if args.child:
        folder = Path(args.data)
        if args.child == "ours":
            res = child_ours(folder, args.k, args.all_ks, args.temperature)
        else:
            res = child_sklearn(folder, args.k, args.temperature, args.sklearn_jobs)
        print(json.dumps(res))
        return None
    if args.quick:
        args.n_train, args.n_test, args.dims = 3000, 500, [32]
    if max(args.all_ks + [args.k]) > args.n_train:
        raise SystemExit(f"k up to {max(args.all_ks + [args.k])} needs at least that many training features")

    info = machine_info()
    print_header("knn: our k-NN core vs scikit-learn brute-force cosine KNeighborsClassifier", info)
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    for dim in args.dims:
        with tempfile.TemporaryDirectory(prefix="knn_bench_") as tmp:
            folder = Path(tmp)
            # Same-class cosine ≈ 1/(1+noise²) must stay comparable to the ~1/sqrt(dim) spread between
            # classes, or the vote is trivially right at high dim (and agreement means nothing).
            noise = args.noise if args.noise is not None else 0.7 * dim**0.36
            write_dataset(folder, args.n_train, args.n_test, dim, args.classes, noise, args.seed)
            ours = run_child("ours", folder, args)
            sk = run_child("sklearn", folder, args)
            pred_ours, pred_sk = np.load(folder / "pred_ours.npy"), np.load(folder / "pred_sklearn.npy")
        agreement = 100.0 * float((pred_ours == pred_sk).mean())
        common = {"dim": dim, "n_train": args.n_train, "n_test": args.n_test, "k": args.k}
        rows.append(
            {
                **common,
                "method": "ours knn_classify",
                "time s": ours["time_s"],
                "x vs sklearn": sk["time_s"] / ours["time_s"],
                "peak extra MiB": ours["peak_extra_mb"],
                "top1 %": ours["top1"],
                "agreement %": agreement,
            }
        )
        rows.append(
            {
                **common,
                "method": "sklearn brute cosine",
                "time s": sk["time_s"],
                "x vs sklearn": 1.0,
                "peak extra MiB": sk["peak_extra_mb"],
                "top1 %": sk["top1"],
                "agreement %": agreement,
            }
        )
        extra[str(dim)] = {
            "ours": ours,
            "sklearn": sk,
            "agreement_pct": agreement,
            "n_disagree": int((pred_ours != pred_sk).sum()),
        }
        print(
            f"  dim {dim}: ours {ours['time_s']:.2f} s, sklearn {sk['time_s']:.2f} s, agreement {agreement:.3f} %; "
            f"ours all k {args.all_ks} in {ours['all_ks_time_s']:.2f} s; our per-image path top-1 "
            f"{ours['predict_top1']:.2f} % vs knn_classify {ours['top1']:.2f} %",
            flush=True,
        )
    print()
    print(
        format_table(
            rows,
            [
                "dim",
                "n_train",
                "n_test",
                "k",
                "method",
                "time s",
                "x vs sklearn",
                "peak extra MiB",
                "top1 %",
                "agreement %",
            ],
        )
    )
    print(
        "\nagreement = share of test images given the same class by both (same weighted-vote rule, k and T); "
        "peak extra = peak RSS minus RSS with the features loaded, each method in its own process."
    )
    result = {"machine": info, "rows": rows, "details": extra, "settings": vars(args)}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
