"""A full disk outside checkpoint saves (the records writer, results, feature dumps, pictures, exports) is
one line naming the file, and leaves no 0-byte or half-written file; unusable `--out` paths of the export
are one line too."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
import torch

from simdino import eval_knn as v1_knn
from simdino import eval_linear as v1_linear
from simdino import main_dino, visualize_attention
from simdinov2 import export
from simdinov2.errors import UserError
from simdinov2.eval import knn
from simdinov2.logging import json_lines
from simdinov2.logging.helpers import _Tee
from simdinov2.logging.json_lines import append_json_lines
from simdinov2.models import build_vit

V1_MODEL = ["--arch", "vit_tiny", "--patch_size", "4", "--num_workers", "0"]


@pytest.fixture(scope="module")
def v1_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    backbone = build_vit("vit_tiny", patch_size=4, v1=True, img_size=28)
    path = tmp_path_factory.mktemp("v1") / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, path)
    return path


def _disk_full_for(monkeypatch, name: str) -> None:
    """Writes to files called `name` (or their temporaries) fail with ENOSPC when synced to disk."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if name in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _one_line(run) -> str:
    with pytest.raises(SystemExit) as exc:
        run()
    message = str(exc.value.code)
    assert exc.value.code not in (0, None) and "\n" not in message, message
    assert "no space left on device while saving" in message, message
    return message


def test_append_json_lines_on_a_full_disk_keeps_whole_lines(tmp_path, monkeypatch):
    path = tmp_path / "log.txt"
    append_json_lines(path, [{"epoch": 0}])
    real_open = open

    class HalfWrite:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(json_lines, "open", lambda *a, **k: HalfWrite(real_open(*a, **k)), raising=False)
    with pytest.raises(UserError, match=f"no space left on device while saving {path}"):
        append_json_lines(path, [{"epoch": 1, "loss": 0.5}])
    assert path.read_text() == '{"epoch": 0}\n'  # no half row left


def test_v1_training_metrics_write(tiny_imagefolder, tmp_path, monkeypatch):
    """Before: a 30-line traceback."""
    _disk_full_for(monkeypatch, "training_metrics.json")
    out = tmp_path / "run"
    argv = [*V1_MODEL, "--global_crops_size", "28", "--local_crops_size", "12", "--local_crops_number", "2",
            "--compile", "false", "--use_fp16", "false", "--hidden_dim", "64", "--z_dim", "32", "--epochs", "1",
            "--batch_size_per_gpu", "8", "--data_path", str(tiny_imagefolder / "train"), "--output_dir", str(out)]  # fmt: skip
    message = _one_line(lambda: main_dino.main(main_dino.get_args_parser().parse_args(argv)))
    assert str(out / "training_metrics.json") in message


def test_v1_eval_knn_dump_features(v1_weights, tiny_imagefolder, tmp_path, monkeypatch):
    _disk_full_for(monkeypatch, "trainfeat.pth")
    dump = tmp_path / "features"
    message = _one_line(lambda: v1_knn.cli([*V1_MODEL, "--pretrained_weights", str(v1_weights), "--img_size", "28",
                                            "--data_path", str(tiny_imagefolder), "--dump_features", str(dump),
                                            "--output_dir", str(tmp_path / "knn")]))  # fmt: skip
    assert str(dump / "trainfeat.pth") in message and not (dump / "trainfeat.pth").exists()


def test_v1_eval_linear_log(v1_weights, tiny_imagefolder, tmp_path, monkeypatch):
    _disk_full_for(monkeypatch, "log.txt")
    out = tmp_path / "linear"
    message = _one_line(lambda: v1_linear.cli([*V1_MODEL, "--pretrained_weights", str(v1_weights), "--img_size", "28",
                                               "--data_path", str(tiny_imagefolder), "--epochs", "1",
                                               "--output_dir", str(out)]))  # fmt: skip
    assert str(out / "log.txt") in message


def test_visualize_attention_leaves_no_empty_picture(v1_weights, tmp_path, monkeypatch):
    """Before: a traceback and a 0-byte img.png."""
    _disk_full_for(monkeypatch, "img.png")
    out = tmp_path / "vis"
    message = _one_line(
        lambda: visualize_attention.main(
            [
                *V1_MODEL[:4],
                "--pretrained_weights",
                str(v1_weights),
                "--image_size",
                "32",
                "--output_dir",
                str(out),
            ]
        )
    )
    assert str(out / "img.png") in message and not list(out.glob("*.png"))


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_export_on_a_full_disk(fmt, v1_weights, tmp_path, monkeypatch):
    _disk_full_for(monkeypatch, "backbone")
    out = tmp_path / f"backbone.{fmt}"
    message = _one_line(lambda: export.main([str(v1_weights), "--out", str(out)]))
    assert str(out) in message and not out.exists()


@pytest.mark.parametrize("kind", ["a_folder", "under_a_file", "read_only"])
def test_export_to_an_unusable_out_is_one_line(kind, v1_weights, tmp_path):
    (tmp_path / "a_file").write_text("x")
    out = {
        "a_folder": tmp_path,
        "under_a_file": tmp_path / "a_file" / "b.pth",
        "read_only": Path("/sys/simdinov2_test_export/b.pth"),
    }[kind]
    with pytest.raises(SystemExit) as exc:
        export.main([str(v1_weights), "--out", str(out)])
    message = str(exc.value.code)
    assert "\n" not in message and "--out" in message, message
    assert {
        "a_folder": "is a folder",
        "under_a_file": "a file is in the way",
        "read_only": "no permission to write there",
    }[kind] in message


def test_console_copy_stops_with_one_warning_on_a_full_disk(tmp_path, capsys):
    """Before: `--- Logging error ---` for every line, then exit 120 (stdout could not be flushed)."""

    class FullFile:
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        flush = close = lambda self: None

    tee = _Tee(sys.stdout, tmp_path / "log.txt")
    tee.file.close()
    tee.file = FullFile()
    tee.write("first\n")
    tee.write("second\n")
    tee.flush()
    out = capsys.readouterr().out
    assert out.count("warning: no longer copying the console") == 1 and "first" in out and "second" in out


def test_v2_knn_results(v1_weights, tiny_imagefolder, tmp_path, monkeypatch):
    """Before: an empty results file, `--- Logging error ---` repeated, exit 120 and no error line."""
    _disk_full_for(monkeypatch, "results_eval_knn.json")
    out = tmp_path / "knn"
    message = _one_line(lambda: knn.cli(["--pretrained-weights", str(v1_weights), "--image-size", "28",
                                         "--train-dataset", f"ImageFolder:root={tiny_imagefolder}/train",
                                         "--val-dataset", f"ImageFolder:root={tiny_imagefolder}/val",
                                         "--num-workers", "0", "--output-dir", str(out)]))  # fmt: skip
    assert str(out / "results_eval_knn.json") in message
    assert not (out / "results_eval_knn.json").read_text()  # no half row
