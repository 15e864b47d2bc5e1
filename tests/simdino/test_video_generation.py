"""`simdino/video_generation.py` on a tiny ViT and real images: a folder of Fashion-MNIST frames and a
tiny .mp4 written by imageio give one attention frame and one mask frame per input frame and a video
with as many frames; a v2 checkpoint (registers) works too; --video_only remakes the video; bad input is
one line; without imageio the frames are still written and one line names the install."""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simdino import video_generation as vg
from simdinov2.cli import run_cli
from simdinov2.errors import UserError
from simdinov2.models import build_vit

imageio = pytest.importorskip("imageio.v2")
pytest.importorskip("imageio_ffmpeg")

N_FRAMES = 4


@pytest.fixture(scope="module")
def frames_dir(tiny_imagefolder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'video' as a folder of frames: the first images of one class, renamed in play order."""
    folder = tmp_path_factory.mktemp("frames")
    sources = sorted(
        next(p for p in sorted((tiny_imagefolder / "val").iterdir()) if p.is_dir()).glob("*.png")
    )
    for i, source in enumerate(sources[:N_FRAMES]):
        shutil.copy(source, folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def v1_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_vit("vit_tiny", patch_size=4, v1=True, img_size=32, depth=2)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()}, "epoch": 1}, path)
    return path


def read_video(path: Path) -> tuple[int, float, tuple[int, ...]]:
    with imageio.get_reader(str(path), format="FFMPEG") as reader:
        frames = [np.asarray(f) for f in reader]
        return len(frames), float(reader.get_meta_data()["fps"]), frames[0].shape


def test_folder_of_frames_gives_attention_frames_and_video(
    frames_dir: Path, v1_checkpoint: Path, tmp_path: Path
):
    out = tmp_path / "out"
    video = vg.main(["--pretrained_weights", str(v1_checkpoint), "--input_path", str(frames_dir),
                     "--output_path", str(out), "--fps", "5", "--resize", "64", "--device", "cpu"])  # fmt: skip
    attention = out / "attention"
    stems = sorted(p.stem for p in frames_dir.iterdir())
    assert sorted(p.name for p in attention.glob("attn-*.jpg")) == [f"attn-{s}.jpg" for s in stems]
    assert sorted(p.name for p in attention.glob("mask-*.jpg")) == [f"mask-{s}.jpg" for s in stems]
    with Image.open(attention / f"attn-{stems[0]}.jpg") as im:
        assert im.size == (64, 64)  # resized 32 -> 64 px, 16 x 16 patches drawn at pixel size
    assert video == out / "video.mp4"
    count, fps, shape = read_video(video)
    assert (count, fps, shape[:2]) == (N_FRAMES, 5.0, (64, 64))

    # --video_only remakes the video (avi) from the attention frames alone: no model is needed
    avi = vg.main(["--video_only", "--input_path", str(attention), "--output_path", str(out), "--fps", "2",
                   "--video_format", "avi"])  # fmt: skip
    assert avi == out / "video.avi" and read_video(avi)[0] == N_FRAMES
    assert not list(out.glob(".video.*"))  # the temporary of the atomic write is gone


def test_video_file_is_split_into_frames_at_its_frame_rate(frames_dir: Path, tmp_path: Path):
    torch.manual_seed(0)
    v2 = build_vit("vit_tiny", patch_size=4, num_register_tokens=2, init_values=1e-5, img_size=32, depth=2)
    ckpt = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in v2.state_dict().items()}}, ckpt)
    clip = tmp_path / "clip.mp4"
    with imageio.get_writer(str(clip), format="FFMPEG", fps=4, macro_block_size=2) as writer:
        for frame in sorted(frames_dir.iterdir()):
            writer.append_data(np.asarray(Image.open(frame).convert("RGB")))
    out = tmp_path / "out"
    (out / "frames").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(out / "frames" / "frame-0099.jpg")  # left by an earlier, longer video
    video = vg.main(["--pretrained_weights", str(ckpt), "--input_path", str(clip), "--output_path", str(out),
                     "--threshold", "0.3", "--device", "cpu"])  # fmt: skip
    assert sorted(p.name for p in (out / "frames").iterdir()) == [
        f"frame-{i:04d}.jpg" for i in range(N_FRAMES)
    ]
    assert len(list((out / "attention").glob("attn-frame-*.jpg"))) == N_FRAMES
    count, fps, _ = read_video(video)
    assert (count, fps) == (N_FRAMES, 4.0)  # the input's frame rate, not the --fps default 30


def test_frames_are_written_without_a_video_writer(frames_dir, v1_checkpoint, tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_imageio(name, *args, **kwargs):
        if name.startswith("imageio"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_imageio)
    out = tmp_path / "out"
    assert vg.main(["--pretrained_weights", str(v1_checkpoint), "--input_path", str(frames_dir),
                    "--output_path", str(out), "--device", "cpu"]) is None  # fmt: skip
    assert len(list((out / "attention").glob("attn-*.jpg"))) == N_FRAMES
    lines = [line for line in capsys.readouterr().out.splitlines() if "video not written" in line]
    assert len(lines) == 1 and "pip install imageio imageio-ffmpeg" in lines[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--threshold", "1.5"],
            "--threshold 1.5 is not a fraction of the attention mass: give a value in [0, 1]",
        ),
        (["--threshold", "-0.1"], "--threshold -0.1 is not a fraction"),
        (["--input_path", "/nonexistent/clip.mp4"], "--input_path /nonexistent/clip.mp4 does not exist"),
        (["--video_only"], "no frames (attn-*.jpg"),
        (["--fps", "0"], "--fps 0.0 must be positive"),
        (["--resize", "64", "64", "3"], "--resize 64 64 3 is not a size: give one positive value"),
    ],
)
def test_bad_input_is_one_line(flags, message, frames_dir, v1_checkpoint, tmp_path):
    argv = ["--pretrained_weights", str(v1_checkpoint), "--input_path", str(frames_dir),
            "--output_path", str(tmp_path / "out"), "--device", "cpu", *flags]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_cli("video_generation.py", vg.generate, vg.get_args_parser().parse_args(argv))
    line = str(exit_info.value.code)
    assert "\n" not in line and line.startswith("video_generation.py: error: ") and message in line, line


def test_a_file_that_is_no_video_is_one_line(tmp_path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    with pytest.raises(UserError, match="cannot be read as a video"):
        vg.generate(
            vg.get_args_parser().parse_args(["--input_path", str(bogus), "--output_path", str(tmp_path)])
        )
