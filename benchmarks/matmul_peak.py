"""The card's measured bf16 matmul peak: the denominator of every GPU MFU in `benchmarks/gpu_check.py`.

Square bf16 matmuls of a few sizes, each called until `--min-time` seconds were spent on it; the best
rate counts (`benchmarks.common.measure_matmul_peak`). On an H200 a datasheet says about 990 TFLOP/s
dense; what PyTorch reaches on random data is lower, and MFU is measured against that.

    python -m benchmarks.matmul_peak --json peak.json
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import DTYPES, machine_info, measure_matmul_peak, resolve_device, write_json


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="square sizes (default: 4096 8192 on CUDA)"
    )
    p.add_argument("--min-time", type=float, default=1.0, help="seconds spent on each size")
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    device = resolve_device(args.device)
    flops = measure_matmul_peak(DTYPES[args.dtype], device, sizes=args.sizes, min_time=args.min_time)
    result = {
        "machine": machine_info(device),
        "dtype": args.dtype,
        "peak_tflops": flops / 1e12,
        "sizes": args.sizes,
    }
    print(f"{args.dtype} matmul peak on {result['machine'].get('gpu', 'cpu')}: {flops / 1e12:.4g} TFLOP/s")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
