"""Training images without labels: a folder (class sub-folders or not, nested or flat) or a `.txt` list.

Self-supervised training needs no classes, so both trainers read their data through `training_dataset`:

- a folder: every image below it, at any depth (`root/x.jpg`, `root/<class>/x.jpg`, `root/a/b/c/x.jpg`),
  in the order of a sorted top-down walk (a class-per-folder tree gives ImageFolder's order);
- a `.txt` file: one image path a line, relative to the list's folder (absolute paths allowed; blank
  lines and `#` comments ignored);
- anything else: a dataset string of `simdinov2.data.make_dataset` (`FashionMNIST:split=TRAIN`, ...).

Files that are not images (by extension) are skipped and counted in one log line. An image that cannot
be decoded stops the run with one line naming it (`load_rgb_image`), as in every dataset here.

A million-file folder is listed in a few seconds: directories are read by a thread pool (the syscalls
release the GIL, which matters on network file systems), and the listing is cached (like `prepare.py`'s
metadata, but written on the first run by itself) under `$SIMDINO_CACHE_DIR` (default
`~/.cache/simdinov2`)/listings/. The cache stores each directory's modification time; a directory that
gained, lost or renamed an entry changes its time, and the folder is scanned again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from simdinov2.errors import MissingFileError, UserError
from simdinov2.io.atomic import atomic_write_text

from .base import LabelledImageDataset
from .image_folder import IMG_EXTENSIONS, load_rgb_image

logger = logging.getLogger("simdinov2")

LISTING_VERSION = 1
NO_LABEL = -1  # target of every image: training ignores it, evaluations refuse such datasets
SCAN_THREADS = 16


@dataclass
class ImageListing:
    """Image paths (absolute) in training order, and how many listed files were not images."""

    paths: list[str]
    skipped: int
    skipped_example: str = ""
    from_cache: bool = False


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _read_dir(path: str) -> tuple[str, int, list[str], list[str], list[str]]:
    """(path, mtime_ns, image names, other file names, sub-folder names) of one directory, hidden ones left out."""
    images: list[str] = []
    others: list[str] = []
    subdirs: list[str] = []
    mtime = os.stat(path).st_mtime_ns
    with os.scandir(path) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                subdirs.append(entry.name)
            elif _is_image(entry.name):
                images.append(entry.name)
            else:
                others.append(entry.name)
    return path, mtime, sorted(images), others, sorted(subdirs)


def scan_folder(root: str, threads: int = SCAN_THREADS) -> tuple[list[str], dict[str, int], int, str]:
    """(relative image paths in sorted top-down walk order, {relative dir: mtime_ns}, non-image count, one
    non-image example) of a folder; directories are read level by level by a thread pool."""
    contents: dict[str, tuple[list[str], list[str]]] = {}
    mtimes: dict[str, int] = {}
    skipped, example = 0, ""
    frontier = [root]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while frontier:
            next_frontier = []
            for path, mtime, images, others, subdirs in pool.map(_read_dir, frontier):
                rel = os.path.relpath(path, root)
                contents[rel] = (images, subdirs)
                mtimes[rel] = mtime
                skipped += len(others)
                example = example or (os.path.join(rel, others[0]) if others else "")
                next_frontier += [os.path.join(path, d) for d in subdirs]
            frontier = next_frontier
    ordered: list[str] = []
    stack = ["."]
    while stack:  # top-down walk: a folder's images, then its sub-folders in sorted order
        rel = stack.pop()
        images, subdirs = contents[rel]
        prefix = "" if rel == "." else rel + os.sep
        ordered += [prefix + name for name in images]
        stack += [prefix + d for d in reversed(subdirs)]
    return ordered, mtimes, skipped, os.path.normpath(example) if example else ""


def cache_dir() -> Path:
    return Path(os.environ.get("SIMDINO_CACHE_DIR") or Path.home() / ".cache" / "simdinov2") / "listings"


def _cache_path(root: str) -> Path:
    return cache_dir() / (hashlib.sha1(root.encode()).hexdigest()[:16] + ".txt")


def _read_cache(root: str) -> ImageListing | None:
    """The cached listing of `root` if every directory it saw still has its modification time."""
    path = _cache_path(root)
    try:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline())
            if header.get("version") != LISTING_VERSION or header.get("root") != root:
                return None
            for rel, mtime in header["dirs"].items():
                if os.stat(os.path.join(root, rel)).st_mtime_ns != mtime:
                    return None
            relative = f.read().split("\n")[:-1]
    except (OSError, ValueError, KeyError):
        return None
    if len(relative) != header.get("count"):
        return None  # truncated file
    paths = [os.path.join(root, rel) for rel in relative]
    return ImageListing(paths, header["skipped"], header.get("skipped_example", ""), from_cache=True)


def _write_cache(root: str, relative: list[str], mtimes: dict[str, int], skipped: int, example: str) -> None:
    path = _cache_path(root)
    header = {
        "version": LISTING_VERSION,
        "root": root,
        "count": len(relative),
        "skipped": skipped,
        "skipped_example": example,
        "dirs": mtimes,
    }
    try:  # written whole, then renamed: readers never see half a listing
        atomic_write_text(path, json.dumps(header) + "\n" + "".join(rel + "\n" for rel in relative))
    except (
        OSError
    ) as e:  # DiskFullError is an OSError too  # a read-only home: the listing is just not cached
        logger.info("image listing of %s not cached (%s)", root, e)


def list_folder(root: str | os.PathLike, use_cache: bool = True) -> ImageListing:
    """Every image below `root` (see the module docstring), from the cache when it is still valid."""
    root = os.path.realpath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise MissingFileError(f"image folder {root} does not exist")
    if use_cache:
        cached = _read_cache(root)
        if cached is not None:
            return cached
    relative, mtimes, skipped, example = scan_folder(root)
    if use_cache:
        _write_cache(root, relative, mtimes, skipped, example)
    return ImageListing([os.path.join(root, rel) for rel in relative], skipped, example)


def list_file(list_path: str | os.PathLike) -> ImageListing:
    """The images a `.txt` list names, one a line, relative paths taken from the list's folder."""
    list_path = Path(list_path).expanduser()
    base = list_path.resolve().parent
    paths: list[str] = []
    skipped, example = 0, ""
    with open(list_path, encoding="utf-8") as f:
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if not _is_image(entry):
                skipped += 1
                example = example or entry
                continue
            paths.append(os.path.normpath(os.path.join(base, entry)))
    return ImageListing(paths, skipped, example)


def is_image_list(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".txt") and os.path.isfile(path)


class UnlabeledImageDataset(LabelledImageDataset):
    """Images of a folder (any layout) or a `.txt` list: `dataset[i] -> (transform(RGB image), -1)`."""

    def __init__(
        self,
        source: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        use_cache: bool = True,
    ) -> None:
        self.source = str(source)
        self.transform = transform
        self.target_transform = target_transform
        listing = list_file(source) if is_image_list(source) else list_folder(source, use_cache)
        what = "listed" if is_image_list(source) else "found"
        if listing.skipped:
            logger.info(
                "%s: skipped %d files that are not images (%s), e.g. %s",
                self.source,
                listing.skipped,
                ", ".join(IMG_EXTENSIONS),
                listing.skipped_example,
            )
        if not listing.paths:
            raise UserError(f"no images ({', '.join(IMG_EXTENSIONS)}) {what} in {self.source}")
        cached = " (listing from cache)" if listing.from_cache else ""
        logger.info("%s: %d images, no labels needed%s", self.source, len(listing.paths), cached)
        self.paths = listing.paths
        self.skipped = listing.skipped

    def __len__(self) -> int:
        return len(self.paths)

    def get_image(self, index: int) -> Image.Image:
        return load_rgb_image(self.paths[index])

    def get_target(self, index: int) -> int:
        return NO_LABEL

    def get_targets(self) -> np.ndarray:
        return np.full(len(self), NO_LABEL, dtype=np.int64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, {len(self)} images)"
