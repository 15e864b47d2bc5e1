#!/usr/bin/env python
"""Attention kernel choice: forward + backward time of the ViT's `Attention` layer with torch's fused
`scaled_dot_product_attention` against the explicit softmax(Q Kᵀ / sqrt(d)) V, per dtype and token count.

Owns the evidence behind `simdinov2/layers/attention.py`'s rule (explicit path on the CPU in bf16/fp16 for
short sequences, SDPA everywhere else). Both paths run the real layer (qkv and output projections
included); only the kernel rule is switched (`_use_explicit_attention` patched to always / never). Each row also reports
how far the explicit path's output and input gradient are from SDPA's (relative L2).

    python -m benchmarks.attention     # vit_tiny width (192, 3 heads), 10 / 50 / 197 tokens, batch 128
"""

from __future__ import annotations

import argparse
from typing import Any
from unittest import mock

import torch

from benchmarks.common import (
    format_table,
    machine_info,
    parse_dtypes,
    print_header,
    resolve_device,
    set_threads,
    summarize,
    time_fn,
    write_json,
)
from simdinov2.layers import attention as attention_module

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dim", type=int, default=192, help="embedding width (vit_tiny: 192)")
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch", type=int, default=128, help="sequences per call (2 global crops x 64 images)")
    p.add_argument(
        "--tokens",
        type=int,
        nargs="+",
        default=[10, 50, 197],
        help="sequence lengths: 12 px and 28 px crops at patch 4 (+ CLS), 224 px at patch 16",
    )
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], help="fp32 and/or bf16 / fp16 (autocast)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None)
    return p


def _forward_backward(layer: torch.nn.Module, x: torch.Tensor, dtype: str, device: torch.device):
    x = x.detach().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    with torch.autocast(
        device.type, dtype=AUTOCAST_DTYPES.get(dtype, torch.float32), enabled=dtype != "fp32"
    ):
        out = layer(x)
    out.float().square().mean().backward()
    return out.detach().float(), x.grad


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    dtypes = parse_dtypes(args.dtypes)
    info = machine_info(device)
    print_header("attention: fused SDPA vs explicit softmax, forward + backward of one Attention layer", info)
    torch.manual_seed(0)
    layer = attention_module.Attention(args.dim, args.heads, qkv_bias=True).to(device)
    shipped_rule = attention_module._use_explicit_attention
    rows: list[dict[str, Any]] = []
    for dtype in dtypes:
        for tokens in args.tokens:
            x = torch.randn(args.batch, tokens, args.dim, device=device)
            ms, outputs = {}, {}
            for kernel in ("sdpa", "explicit"):
                rule = (lambda q: True) if kernel == "explicit" else (lambda q: False)
                with mock.patch.object(attention_module, "_use_explicit_attention", rule):
                    outputs[kernel] = _forward_backward(layer, x, dtype, device)

                    def step(x: torch.Tensor = x, dtype: str = dtype) -> None:
                        _forward_backward(layer, x, dtype, device)

                    times = time_fn(step, device, warmup=1, repeats=args.repeats)
                ms[kernel] = 1e3 * summarize(times)["median_s"]
            probe = torch.empty(
                1, 1, tokens, 1, device=device, dtype=AUTOCAST_DTYPES.get(dtype, torch.float32)
            )
            shipped = "explicit" if shipped_rule(probe) else "sdpa"
            out_err, grad_err = (
                float((e - s).norm() / s.norm())
                for e, s in zip(outputs["explicit"], outputs["sdpa"], strict=True)
            )
            rows.append(
                {
                    "dtype": dtype,
                    "tokens": tokens,
                    "sdpa ms": ms["sdpa"],
                    "explicit ms": ms["explicit"],
                    "x explicit vs sdpa": ms["sdpa"] / ms["explicit"],
                    "shipped": shipped,
                    "x shipped vs sdpa": ms["sdpa"] / ms[shipped],
                    "out rel err": out_err,
                    "grad rel err": grad_err,
                }
            )
            print(
                f"  {dtype} {tokens:4d} tokens: sdpa {ms['sdpa']:.1f} ms, explicit {ms['explicit']:.1f} ms",
                flush=True,
            )
    print()
    print(format_table(rows))
    print(
        f"\nms: median of {args.repeats} forward + backward calls on [{args.batch}, tokens, {args.dim}] inputs; "
        "rel err: explicit vs SDPA, relative L2 of the layer output and of the input gradient."
    )
    result = {"machine": info, "settings": vars(args), "rows": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
