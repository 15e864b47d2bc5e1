#!/usr/bin/env python
"""Activation checkpointing (`student.gradient_checkpointing`): memory saved and time paid per training
forward + backward of the student ViT.

Owns the evidence for the key's row in docs/DESIGN.md. For each setting the same ViT (same weights) runs one
forward + backward on the 2 global and the local crops of a batch, without and with checkpointing:
- `activations MB`: bytes of the tensors autograd keeps for the backward, counted with
  `torch.autograd.graph.saved_tensors_hooks` (any device; this is the memory checkpointing trades);
- `peak MB`: CUDA's peak allocated memory during the step (CUDA only; includes weights and gradients);
- `ms`: median time of the step.
The gradients of both runs are compared (they must be identical: the recomputation replays the RNG).

    python -m benchmarks.gradient_checkpointing                     # vit_small/16, 224 + 96 px, batch 8 (CPU)
    python -m benchmarks.gradient_checkpointing --arch vit_large --batch 32 --device cuda --dtypes bf16
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks.common import (
    DTYPES,
    format_table,
    machine_info,
    parse_dtypes,
    print_header,
    resolve_device,
    set_threads,
    summarize,
    synchronize,
    time_fn,
    write_json,
)
from simdinov2.models import build_vit


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="vit_small")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--local-crops", type=int, default=10)
    p.add_argument(
        "--batch", type=int, default=8, help="images per step (each gives 2 global + n local crops)"
    )
    p.add_argument("--dtypes", nargs="+", default=["fp32"], help="fp32 and/or bf16 / fp16 (autocast)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None)
    return p


def _step(model: torch.nn.Module, crops: list[torch.Tensor], dtype: str, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32"):
        outputs = model(crops, is_training=True)
    loss = sum(
        out["x_norm_clstoken"].float().square().mean() + out["x_norm_patchtokens"].float().mean()
        for out in outputs
    )
    loss.backward()


def saved_activation_bytes(
    model: torch.nn.Module, crops: list[torch.Tensor], dtype: str, device: torch.device
) -> int:
    """Bytes autograd holds for the backward at the end of the forward (what checkpointing reduces)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Parameters are saved by reference (no extra memory); count each storage once.
        if not isinstance(t, torch.nn.Parameter):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(model, crops, dtype, device)
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    info = machine_info(device)
    print_header("activation checkpointing: memory and time of one student forward + backward", info)
    torch.manual_seed(0)
    model = (
        build_vit(
            args.arch, args.patch_size, img_size=args.global_size, drop_path_rate=0.1, drop_path_uniform=True
        )
        .to(device)
        .train()
    )
    crops = [
        torch.randn(2 * args.batch, 3, args.global_size, args.global_size, device=device),
        torch.randn(args.local_crops * args.batch, 3, args.local_size, args.local_size, device=device),
    ]
    rows: list[dict[str, Any]] = []
    for dtype in parse_dtypes(args.dtypes):
        grads: dict[bool, list[torch.Tensor]] = {}
        for checkpointing in (False, True):
            model.gradient_checkpointing = checkpointing
            activations = saved_activation_bytes(model, crops, dtype, device)
            peak = float("nan")
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            torch.manual_seed(1)
            _step(model, crops, dtype, device)
            synchronize(device)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**20
            grads[checkpointing] = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
            model.zero_grad(set_to_none=True)

            def step(dtype: str = dtype) -> None:
                _step(model, crops, dtype, device)
                model.zero_grad(set_to_none=True)

            ms = 1e3 * summarize(time_fn(step, device, warmup=1, repeats=args.repeats))["median_s"]
            rows.append(
                {
                    "dtype": dtype,
                    "checkpointing": checkpointing,
                    "activations MB": activations / 2**20,
                    "peak MB": peak,
                    "ms": ms,
                }
            )
            print(
                f"  {dtype} checkpointing={checkpointing}: {activations / 2**20:.0f} MB saved, {ms:.0f} ms",
                flush=True,
            )
        same = all(torch.equal(a, b) for a, b in zip(grads[False], grads[True], strict=True))
        off, on = rows[-2], rows[-1]
        off["grads identical"] = on["grads identical"] = same
        off["activations / off"], on["activations / off"] = 1.0, on["activations MB"] / off["activations MB"]
        off["time / off"], on["time / off"] = 1.0, on["ms"] / off["ms"]
    print()
    print(format_table(rows))
    print(
        f"\n{args.arch}/{args.patch_size}, batch {args.batch}: 2 x {args.global_size} px + {args.local_crops} x "
        f"{args.local_size} px crops per image; ms: median of {args.repeats} steps."
    )
    result = {"machine": info, "settings": vars(args), "rows": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
