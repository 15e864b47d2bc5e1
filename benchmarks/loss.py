#!/usr/bin/env python
"""Coding-rate loss cost: forward + backward time of `MCRLoss` against the head dimension p, the batch and
the number of views, for the Cholesky path we ship and `logdet` / `slogdet` alternatives.

Owns the evidence for how `simdinov2.loss.mcr_loss.coding_rate` computes ½·logdet(I + α·ZᵀZ). Every
variant runs the *whole* `MCRLoss` (compression + expansion, forward and backward) with only the
log-determinant step swapped (patched into the module for the measurement):

- `cholesky f64 (ours)`: the shipped path, float64 covariance, `cholesky_ex`, Σ log diag L;
- `cholesky f32`: the same in float32 (what a straight port of the upstream code does);
- `logdet f64` / `slogdet f64`: `torch.logdet` / `torch.linalg.slogdet` (LU based) on the float64 matrix;
- `slogdet f32`: `slogdet` in float32.

Next to the time it reports how far each variant's loss and gradient are from ours, at the paper's
eps = 0.05, and (with `--collapse`) on collapsed features (all rows equal), where float32 breaks.

    python -m benchmarks.loss            # p in {128, 256, 1024}, batch {64, 256}, views {6, 12}
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F

from benchmarks.common import (
    format_table,
    machine_info,
    print_header,
    resolve_device,
    set_threads,
    summarize,
    time_fn,
    write_json,
)
from simdinov2.loss import MCRLoss
from simdinov2.loss import mcr_loss as mcr_module

OURS = "cholesky f64 (ours)"


def _rate_variant(method: str, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """A drop-in `coding_rate(z, eps, world_size, reduce_cov)` computing the logdet with `method` in `dtype`."""

    def coding_rate(
        z: torch.Tensor, eps: float, world_size: int = 1, reduce_cov: bool = False
    ) -> torch.Tensor:
        m, p = z.shape[-2], z.shape[-1]
        with torch.autocast(device_type=z.device.type, enabled=False):
            zc = z.to(dtype)
            cov = zc.mT @ zc
            mat = torch.eye(p, dtype=dtype, device=z.device) + (p / (m * world_size * eps)) * cov
            if method == "cholesky":
                half_logdet = torch.linalg.cholesky(mat).diagonal(dim1=-2, dim2=-1).log().sum(-1)
            elif method == "logdet":
                half_logdet = 0.5 * torch.logdet(mat)
            elif method == "slogdet":
                half_logdet = 0.5 * torch.linalg.slogdet(mat).logabsdet
            else:
                raise ValueError(method)
            return half_logdet.to(torch.promote_types(z.dtype, torch.float32))

    return coding_rate


VARIANTS: dict[str, Callable[..., torch.Tensor] | None] = {
    OURS: None,  # the module's own coding_rate
    "cholesky f32": _rate_variant("cholesky", torch.float32),
    "logdet f64": _rate_variant("logdet", torch.float64),
    "slogdet f64": _rate_variant("slogdet", torch.float64),
    "slogdet f32": _rate_variant("slogdet", torch.float32),
}


def make_views(n_views: int, batch: int, dim: int, device: torch.device, collapse: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if collapse:  # every sample the same unit vector: rank-1 covariance, the hardest case numerically
        row = F.normalize(torch.randn(dim, generator=gen), dim=0)
        student = row.expand(n_views, batch, dim).clone()
        teacher = row.expand(2, batch, dim).clone()
    else:
        student = F.normalize(torch.randn(n_views, batch, dim, generator=gen), dim=-1)
        teacher = F.normalize(torch.randn(2, batch, dim, generator=gen), dim=-1)
    return student.to(device).requires_grad_(True), teacher.to(device)


def run_variant(
    name: str, student: torch.Tensor, teacher: torch.Tensor, eps: float, device: torch.device, repeats: int
) -> dict[str, Any]:
    """Time forward+backward of MCRLoss with `name`'s coding rate; also return loss and gradient."""
    loss_fn = MCRLoss(eps=eps)
    variant = VARIANTS[name]
    patch = (
        mock.patch.object(mcr_module, "coding_rate", variant)
        if variant is not None
        else mock.patch.object(mcr_module, "coding_rate", mcr_module.coding_rate)
    )

    def fwd_bwd() -> torch.Tensor:
        student.grad = None
        loss, _ = loss_fn(student, teacher)
        loss.backward()
        return loss

    with patch:
        try:
            loss = fwd_bwd()
            loss = loss.detach()
            grad = student.grad.detach().clone()
            times = time_fn(fwd_bwd, device, warmup=1, repeats=repeats, min_time=0.05)
            failure = None
        except Exception as exc:  # float32 Cholesky raises on collapsed features: that is a finding
            loss, grad, times, failure = None, None, [float("nan")], f"{type(exc).__name__}"
    return {"loss": loss, "grad": grad, "times": times, "failure": failure}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dims", type=int, nargs="+", default=[128, 256, 1024], help="head output dim p")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="images per process m")
    p.add_argument("--views", type=int, nargs="+", default=[6, 12], help="student views (2 global + locals)")
    p.add_argument("--eps", type=float, default=0.05, help="coding precision (paper ViT-B: 0.05)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"subset of: {', '.join(VARIANTS)}")
    p.add_argument("--collapse", action="store_true", help="also run collapsed features (all rows equal)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke setting: p 128, batch 64, 6 views, 1 repeat")
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    for name in args.variants:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}: choose from {', '.join(repr(v) for v in VARIANTS)}")
    if OURS not in args.variants:
        args.variants = [OURS, *args.variants]
    if args.quick:
        args.dims, args.batches, args.views, args.repeats = [128], [64], [6], 1
    info = machine_info(device)
    print_header("loss: MCRLoss forward + backward, Cholesky (ours) vs logdet / slogdet", info)

    rows: list[dict[str, Any]] = []
    cases = [(False, d, b, v) for d, b, v in itertools.product(args.dims, args.batches, args.views)]
    if args.collapse:
        cases += [(True, d, max(args.batches), max(args.views)) for d in args.dims]
    for collapse, dim, batch, views in cases:
        student, teacher = make_views(views, batch, dim, device, collapse)
        results = {
            name: run_variant(name, student, teacher, args.eps, device, args.repeats)
            for name in args.variants
        }
        ours = results[OURS]
        for name, res in results.items():
            ms = 1e3 * summarize(res["times"])["median_s"]
            if res["failure"] or ours["loss"] is None:
                loss_err = grad_err = float("nan")
            else:
                loss_err = abs(float(res["loss"]) - float(ours["loss"]))
                grad_err = float(
                    (res["grad"] - ours["grad"]).abs().max() / ours["grad"].abs().max().clamp_min(1e-30)
                )
            rows.append(
                {
                    "features": "collapsed" if collapse else "random",
                    "p": dim,
                    "batch": batch,
                    "views": views,
                    "variant": name,
                    "ms fwd+bwd": ms,
                    "x vs ours": 1e3 * summarize(ours["times"])["median_s"] / ms,
                    "|loss - ours|": loss_err,
                    "grad rel err": grad_err,
                    "status": res["failure"] or "ok",
                }
            )
        print(f"  done p={dim} batch={batch} views={views}{' (collapsed)' if collapse else ''}", flush=True)

    print()
    print(format_table(rows))
    print(
        "\n'x vs ours' > 1 means that variant is faster than the shipped Cholesky float64 path; the errors are "
        "relative to ours (float64 Cholesky is the most accurate of the five)."
    )
    result = {"machine": info, "eps": args.eps, "rows": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
