#!/usr/bin/env python
"""The per-step parameter updates of the trainers in isolation: AdamW (for-loop / foreach / fused), DINO's
per-parameter gradient clipping (ours, multi-tensor, vs DINO's per-tensor loop) and the EMA teacher update, on the
v1 student's parameters.

Owns the evidence behind the optimizer settings of `simdinov2/train/optim.py`: these pieces touch every
parameter once or more per step and cost the same whatever the batch size, so they matter most for
small batches and large heads (DINO's 65536 prototypes). Each alternative is checked to give the same
result as the shipped one before it is timed.

    python -m benchmarks.optim_pieces
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    format_table,
    machine_info,
    print_header,
    resolve_device,
    set_threads,
    summarize,
    time_fn,
    v1_model_args,
    write_json,
)
from simdino.train.multicrop import build_student_teacher
from simdinov2.train.optim import (
    _clip_gradients_per_tensor,
    build_optimizer,
    clip_gradients,
    ema_update,
    param_groups,
)


def clip_gradients_per_tensor(model: nn.Module, clip: float) -> list[float]:
    """The clipping `clip_gradients` replaced (DINO's loop): one norm, comparison and host sync per
    parameter. Kept here as the baseline the shipped multi-tensor version is timed and checked against."""
    return _clip_gradients_per_tensor(
        [p.grad.detach() for p in model.parameters() if p.grad is not None], clip
    )


def build_student(
    arch: str, patch: int, size: int, simdino: bool, out_dim: int
) -> tuple[nn.Module, nn.Module]:
    """The v1 trainer's student and teacher at these shapes (its other settings at their defaults)."""
    args = v1_model_args(
        arch=arch, patch_size=patch, global_crops_size=size, use_simdino=simdino, out_dim=out_dim
    )
    return build_student_teacher(args)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="vit_tiny")
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--out-dim", type=int, default=65536)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke setting: small head, 2 repeats")
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    if args.quick:
        args.out_dim, args.repeats = 1024, 2
    info = machine_info(device)
    print_header("optim_pieces: optimizer step, gradient clipping and EMA of the v1 student", info)
    rows: list[dict[str, Any]] = []
    for simdino in (True, False):
        torch.manual_seed(0)
        student, teacher = build_student(args.arch, args.patch_size, args.size, simdino, args.out_dim)
        student.to(device)
        teacher.to(device)
        params = [p for p in student.parameters() if p.requires_grad]
        n_params = sum(p.numel() for p in params)
        grads = [torch.randn_like(p) * 0.01 for p in params]
        label = f"{'SimDINO' if simdino else 'DINO'} {args.arch} ({n_params / 1e6:.1f}M)"

        def set_grads(params: list = params, grads: list = grads) -> None:
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()

        # --- AdamW: the trainer's build_optimizer (fused on plain tensors) vs torch's other kernels.
        impls = {
            "AdamW build_optimizer (ours)": lambda student=student: build_optimizer(
                "adamw", param_groups(student)
            ),
            "AdamW foreach=True": lambda student=student: torch.optim.AdamW(
                param_groups(student), foreach=True
            ),
            "AdamW for-loop (foreach=False)": lambda student=student: torch.optim.AdamW(
                param_groups(student), foreach=False
            ),
        }
        base_ms = None
        for name, make in impls.items():
            opt = make()
            for group in opt.param_groups:
                group["lr"], group["weight_decay"] = 1e-4, group.get("weight_decay", 0.04)
            set_grads()
            ms = 1e3 * summarize(time_fn(opt.step, device, warmup=2, repeats=args.repeats))["median_s"]
            base_ms = base_ms or ms
            rows.append({"student": label, "piece": name, "ms": ms, "x vs ours": base_ms / ms})

        # --- gradient clipping: same results first, then time (each call sees fresh gradients).
        set_grads()
        ref_norms = clip_gradients(student, 3.0)
        ref = [p.grad.clone() for p in params]
        set_grads()
        new_norms = clip_gradients_per_tensor(student, 3.0)
        same = all(torch.allclose(p.grad, r, rtol=1e-5, atol=1e-7) for p, r in zip(params, ref, strict=True))
        same = same and torch.allclose(torch.tensor(ref_norms), torch.tensor(new_norms), rtol=1e-5)
        # Each timed call first restores the unclipped gradients in place (one multi-tensor copy, the
        # same for both), so that both clip real gradients every time.
        grad_buffers = [p.grad for p in params]
        clip_ms = {}
        for name, fn in (
            ("clip_gradients (ours)", clip_gradients),
            ("clip per-tensor loop (DINO's)", clip_gradients_per_tensor),
        ):

            def run(fn=fn, grad_buffers=grad_buffers, grads=grads, student=student) -> None:
                torch._foreach_copy_(grad_buffers, grads)
                fn(student, 3.0)

            clip_ms[name] = 1e3 * summarize(time_fn(run, device, warmup=1, repeats=args.repeats))["median_s"]
        for name, ms in clip_ms.items():
            rows.append(
                {
                    "student": label,
                    "piece": name + " +refill",
                    "ms": ms,
                    "x vs ours": clip_ms["clip_gradients (ours)"] / ms,
                    "same result": "yes" if same else "NO",
                }
            )

        # --- EMA teacher update (one multi-tensor lerp).
        t_params, s_params = list(teacher.parameters()), list(student.parameters())
        ms = (
            1e3
            * summarize(
                time_fn(
                    lambda t=t_params, s=s_params: ema_update(t, s, 0.996),
                    device,
                    warmup=1,
                    repeats=args.repeats,
                )
            )["median_s"]
        )
        rows.append({"student": label, "piece": "ema_update (ours)", "ms": ms, "x vs ours": 1.0})
        print(f"  done {label}", flush=True)

    print()
    print(format_table(rows, ["student", "piece", "ms", "x vs ours", "same result"]))
    print("\nms: median wall time of one call over every student parameter.")
    result = {"machine": info, "rows": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
