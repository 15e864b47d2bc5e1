#!/usr/bin/env python
"""Listing a folder of a million training images: the unlabeled dataset's scan and its listing cache.

Generates `--files` empty `.jpg` files (plus one non-image file per folder) in nested folders
(`ROOT/group_XXX/folder_YYY/img_ZZZZ.jpg`, `--per_folder` files each) under `--root` (default in /tmp;
created once, reused), then times, each in a fresh process (no Python-level state shared):

- `imagefolder walk`: the class-per-folder dataset's `os.walk` scan (what the trainers read before);
- `scan, no cache`: `list_folder(use_cache=False)`, the thread-pool scan;
- `scan + write cache`: the first call of a run (scan, then the cache file written);
- `cached`: every later call (cache read, each directory's modification time checked).

The OS dentry cache is warm in every row (the first row after generation is not a cold-disk read:
dropping the kernel's caches would need root on a shared machine); the listing cache is what the
`cached` row adds on top.

    python -m benchmarks.listing                      # 1,000,000 files
    python -m benchmarks.listing --files 20000 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import format_table, machine_info, print_header, write_json

RESULTS = Path(__file__).resolve().parent / "results"

_MEASURE = r"""
import json, os, sys, time
mode, root, cache = sys.argv[1], sys.argv[2], sys.argv[3]
os.environ["SIMDINO_CACHE_DIR"] = cache
from simdinov2.data.datasets.image_folder import ImageFolderDataset
from simdinov2.data.datasets.unlabeled import list_folder
start = time.perf_counter()
if mode == "imagefolder walk":
    n = len(ImageFolderDataset(root).samples)
else:
    n = len(list_folder(root, use_cache=mode != "scan, no cache").paths)
print(json.dumps({"seconds": time.perf_counter() - start, "images": n}))
"""


def generate(root: Path, files: int, per_folder: int, folders_per_group: int = 10) -> None:
    """Empty .jpg files in root/group_XXX/folder_YYY/ (and a README.txt per folder), once."""
    stamp = root / f".generated-{files}-{per_folder}"
    if stamp.is_file():
        return
    start = time.perf_counter()
    for folder_index in range(-(-files // per_folder)):
        folder = (
            root
            / f"group_{folder_index // folders_per_group:03d}"
            / f"folder_{folder_index % folders_per_group:03d}"
        )
        folder.mkdir(parents=True, exist_ok=True)
        first = folder_index * per_folder
        for i in range(first, min(first + per_folder, files)):
            open(folder / f"img_{i:07d}.jpg", "wb").close()
        (folder / "README.txt").write_text("not an image")
    stamp.write_text("")
    print(f"generated {files} files under {root} in {time.perf_counter() - start:.1f} s")


def measure(mode: str, root: Path, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, mode, str(root), str(cache)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--per_folder", type=int, default=1000)
    parser.add_argument(
        "--root", default=None, help="where to generate the files (default /tmp/listing_bench_<files>)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke setting: results are not written to results/"
    )
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/listing.json)")
    args = parser.parse_args(argv)
    root = Path(args.root or f"/tmp/listing_bench_{args.files}")
    generate(root, args.files, args.per_folder)
    cache = root.parent / f"{root.name}_cache"
    for stale in cache.glob("listings/*"):
        stale.unlink()
    info = machine_info()
    print_header(f"listing {args.files} files in {-(-args.files // args.per_folder)} folders", info)
    rows = []
    for mode in ("imagefolder walk", "scan, no cache", "scan + write cache", "cached"):
        result = measure(mode, root, cache)
        rows.append(
            {
                "method": mode,
                "images": result["images"],
                "seconds": result["seconds"],
                "us per file": 1e6 * result["seconds"] / max(result["images"], 1),
            }
        )
    table = format_table(rows)
    print(table)
    payload = {"machine": info, "files": args.files, "per_folder": args.per_folder, "rows": rows}
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "listing.txt").write_text(table + "\n")
        write_json(args.out or str(RESULTS / "listing.json"), payload)
    elif args.out:
        write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
