"""Fashion-MNIST read straight from its IDX `.gz` files (Debian package `dataset-fashion-mnist`).

The project's out-of-the-box real data (no internet download): 60k train / 10k test grayscale
28x28 images, 10 classes. `FashionMNIST` parses the IDX format with numpy (header: two zero bytes,
a dtype code, the number of dimensions, then one big-endian uint32 per dimension) and returns
`(PIL image of mode "L", int label)`; the multi-crop / eval transforms turn it into RGB.
`export_fashion_mnist_imagefolder` writes the same images as a class-per-folder PNG tree for code
that wants an ImageFolder (v1 `--data_path`, tests).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from simdinov2.errors import MissingFileError, UserError

from .base import LabelledImageDataset

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_FILES = {
    "TRAIN": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "TEST": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_STAMP = ".complete"  # written last by export_fashion_mnist_imagefolder
_SPLIT_ALIASES = {"TRAIN": "TRAIN", "TEST": "TEST", "VAL": "TEST"}

# IDX dtype codes -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of one (uncompressed) IDX file into an array of its declared shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UserError(f"{source} is not an IDX file (bad magic number {data[:4].hex()})")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise UserError(f"{source}: IDX header truncated")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header_size != expected:
        raise UserError(
            f"{source}: IDX payload is {len(data) - header_size} bytes, header {shape} needs {expected}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed when its name ends in .gz."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    return parse_idx(data, source=str(path))


def fashion_mnist_paths(
    split: str, root: str | os.PathLike = DEFAULT_FASHION_MNIST_ROOT
) -> tuple[Path, Path]:
    key = _SPLIT_ALIASES.get(str(split).upper())
    if key is None:
        raise UserError(f"Fashion-MNIST split must be TRAIN or TEST (VAL = TEST), got {split!r}")
    images, labels = _FILES[key]
    return Path(root) / images, Path(root) / labels


@lru_cache(maxsize=4)
def _load_split(images_path: str, labels_path: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"Fashion-MNIST files disagree: images {images.shape} from {images_path}, labels "
            f"{labels.shape} from {labels_path}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise UserError(f"{labels_path}: labels outside 0..9")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


class FashionMNIST(LabelledImageDataset):
    """Fashion-MNIST split `TRAIN` (60k) or `TEST` (10k; `VAL` is an alias).

    `dataset[i] -> (transform(PIL "L" 28x28), target_transform(label))`; `.images` is the uint8
    array [n, 28, 28] and `.targets` the int64 labels [n] (read-only, shared between instances).
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        split: str = "TRAIN",
        root: str | os.PathLike = DEFAULT_FASHION_MNIST_ROOT,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ) -> None:
        self.split = _SPLIT_ALIASES.get(str(split).upper(), str(split))
        self.root = str(root)
        self.transform = transform
        self.target_transform = target_transform
        images_path, labels_path = fashion_mnist_paths(split, root)
        for path in (images_path, labels_path):
            if not path.is_file():
                raise MissingFileError(
                    f"Fashion-MNIST file {path} not found: run '{INSTALL_HINT}' "
                    f"(or pass root= a folder holding the IDX .gz files)"
                )
        mtime = max(images_path.stat().st_mtime, labels_path.stat().st_mtime)
        self.images, self.targets = _load_split(str(images_path), str(labels_path), mtime)

    def __len__(self) -> int:
        return len(self.targets)

    def get_targets(self) -> np.ndarray:
        return np.asarray(self.targets)

    def get_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def get_target(self, index: int) -> int:
        return int(self.targets[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split}, root={self.root!r}, {len(self)} images)"


def class_folder_name(label: int) -> str:
    """Folder name of a class, prefixed by its label so sorted folder order = label order."""
    name = FASHION_MNIST_CLASSES[label].replace("/", "_").replace(" ", "_")
    return f"{label}_{name}"


def export_fashion_mnist_imagefolder(
    out_dir: str | os.PathLike,
    split: str = "TRAIN",
    limit_per_class: int | None = None,
    root: str | os.PathLike = DEFAULT_FASHION_MNIST_ROOT,
    image_size: int | None = None,
    rgb: bool = False,
    classes: list[int] | None = None,
) -> Path:
    """Write a Fashion-MNIST split as PNGs in `out_dir/{train,val}/<label>_<class>/<i>.png`.

    TRAIN goes to `train/`, TEST (or VAL) to `val/`; `limit_per_class` keeps the first images of each
    class; `image_size` resizes (bicubic), `rgb` saves 3-channel PNGs; `classes` keeps only those
    labels. Returns the split folder. A finished export carries a `.complete` file and is reused when
    called again with the same arguments; one with other arguments is replaced.
    """
    dataset = FashionMNIST(split=split, root=root)
    out_dir = Path(out_dir)
    split_dir = out_dir / ("train" if dataset.split == "TRAIN" else "val")
    signature = f"limit={limit_per_class} size={image_size} rgb={rgb} classes={classes}"
    if _export_matches(split_dir, signature):
        return split_dir
    # Build in a private folder and move it into place, so a concurrent reader (another rank)
    # never sees a half-written tree.
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{split_dir.name}-", dir=out_dir))
    try:
        labels = np.asarray(dataset.targets)
        keep = range(len(FASHION_MNIST_CLASSES)) if classes is None else classes
        for label in keep:
            indices = np.flatnonzero(labels == label)
            if limit_per_class is not None:
                indices = indices[:limit_per_class]
            class_dir = staging / class_folder_name(label)
            class_dir.mkdir()
            for index in indices:
                image = dataset.get_image(int(index))
                if image_size is not None and image_size != image.width:
                    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
                if rgb:
                    image = image.convert("RGB")
                image.save(class_dir / f"{int(index)}.png")
        (staging / _STAMP).write_text(signature)
        if _export_matches(split_dir, signature):  # another process finished first
            return split_dir
        if split_dir.exists():
            shutil.rmtree(split_dir)  # an export with other arguments
        try:
            os.replace(staging, split_dir)
        except OSError:
            if not _export_matches(split_dir, signature):  # lost a race to an identical export: fine
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return split_dir


def _export_matches(split_dir: Path, signature: str) -> bool:
    stamp = split_dir / _STAMP
    return stamp.is_file() and stamp.read_text() == signature
