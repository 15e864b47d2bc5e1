"""k-NN evaluation at ImageNet scale in bounded memory: 50k queries against a 1.28M x 768 feature bank
(a ViT-B/16's CLS features of ImageNet-1k's training set), through the project's k-NN core
(`simdinov2.eval.knn.knn_classify`: chunked similarity matmul + top-k, the bank never copied).

The features are synthetic, L2-normalised, around 1000 noisy class centres, generated on the device
in slices so that building them needs no more than the bank itself. Reported: the time of
`knn_classify` (k = 10, 20, 100, 200, T = 0.07, DINOv2's defaults) and its peak memory beyond the bank
and queries (CUDA: `torch.cuda.max_memory_allocated`; CPU: growth of the peak resident set), next to the
bank's own size. The core's chunk budget bounds that extra memory whatever the bank size.

    python -m benchmarks.knn_scale --json knn.json                  # on CUDA: the full size
    python -m benchmarks.knn_scale --device cpu --bank 20000 --queries 1000
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import (
    current_rss_mb,
    machine_info,
    peak_rss_mb,
    resolve_device,
    synchronize,
    write_json,
)
from simdinov2.eval.knn import knn_classify

SLICE = 131072  # rows generated at a time


def synthetic_features(
    n: int, centres: torch.Tensor, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` L2-normalised features (balanced labels) around `centres`, built slice by slice in place."""
    classes, dim = centres.shape
    device = centres.device
    labels = torch.arange(n, device=device) % classes
    feats = torch.empty(n, dim, device=device)
    for start in range(0, n, SLICE):
        rows = slice(start, min(start + SLICE, n))
        noise_part = torch.randn(rows.stop - start, dim, device=device, generator=generator)
        feats[rows] = F.normalize(centres[labels[rows]] + noise * noise_part / dim**0.5, dim=1)
    return feats, labels


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--bank", type=int, default=1_281_167, help="training features (ImageNet-1k train)")
    p.add_argument("--queries", type=int, default=50_000, help="test features (ImageNet-1k val)")
    p.add_argument("--dim", type=int, default=768, help="feature dimension (ViT-B)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--noise", type=float, default=4.0, help="noise norm relative to the unit class centres")
    p.add_argument("--ks", type=int, nargs="+", default=[10, 20, 100, 200])
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    device = resolve_device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    centres = F.normalize(torch.randn(args.classes, args.dim, device=device, generator=generator), dim=1)
    start = time.perf_counter()
    bank, bank_labels = synthetic_features(args.bank, centres, args.noise, generator)
    queries, query_labels = synthetic_features(args.queries, centres, args.noise, generator)
    synchronize(device)
    build_s = time.perf_counter() - start
    features_mib = (bank.numel() + queries.numel()) * bank.element_size() / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before_mib = torch.cuda.memory_allocated(device) / 2**20
    else:
        before_mib = current_rss_mb()
    start = time.perf_counter()
    accuracy = knn_classify(bank, bank_labels, queries, query_labels, args.ks, args.temperature, args.classes)
    synchronize(device)
    knn_s = time.perf_counter() - start
    if device.type == "cuda":
        extra_mib = torch.cuda.max_memory_allocated(device) / 2**20 - before_mib
    else:
        extra_mib = peak_rss_mb() - before_mib  # an upper bound if building the features peaked higher
    result = {
        "machine": machine_info(device),
        "bank": args.bank,
        "queries": args.queries,
        "dim": args.dim,
        "ks": args.ks,
        "build_s": build_s,
        "knn_s": knn_s,
        "queries_per_s": args.queries / knn_s,
        "features_mib": features_mib,
        "peak_extra_mib": extra_mib,
        "top1": {str(k): top1 for k, (top1, _) in accuracy.items()},
    }
    print(
        f"k-NN {args.queries} x {args.bank} x {args.dim} on {device.type}: {knn_s:.2f} s "
        f"({args.queries / knn_s:.0f} queries/s), features {features_mib:.0f} MiB, peak extra {extra_mib:.0f} MiB, "
        f"top-1 " + ", ".join(f"k={k}: {a:.1f}%" for k, a in result["top1"].items())
    )
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
