"""ImageNet-1k in the DINOv2 layout, its metadata ("extra") files, and a folder-based ImageNet-22k.

Layout under `root`: `labels.txt` (`class_id,class_name` per line),
`train/<cid>/<cid>_<n>.JPEG`, `val/<cid>/ILSVRC2012_val_<8 digits>.JPEG`,
`test/ILSVRC2012_test_<8 digits>.JPEG`. `ImageNet.dump_extra(root, extra)` (the logic behind
`python prepare.py`) writes, for every split folder present:

- `entries-{SPLIT}.npy`: structured array (actual_index u4, class_index u4, class_id U, class_name U),
  one row per image, sorted by class then file name; the file name is rebuilt from it.
- `class-ids-{SPLIT}.npy`, `class-names-{SPLIT}.npy` for TRAIN and VAL (TEST has no labels: its
  entries carry class_index = 2**32 - 1 and empty class id / name; its target is -1).

`class_index` is the row of the class in labels.txt, so TRAIN and VAL agree and a subset keeps the
full ImageNet label numbering. Nothing depends on the ImageNet split sizes (subsets work), unlike
upstream, which asserted the full sizes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import Image

from simdinov2.errors import MissingFileError, UserError

from .base import LabelledImageDataset
from .image_folder import IMG_EXTENSIONS, ImageFolderDataset, load_rgb_image

NO_CLASS_INDEX = np.iinfo(np.uint32).max  # class_index of TEST entries


class Split(Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"

    @property
    def dirname(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Split) -> Split:
        if isinstance(value, Split):
            return value
        try:
            return cls[str(value).upper()]
        except KeyError:
            raise UserError(f"ImageNet split must be TRAIN, VAL or TEST (got {value!r})") from None

    def image_relpath(self, actual_index: int, class_id: str) -> str:
        if self is Split.TRAIN:
            return f"train/{class_id}/{class_id}_{actual_index}.JPEG"
        if self is Split.VAL:
            return f"val/{class_id}/ILSVRC2012_val_{actual_index:08d}.JPEG"
        return f"test/ILSVRC2012_test_{actual_index:08d}.JPEG"


_FILE_PATTERNS = {
    Split.TRAIN: re.compile(r"^(?P<cid>.+)_(?P<n>\d+)\.JPEG$"),
    Split.VAL: re.compile(r"^ILSVRC2012_val_(?P<n>\d{8})\.JPEG$"),
    Split.TEST: re.compile(r"^ILSVRC2012_test_(?P<n>\d{8})\.JPEG$"),
}
_EXPECTED_NAMES = {
    Split.TRAIN: "<class_id>_<n>.JPEG",
    Split.VAL: "ILSVRC2012_val_<8 digits>.JPEG",
    Split.TEST: "ILSVRC2012_test_<8 digits>.JPEG",
}


def _prepare_hint(root: str, extra: str) -> str:
    return f"run python prepare.py --root {root} --extra {extra}"


def read_labels(root: str | os.PathLike) -> list[tuple[str, str]]:
    """Parse `root/labels.txt` into [(class_id, class_name), ...] in file order."""
    path = Path(root) / "labels.txt"
    if not path.is_file():
        raise MissingFileError(
            f"{path} not found: ImageNet root needs labels.txt with 'class_id,class_name' lines"
        )
    labels: list[tuple[str, str]] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            class_id, sep, class_name = line.partition(",")
            class_id, class_name = class_id.strip(), class_name.strip()
            if not sep or not class_id or not class_name:
                raise UserError(f"{path} line {line_number}: expected 'class_id,class_name', got {line!r}")
            if class_id in seen:
                raise UserError(f"{path} line {line_number}: class id {class_id!r} appears twice")
            seen.add(class_id)
            labels.append((class_id, class_name))
    if not labels:
        raise UserError(f"{path} is empty: expected one 'class_id,class_name' line per class")
    return labels


def _scan_split(root: Path, split: Split, class_index_of: dict[str, int]) -> list[tuple[int, int, str]]:
    """[(actual_index, class_index, class_id), ...] of one split folder, sorted by class then name."""
    split_dir = root / split.dirname
    pattern = _FILE_PATTERNS[split]
    rows: list[tuple[int, int, str]] = []

    def add(directory: Path, class_id: str) -> None:
        for name in sorted(os.listdir(directory)):
            if name.startswith(".") or not name.lower().endswith(IMG_EXTENSIONS):
                continue
            match = pattern.match(name)
            if match is None or (split is Split.TRAIN and match["cid"] != class_id):
                expected = _EXPECTED_NAMES[split].replace("<class_id>", class_id or "<class_id>")
                raise UserError(f"{directory / name}: ImageNet {split.name} files must be named {expected}")
            actual_index = int(match["n"])
            # The dataset rebuilds the path from the index: it must give this very file back.
            if Path(split.image_relpath(actual_index, class_id)).name != name:
                raise UserError(
                    f"{directory / name}: file name must be {_EXPECTED_NAMES[split]} without extra zeros"
                )
            class_index = class_index_of[class_id] if class_id else int(NO_CLASS_INDEX)
            rows.append((actual_index, class_index, class_id))

    if split is Split.TEST:
        add(split_dir, "")
        return rows
    class_dirs = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    for class_id in class_dirs:
        if class_id not in class_index_of:
            raise UserError(
                f"{split_dir / class_id}: class {class_id!r} is not listed in {root / 'labels.txt'}"
            )
        add(split_dir / class_id, class_id)
    return rows


class ImageNet(LabelledImageDataset):
    """ImageNet-1k (or any subset) read through the extra files written by `prepare.py`.

    `dataset[i] -> (transform(RGB image), target_transform(class index))`; TEST targets are -1.
    """

    Split = Split

    def __init__(
        self,
        split: str | Split = "TRAIN",
        root: str | os.PathLike = ".",
        extra: str | os.PathLike | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ) -> None:
        self.split = Split.parse(split)
        self.root = str(Path(root).expanduser())
        self.extra = str(Path(extra).expanduser()) if extra is not None else self.root
        self.transform = transform
        self.target_transform = target_transform
        if not Path(self.root).is_dir():
            raise MissingFileError(f"ImageNet root {self.root} does not exist")
        self._entries = self._load_extra(f"entries-{self.split.name}.npy")
        self._class_ids: np.ndarray | None = None
        self._class_names: np.ndarray | None = None

    def _load_extra(self, name: str) -> np.ndarray:
        path = Path(self.extra) / name
        if not path.is_file():
            raise MissingFileError(
                f"ImageNet extra file {path} not found: {_prepare_hint(self.root, self.extra)}"
            )
        return np.load(path, mmap_mode="r")

    # -- metadata -----------------------------------------------------------------------------
    def get_class_ids(self) -> np.ndarray:
        if self.split is Split.TEST:
            raise UserError("the ImageNet TEST split has no labels")
        if self._class_ids is None:
            self._class_ids = self._load_extra(f"class-ids-{self.split.name}.npy")
        return self._class_ids

    def get_class_names(self) -> np.ndarray:
        if self.split is Split.TEST:
            raise UserError("the ImageNet TEST split has no labels")
        if self._class_names is None:
            self._class_names = self._load_extra(f"class-names-{self.split.name}.npy")
        return self._class_names

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.get_class_ids()]

    def get_target(self, index: int) -> int:
        if self.split is Split.TEST:
            return -1
        return int(self._entries[index]["class_index"])

    def get_targets(self) -> np.ndarray:
        if self.split is Split.TEST:
            return np.full(len(self), -1, dtype=np.int64)
        return np.asarray(self._entries["class_index"], dtype=np.int64)

    def image_path(self, index: int) -> str:
        entry = self._entries[index]
        return os.path.join(
            self.root, self.split.image_relpath(int(entry["actual_index"]), str(entry["class_id"]))
        )

    # -- Dataset --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def get_image(self, index: int) -> Image.Image:
        path = self.image_path(index)
        try:
            return load_rgb_image(path)
        except FileNotFoundError as e:
            raise MissingFileError(
                f"ImageNet image {path} is listed in {self.extra} but missing: "
                f"{_prepare_hint(self.root, self.extra)} again"
            ) from e

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split.name}, root={self.root!r}, {len(self)} images)"

    # -- prepare.py --------------------------------------------------------------------------------
    @staticmethod
    def dump_extra(root: str | os.PathLike, extra: str | os.PathLike) -> dict[str, int]:
        """Write the extra files of every split folder present under `root` into `extra`.

        Returns {split name: number of images}. Raises FileNotFoundError / ValueError with one
        line naming the problem (missing root, missing or malformed labels.txt, misnamed files).
        """
        root = Path(root).expanduser()
        extra = Path(extra).expanduser()
        if not root.is_dir():
            raise MissingFileError(f"ImageNet root {root} does not exist")
        labels = read_labels(root)
        class_index_of = {class_id: i for i, (class_id, _) in enumerate(labels)}
        splits = [s for s in Split if (root / s.dirname).is_dir()]
        if not splits:
            raise MissingFileError(f"ImageNet root {root} has none of the folders train/, val/, test/")
        id_width = max(1, max(len(cid) for cid, _ in labels))
        name_width = max(1, max(len(name) for _, name in labels))
        dtype = np.dtype(
            [
                ("actual_index", "<u4"),
                ("class_index", "<u4"),
                ("class_id", f"U{id_width}"),
                ("class_name", f"U{name_width}"),
            ]
        )
        extra.mkdir(parents=True, exist_ok=True)
        counts: dict[str, int] = {}
        for split in splits:
            rows = _scan_split(root, split, class_index_of)
            if not rows:
                raise UserError(f"{root / split.dirname} holds no images named {_EXPECTED_NAMES[split]}")
            entries = np.empty(len(rows), dtype=dtype)
            for i, (actual_index, class_index, class_id) in enumerate(rows):
                class_name = labels[class_index][1] if class_id else ""
                entries[i] = (actual_index, class_index, class_id, class_name)
            _save_atomic(extra / f"entries-{split.name}.npy", entries)
            if split is not Split.TEST:
                _save_atomic(extra / f"class-ids-{split.name}.npy", np.array([c for c, _ in labels]))
                _save_atomic(extra / f"class-names-{split.name}.npy", np.array([n for _, n in labels]))
            counts[split.name] = len(rows)
        return counts


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary file so a running reader never sees a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


class ImageNet22k(ImageFolderDataset):
    """ImageNet-22k as a class-per-folder tree (`root/<wnid>/<image>`).

    Upstream reads 22k from tar shards; a folder tree keeps this small and covers the same use.
    `extra` is accepted for string compatibility (`ImageNet22k:root=R:extra=E`) and not needed.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        extra: str | os.PathLike | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ) -> None:
        super().__init__(root, transform=transform, target_transform=target_transform)
        self.extra = extra
