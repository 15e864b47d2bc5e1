"""Shared pytest set-up: small thread counts, the `gpu` auto-skip and session-wide tiny datasets.

Fixtures (session-scoped, built once, read-only for tests: copy before modifying; `one_torch_thread` is
module-scoped):
- `tiny_imagefolder`: Path with `train/` (3 classes x 40) and `val/` (3 x 10) folders of 32x32 RGB
  PNGs, real Fashion-MNIST images when the Debian package is installed, synthetic class-dependent
  patterns otherwise (`tiny_imagefolder_is_real` says which).
- `mini_imagenet`: Path to a miniature ImageNet tree (labels.txt, train/val/test JPEGs, 3 classes)
  in the DINOv2 layout, ready for `prepare.py` (`MINI_IMAGENET_COUNTS` gives its split sizes).
- `fashion_mnist_root`: the Debian package's folder, or the test is skipped when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FASHION_MNIST_ROOT = Path(os.environ.get("FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
TINY_CLASSES = 3
TINY_TRAIN_PER_CLASS = 40
TINY_VAL_PER_CLASS = 10
TINY_SIZE = 32

MINI_IMAGENET_LABELS = [
    ("n01440764", "tench, Tinca tinca"),
    ("n01443537", "goldfish, Carassius auratus"),
    ("n01484850", "great white shark"),
]
MINI_TRAIN_PER_CLASS = 4
MINI_VAL_PER_CLASS = 2
MINI_TEST = 3
MINI_IMAGENET_COUNTS = {
    "TRAIN": MINI_TRAIN_PER_CLASS * len(MINI_IMAGENET_LABELS),
    "VAL": MINI_VAL_PER_CLASS * len(MINI_IMAGENET_LABELS),
    "TEST": MINI_TEST,
}


def fashion_mnist_available(root: Path = FASHION_MNIST_ROOT) -> bool:
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    return all((root / name).is_file() for name in names)


def pytest_configure(config: pytest.Config) -> None:
    # 2 shared cores: keep each test process from spawning a thread per core on its own.
    torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def private_job_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """submitit's job folders (pickles, logs) of the launchers under test: a private folder of the
    session, not ~/.simdino/jobs."""
    root = tmp_path_factory.mktemp("jobs")
    root.chmod(0o700)
    previous = os.environ.get("SIMDINO_JOB_FOLDER")
    os.environ["SIMDINO_JOB_FOLDER"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("SIMDINO_JOB_FOLDER", None)
    else:
        os.environ["SIMDINO_JOB_FOLDER"] = previous


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: a folder named gpu matches
            item.add_marker(skip_gpu)


def _synthetic_pattern(label: int, index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A class-dependent RGB pattern: stripes (0), vertical stripes (1), checkerboard (2), ..."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = 4 + index % 3
    patterns = [
        (yy // period) % 2,
        (xx // period) % 2,
        ((yy // period) + (xx // period)) % 2,
        ((yy + xx) // period) % 2,
    ]
    base = patterns[label % len(patterns)].astype(np.float32)
    color = np.array([(label * 80) % 256, 255 - (label * 60) % 256, 128], dtype=np.float32) / 255.0
    image = base[:, :, None] * color[None, None, :] * 200 + 30 + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_synthetic_imagefolder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", TINY_TRAIN_PER_CLASS), ("val", TINY_VAL_PER_CLASS)):
        for label in range(TINY_CLASSES):
            class_dir = root / split / f"{label}_pattern"
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(_synthetic_pattern(label, i, TINY_SIZE, rng)).save(class_dir / f"{i}.png")


@pytest.fixture(scope="session")
def tiny_imagefolder_is_real() -> bool:
    return fashion_mnist_available()


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory: pytest.TempPathFactory, tiny_imagefolder_is_real: bool) -> Path:
    root = tmp_path_factory.mktemp("tiny_imagefolder")
    if tiny_imagefolder_is_real:
        from simdinov2.data.datasets import export_fashion_mnist_imagefolder

        common = dict(
            root=FASHION_MNIST_ROOT, image_size=TINY_SIZE, rgb=True, classes=list(range(TINY_CLASSES))
        )
        export_fashion_mnist_imagefolder(root, "TRAIN", limit_per_class=TINY_TRAIN_PER_CLASS, **common)
        export_fashion_mnist_imagefolder(root, "TEST", limit_per_class=TINY_VAL_PER_CLASS, **common)
    else:
        _write_synthetic_imagefolder(root)
    return root


def _write_jpeg(path: Path, label: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = 40 + 8 * label, 48
    image = np.full((height, width, 3), 40 + 70 * label, dtype=np.float32) + rng.normal(
        0, 20, (height, width, 3)
    )
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def write_mini_imagenet(root: Path) -> Path:
    """Write a miniature ImageNet tree (3 classes) under `root` and return it."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("".join(f"{cid},{name}\n" for cid, name in MINI_IMAGENET_LABELS))
    val_number = 1
    for label, (cid, _) in enumerate(MINI_IMAGENET_LABELS):
        for n in range(MINI_TRAIN_PER_CLASS):
            _write_jpeg(root / "train" / cid / f"{cid}_{100 + 7 * n}.JPEG", label, rng)
        for _ in range(MINI_VAL_PER_CLASS):
            _write_jpeg(root / "val" / cid / f"ILSVRC2012_val_{val_number:08d}.JPEG", label, rng)
            val_number += 1
    for n in range(1, MINI_TEST + 1):
        _write_jpeg(root / "test" / f"ILSVRC2012_test_{n:08d}.JPEG", n % 3, rng)
    return root


@pytest.fixture(scope="session")
def mini_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mini_imagenet(tmp_path_factory.mktemp("mini_imagenet") / "imagenet")


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    if not fashion_mnist_available():
        pytest.skip(
            f"Fashion-MNIST not installed in {FASHION_MNIST_ROOT} (sudo apt-get install dataset-fashion-mnist)"
        )
    return FASHION_MNIST_ROOT


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process training on shared cores: one intra-op thread is faster than several fighting for them
    (use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
