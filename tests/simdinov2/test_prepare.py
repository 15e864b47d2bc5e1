"""Tests of prepare.py (the ImageNet extra-file writer) on a miniature ImageNet tree."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_prepare():
    spec = importlib.util.spec_from_file_location("prepare_cli", REPO_ROOT / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_prepare_cli_writes_extra_files(mini_imagenet: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    result = subprocess.run(
        [sys.executable, "prepare.py", "--root", str(mini_imagenet), "--extra", str(extra)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in extra.iterdir())
    assert written == sorted(
        ["entries-TRAIN.npy", "entries-VAL.npy", "entries-TEST.npy"]
        + [f"class-{kind}-{split}.npy" for kind in ("ids", "names") for split in ("TRAIN", "VAL")]
    )
    labels = [line.split(",", 1) for line in (mini_imagenet / "labels.txt").read_text().splitlines()]
    train = np.load(extra / "entries-TRAIN.npy")
    assert train.dtype.names == ("actual_index", "class_index", "class_id", "class_name")
    assert train.dtype["actual_index"] == np.uint32 and train.dtype["class_index"] == np.uint32
    train_files = sorted((mini_imagenet / "train").rglob("*.JPEG"))
    assert len(train) == len(train_files)
    for entry in train:
        class_id = str(entry["class_id"])
        assert (mini_imagenet / "train" / class_id / f"{class_id}_{entry['actual_index']}.JPEG").is_file()
        assert labels[entry["class_index"]] == [class_id, str(entry["class_name"])]
    val = np.load(extra / "entries-VAL.npy")
    assert len(val) == len(list((mini_imagenet / "val").rglob("*.JPEG")))
    for entry in val:
        name = f"ILSVRC2012_val_{entry['actual_index']:08d}.JPEG"
        assert (mini_imagenet / "val" / str(entry["class_id"]) / name).is_file()
    test = np.load(extra / "entries-TEST.npy")
    assert len(test) == len(list((mini_imagenet / "test").glob("*.JPEG")))
    assert all(str(e["class_id"]) == "" and str(e["class_name"]) == "" for e in test)
    assert list(np.load(extra / "class-ids-VAL.npy")) == [cid for cid, _ in labels]
    assert list(np.load(extra / "class-names-TRAIN.npy")) == [name for _, name in labels]


def _copy(mini_imagenet: Path, tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    shutil.copytree(mini_imagenet, root)
    return root


def _run(prepare, root: Path, extra: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = prepare.main(["--root", str(root), "--extra", str(extra)])
    err = capsys.readouterr().err.strip()
    return code, err


def test_prepare_bad_inputs_give_one_line_and_exit_2(mini_imagenet: Path, tmp_path: Path, capsys) -> None:
    prepare = _load_prepare()
    code, err = _run(prepare, tmp_path / "nowhere", tmp_path / "e", capsys)
    assert code == 2 and "does not exist" in err and "\n" not in err

    root = _copy(mini_imagenet, tmp_path)
    (root / "labels.txt").unlink()
    code, err = _run(prepare, root, tmp_path / "e", capsys)
    assert code == 2 and "labels.txt" in err and "\n" not in err

    (root / "labels.txt").write_text("n01440764 tench\n")
    code, err = _run(prepare, root, tmp_path / "e", capsys)
    assert code == 2 and "line 1" in err and "class_id,class_name" in err

    (root / "labels.txt").write_text("n01440764,tench\n")  # the other two folders are not listed
    code, err = _run(prepare, root, tmp_path / "e", capsys)
    assert code == 2 and "not listed" in err


def test_prepare_rejects_misnamed_files(mini_imagenet: Path, tmp_path: Path, capsys) -> None:
    prepare = _load_prepare()
    root = _copy(mini_imagenet, tmp_path)
    bad = root / "val" / "n01440764" / "photo.JPEG"
    shutil.copy(next((root / "val" / "n01440764").iterdir()), bad)
    code, err = _run(prepare, root, tmp_path / "e", capsys)
    assert code == 2 and "photo.JPEG" in err and "ILSVRC2012_val_<8 digits>.JPEG" in err
    bad.unlink()
    assert _run(prepare, root, tmp_path / "e", capsys)[0] == 0
