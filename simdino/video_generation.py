#!/usr/bin/env python
"""Self-attention video of the CLS token (DINO's `video_generation.py`): every frame of a video, or of a
folder of frames, drawn as the last block's CLS→patch attention, and the frames put back into a video.

Owns only this v1 program: reading the frames (a video file is split into `OUTPUT/frames/frame-XXXX.jpg`
first, its frame rate replacing `--fps`), writing per frame `OUTPUT/attention/attn-<frame>.jpg` (the mean
over every head of the attention, inferno colours, as upstream) and `mask-<frame>.jpg` (each head's
`--threshold` mask in its own colour over the frame), then `OUTPUT/video.<--video_format>` from the
`attn-*.jpg` frames. `--video_only` makes the video from an existing folder of `attn-*.jpg` frames.

Videos are read and written by imageio with its ffmpeg plugin (`pip install imageio imageio-ffmpeg`);
without them the frames are still written and one line says what to install. The attention maps, the
masks and the backbone of any checkpoint of either tree come from `simdinov2.eval.attention_maps`, shared
with `visualize_attention.py`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from pathlib import Path

from simdinov2.install_hint import exit_with_install_hint

with exit_with_install_hint("video_generation.py"):
    from simdinov2.cli import run_cli

import numpy as np
import torch
from PIL import Image

from simdinov2.cli import HelpFormatter, make_output_dir
from simdinov2.data.datasets import load_rgb_image
from simdinov2.distributed import resolve_device
from simdinov2.errors import MissingFileError, UserError
from simdinov2.eval.attention_maps import (
    add_backbone_args,
    check_image_size,
    check_threshold,
    cls_attention_maps,
    combined_mask_picture,
    image_to_input,
    input_picture,
    load_pretrained_backbone,
    threshold_masks,
    to_pixels,
)
from simdinov2.models import DinoVisionTransformer

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_CODECS = {"mp4": "libx264", "avi": "mpeg4"}
INSTALL_WRITER = "pip install imageio imageio-ffmpeg"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "Generation self-attention video", add_help=add_help, formatter_class=HelpFormatter
    )
    add_backbone_args(parser)
    parser.add_argument(
        "--input_path",
        required=True,
        type=str,
        help="A video file (its frames are extracted to OUTPUT/frames), a folder of frames "
        "(.jpg/.jpeg/.png, in name order), or with --video_only a folder of attn-*.jpg frames.",
    )
    parser.add_argument(
        "--output_path",
        default="./",
        type=str,
        help="Folder for frames/, attention/ and the video. Default: the current folder.",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.6,
        help="Fraction of the attention mass each head's mask keeps (mask-*.jpg frames), in [0, 1].",
    )
    parser.add_argument(
        "--resize",
        default=None,
        type=int,
        nargs="+",
        help="Resize the frames before the model (use if out of memory): one value resizes the "
        "shorter side, two are height and width. Usage: --resize 512, --resize 720 1280",
    )
    parser.add_argument(
        "--video_only",
        action="store_true",
        help="Only make the video, from the attention frames in --input_path (e.g. OUTPUT/attention/).",
    )
    parser.add_argument(
        "--fps",
        default=30.0,
        type=float,
        help="Frame rate of the output video; set from the input when it is a video file.",
    )
    parser.add_argument(
        "--video_format",
        default="mp4",
        type=str,
        choices=list(VIDEO_CODECS),
        help="Format of the generated video (mp4 or avi).",
    )
    return parser


def video_writer_missing() -> str | None:
    """None when imageio and its ffmpeg plugin can be imported; otherwise the package to install."""
    for module in ("imageio", "imageio_ffmpeg"):
        try:
            __import__(module)
        except ImportError:
            return f"{module.replace('_', '-')} ({INSTALL_WRITER})"
    return None


def frame_files(folder: Path, pattern: str = "*") -> list[Path]:
    frames = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())
    if not frames:
        raise UserError(
            f"no frames ({pattern}, {'/'.join(FRAME_SUFFIXES)}) in {folder}: give a folder of frames "
            "or a video file as --input_path"
        )
    return frames


def extract_frames(video: Path, out: Path) -> float:
    """Write every frame of `video` as out/frame-XXXX.jpg; return the video's frame rate."""
    missing = video_writer_missing()
    if missing:
        raise UserError(
            f"reading the video {video} needs {missing}, or give a folder of frames as --input_path"
        )
    import imageio.v2 as imageio

    for stale in out.glob("frame-*.jpg"):  # frames of an earlier (longer) video would join this one
        stale.unlink()
    try:
        reader = imageio.get_reader(str(video), format="FFMPEG")
    except Exception as err:  # imageio raises several types for a file that is not a video
        raise UserError(
            f"--input_path {video} cannot be read as a video ({type(err).__name__}): give a video "
            "file or a folder of frames"
        ) from None
    with reader:
        fps = float(reader.get_meta_data().get("fps") or 0)
        count = 0
        for count, frame in enumerate(reader, start=1):
            Image.fromarray(np.asarray(frame)[..., :3]).save(out / f"frame-{count - 1:04d}.jpg", quality=95)
    print(f"Video: {video} ({fps} fps), {count} frames extracted to {out}")
    return fps


@torch.no_grad()
def attention_frames(
    model: DinoVisionTransformer,
    frames: list[Path],
    out: Path,
    args: argparse.Namespace,
    device: torch.device,
) -> list[Path]:
    """attn-<frame>.jpg (mean over heads) and mask-<frame>.jpg (every head's mask) per frame."""
    import matplotlib  # optional dependency (requirements.txt, dev extra): only the drawing programs need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print(f"Generating attention images to {out}")
    start, written = time.monotonic(), []
    for i, path in enumerate(frames, start=1):
        img = image_to_input(load_rgb_image(path), model.patch_size, args.resize).to(device)
        attn = cls_attention_maps(model, img)
        heatmap = to_pixels(attn.mean(dim=0, keepdim=True), model.patch_size)[0]
        target = out / f"attn-{path.stem}.jpg"
        plt.imsave(fname=str(target), arr=heatmap, cmap="inferno", format="jpg")
        masks = to_pixels(threshold_masks(attn, args.threshold), model.patch_size) > 0.5
        Image.fromarray(combined_mask_picture(input_picture(img), masks)).save(out / f"mask-{path.stem}.jpg")
        written.append(target)
        if i % 50 == 0 or i == len(frames):
            rate = i / max(time.monotonic() - start, 1e-9)
            print(f"  frame {i}/{len(frames)}  {rate:.1f} frames/s  ETA {(len(frames) - i) / rate:.0f} s")
    return written


def write_video(frames: list[Path], out: Path, fps: float, video_format: str) -> Path | None:
    """out/video.<format> from the frames (resized to the first one's size); None, with one line naming
    the package to install, when no video writer is installed."""
    missing = video_writer_missing()
    if missing:
        print(f"video not written: it needs {missing}; the attention frames are in {frames[0].parent}")
        return None
    import imageio.v2 as imageio

    with Image.open(frames[0]) as first:
        size = first.size
    target = out / f"video.{video_format}"
    tmp = out / f".video.{secrets.token_hex(4)}.tmp.{video_format}"  # the extension picks the container
    print(f"Generating video {size} to {target}")
    try:
        # macro_block_size 2: the yuv420p pixels of the codecs need even sizes (imageio pads, not fails)
        with imageio.get_writer(
            str(tmp), format="FFMPEG", fps=fps, codec=VIDEO_CODECS[video_format], macro_block_size=2
        ) as writer:
            for path in frames:
                with Image.open(path) as frame:
                    writer.append_data(np.asarray(frame.convert("RGB").resize(size, Image.BICUBIC)))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def generate(args: argparse.Namespace) -> Path | None:
    """Frames (when from a video), attention frames and the video; returns the video's path (None without
    a writer)."""
    check_threshold(args.threshold)
    check_image_size(args.resize, "--resize")
    if args.fps <= 0:
        raise UserError(f"--fps {args.fps} must be positive")
    source = Path(args.input_path)
    if not source.exists():
        raise MissingFileError(
            f"--input_path {args.input_path} does not exist: give a video file or a folder of frames"
        )
    output = make_output_dir(args.output_path, "--output_path")
    if args.video_only:
        if not source.is_dir():
            raise UserError(
                f"--video_only needs a folder of attn-*.jpg frames as --input_path, not the file {source}"
            )
        return write_video(frame_files(source, "attn-*.jpg"), output, args.fps, args.video_format)
    device = resolve_device(args.device)
    if source.is_file():
        frames_dir = make_output_dir(output / "frames", "--output_path")
        args.fps = extract_frames(source, frames_dir) or args.fps
        frames = frame_files(frames_dir, "frame-*.jpg")
    else:
        frames = frame_files(source)
    model = load_pretrained_backbone(
        args.pretrained_weights, args.checkpoint_key, args.arch, args.patch_size, device
    )
    attention_dir = make_output_dir(output / "attention", "--output_path")
    written = attention_frames(model, frames, attention_dir, args, device)
    return write_video(written, output, args.fps, args.video_format)


def main(argv: list[str] | None = None) -> Path | None:
    """Parse and run `generate`; a user error ends the program with one line."""
    return run_cli("video_generation.py", generate, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
