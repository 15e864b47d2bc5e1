"""Training data without labels (`simdinov2/data/datasets/unlabeled.py`): flat, nested and class-per-folder
trees, `.txt` lists, skipped non-image files, the listing cache, and evaluations refusing unlabeled data."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from simdinov2.data import ImageFolderDataset, make_dataset
from simdinov2.data.datasets.unlabeled import UnlabeledImageDataset, list_folder
from simdinov2.data.loaders import training_dataset
from simdinov2.errors import UserError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMDINO_CACHE_DIR", str(tmp_path / "cache"))


def _real_images(tiny_imagefolder: Path, n: int) -> list[Path]:
    return sorted((tiny_imagefolder / "train").rglob("*.png"))[:n]


@pytest.fixture
def nested(tiny_imagefolder, tmp_path) -> Path:
    """6 real images: 2 loose, 2 one level down, 2 three levels down; plus a README and a CSV."""
    root = tmp_path / "photos"
    places = [root, root, root / "a", root / "a", root / "b" / "c" / "d", root / "b" / "c" / "d"]
    for i, (source, folder) in enumerate(zip(_real_images(tiny_imagefolder, 6), places, strict=True)):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / f"img{i}.png")
    (root / "README.md").write_text("notes")
    (root / "a" / "labels.csv").write_text("x")
    (root / ".hidden.png").write_text("ignored")
    return root


def test_nested_folder_without_classes_lists_every_image_and_counts_the_rest(nested, caplog):
    with caplog.at_level(logging.INFO, logger="simdinov2"):
        dataset = UnlabeledImageDataset(nested)
    assert len(dataset) == 6
    assert [Path(p).relative_to(nested).as_posix() for p in dataset.paths] == [
        "img0.png",
        "img1.png",
        "a/img2.png",
        "a/img3.png",
        "b/c/d/img4.png",
        "b/c/d/img5.png",
    ]
    skipped_lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped_lines) == 1 and "skipped 2 files that are not images" in skipped_lines[0]
    image, target = dataset[5]
    assert image.mode == "RGB" and image.size[0] > 0 and target == -1


def test_class_tree_keeps_imagefolder_order(tiny_imagefolder):
    root = tiny_imagefolder / "train"
    assert UnlabeledImageDataset(root).paths == [path for path, _ in ImageFolderDataset(root).samples]


def test_text_list_is_relative_to_its_folder(nested, tmp_path):
    listing = nested / "list.txt"
    listing.write_text(
        "# my images\nimg0.png\n\nb/c/d/img5.png\nnotes.doc\n" + str(nested / "a" / "img2.png") + "\n"
    )
    dataset = training_dataset(str(listing), option="--data_path")
    assert [Path(p).name for p in dataset.paths] == ["img0.png", "img5.png", "img2.png"]
    assert dataset.skipped == 1
    assert dataset[1][0].mode == "RGB"


def test_cache_is_used_and_refreshed_when_a_folder_changes(nested):
    first = list_folder(nested)
    again = list_folder(nested)
    assert not first.from_cache and again.from_cache and again.paths == first.paths
    shutil.copy(nested / "img0.png", nested / "b" / "c" / "new.png")  # a deep folder changes
    refreshed = list_folder(nested)
    assert not refreshed.from_cache and len(refreshed.paths) == 7


def test_unreadable_image_is_named(nested):
    (nested / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    dataset = UnlabeledImageDataset(nested)
    index = [Path(p).name for p in dataset.paths].index("broken.jpg")
    with pytest.raises(UserError, match="broken.jpg"):
        dataset[index]


def test_bad_training_sources_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty folder"):
        training_dataset(str(tmp_path / "empty"), option="--data_path")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="no images"):
        training_dataset(str(tmp_path / "text"), option="--data_path")
    with pytest.raises(UserError, match="does not exist"):
        training_dataset(str(tmp_path / "missing"), option="train.dataset_path")
    (tmp_path / "model.pth").write_bytes(b"")
    with pytest.raises(UserError, match="is a file"):
        training_dataset(str(tmp_path / "model.pth"), option="--data_path")


def test_evaluations_say_they_need_labels(nested):
    (nested / "list.txt").write_text("img0.png\n")
    with pytest.raises(UserError, match="needs labels"):
        make_dataset(str(nested / "list.txt"))
    flat = nested.parent / "flat"
    flat.mkdir()
    shutil.copy(nested / "img0.png", flat / "img0.png")
    with pytest.raises(UserError, match="evaluations need labels"):
        make_dataset(str(flat))
