#!/usr/bin/env python
"""Multi-crop augmentation throughput per data-loader worker: our `DataAugmentationDINO` against lightly's
`DINOTransform` at the same crop settings.

Owns the evidence for the data side of the training step: how many source images one worker process
(one thread, as in a DataLoader worker) turns into 2 global + n local crops per second, on
- real Fashion-MNIST (28 px grayscale, read by our `FashionMNIST` dataset; 2×28 + 8×12 px crops), and
- 224-px JPEGs cut from scikit-image's sample photographs, decoded per sample as an ImageFolder worker
  does (2×224 + 10×96 px crops, the paper's setting).

Both transforms get the same crop sizes, scales and counts, flip, colour jitter (0.4, 0.4, 0.2, 0.1)
p=0.8, grayscale p=0.2, blur p=(1.0, 0.1, 0.5), solarize p=0.2 on the second global crop and ImageNet
normalisation. What still differs is each library's own choice: lightly resizes bilinearly and blurs
with PIL's radius-only Gaussian, ours resizes bicubically (DINO) with an explicit kernel size.

    python -m benchmarks.augment
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import format_table, machine_info, print_header, write_json

PEER = "lightly DINOTransform"
_SAMPLE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "retina",
    "hubble_deep_field",
)


def write_jpegs(folder: Path, n: int, size: int = 224, seed: int = 0) -> list[Path]:
    """`n` size×size JPEGs: random square crops of scikit-image's sample photographs, resized."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, name)() for name in _SAMPLE_PHOTOS]
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        img = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BICUBIC)
        path = folder / f"img_{i:04d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def build_transforms(
    global_size: int, local_size: int, n_local: int, ours_only: bool = False
) -> dict[str, Callable[[Any], Any] | str]:
    """Ours and (when importable) lightly's multi-crop transform at the same settings."""
    from simdinov2.data.augmentations import DataAugmentationDINO

    out: dict[str, Callable[[Any], Any] | str] = {
        "ours DataAugmentationDINO": DataAugmentationDINO(
            (0.4, 1.0),
            (0.05, 0.4),
            n_local,
            global_crops_size=global_size,
            local_crops_size=local_size,
            flat=True,
        )
    }
    if ours_only:
        out[PEER] = "not measured (--ours-only)"
        return out
    try:
        from lightly.transforms import DINOTransform
    except Exception as exc:
        out[PEER] = f"not installed ({type(exc).__name__}: pip install -r benchmarks/requirements.txt)"
        return out
    out[PEER] = DINOTransform(
        global_crop_size=global_size,
        global_crop_scale=(0.4, 1.0),
        local_crop_size=local_size,
        local_crop_scale=(0.05, 0.4),
        n_local_views=n_local,
        hf_prob=0.5,
        cj_prob=0.8,
        cj_strength=0.5,
        cj_bright=0.8,
        cj_contrast=0.8,
        cj_sat=0.4,
        cj_hue=0.2,
        random_gray_scale=0.2,
        gaussian_blur=(1.0, 0.1, 0.5),
        sigmas=(0.1, 2.0),
        solarization_prob=0.2,
    )
    return out


def measure(
    transform: Callable[[Any], Any], load: Callable[[int], Any], n_images: int, min_time: float
) -> dict[str, Any]:
    """Images per second of `transform(load(i))` in this process (one thread), after 5 warm-up images."""
    for i in range(5):
        transform(load(i))
    done, start = 0, time.perf_counter()
    crops: Any = None
    while done < n_images or time.perf_counter() - start < min_time:
        crops = transform(load(done))
        done += 1
    elapsed = time.perf_counter() - start
    shapes = sorted({tuple(c.shape) for c in crops}) if isinstance(crops, (list, tuple)) else None
    return {"img/s": done / elapsed, "images": done, "seconds": elapsed, "crop shapes": shapes}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=300, help="minimum source images per measurement")
    p.add_argument("--min-time", type=float, default=8.0, help="minimum seconds per measurement")
    p.add_argument(
        "--fmnist-root", default=None, help="folder with the Fashion-MNIST IDX .gz files (default: ours)"
    )
    p.add_argument(
        "--fmnist-local", type=int, default=8, help="local crops on Fashion-MNIST (2x28 + n x 12 px)"
    )
    p.add_argument(
        "--jpeg-local", type=int, default=10, help="local crops on 224-px JPEGs (2x224 + n x 96 px)"
    )
    p.add_argument("--jpegs", type=int, default=64, help="distinct JPEG files written and cycled through")
    p.add_argument("--quick", action="store_true", help="smoke setting: 10 images, no minimum time")
    p.add_argument(
        "--ours-only",
        action="store_true",
        help="only our transform on the 224-px JPEGs (no peer, no Fashion-MNIST)",
    )
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.images, args.min_time, args.jpegs = 10, 0.0, 8
    torch.set_num_threads(1)  # a DataLoader worker runs its transform single-threaded
    info = machine_info()
    info["threads"] = 1
    print_header("augment: multi-crop images/s per worker, ours vs lightly", info)

    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}

    # Real Fashion-MNIST through our dataset class (PIL "L" 28x28 images).
    suites = []
    if args.ours_only:
        skipped["Fashion-MNIST"] = "not measured (--ours-only)"
    else:
        try:
            from simdinov2.data import FashionMNIST

            kwargs = {"root": args.fmnist_root} if args.fmnist_root else {}
            fmnist = FashionMNIST("TRAIN", **kwargs)
            n_fmnist = len(fmnist)
            suites = [
                ("Fashion-MNIST 28px", lambda i: fmnist.get_image(i % n_fmnist), 28, 12, args.fmnist_local)
            ]
        except (FileNotFoundError, ImportError) as exc:
            skipped["Fashion-MNIST"] = str(exc)
            print(f"  skipping Fashion-MNIST: {exc}")

    with tempfile.TemporaryDirectory(prefix="augment_bench_") as tmp:
        paths = write_jpegs(Path(tmp), args.jpegs)
        # Decode per sample (the worker's job too): open + RGB, as an ImageFolder loader does.
        suites.append(
            (
                "224px JPEG",
                lambda i: Image.open(paths[i % len(paths)]).convert("RGB"),
                224,
                96,
                args.jpeg_local,
            )
        )
        for suite, load, gsize, lsize, n_local in suites:
            transforms = build_transforms(gsize, lsize, n_local, args.ours_only)
            results = {}
            for name, transform in transforms.items():
                if isinstance(transform, str):
                    skipped[name] = transform
                    continue
                results[name] = measure(transform, load, args.images, args.min_time)
                print(f"  {suite:<18} {name:<26} {results[name]['img/s']:8.1f} img/s", flush=True)
            peer = results.get(PEER)
            for name, res in results.items():
                rows.append(
                    {
                        "data": suite,
                        "crops": f"2x{gsize} + {n_local}x{lsize}",
                        "method": name,
                        "img/s": res["img/s"],
                        "crops/s": res["img/s"] * (2 + n_local),
                        f"x vs {PEER}": res["img/s"] / peer["img/s"] if peer else float("nan"),
                        "images": res["images"],
                    }
                )

    print()
    print(format_table(rows))
    print(
        "\nimg/s: source images turned into all their crops per second by one single-threaded worker process."
    )
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    result = {"machine": info, "rows": rows, "skipped": skipped, "settings": vars(args)}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
