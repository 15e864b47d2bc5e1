"""Patch-feature PCA pictures (`simdinov2.eval.patch_pca`, `python -m simdinov2.tools.pca_features`): the
background found on the first component is black whatever the component's sign, the tool writes one
PNG per real (Fashion-MNIST) image from v1 and v2 checkpoints and release names, the demo's figure has the
promised layout, and bad input is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simdinov2.data.datasets import load_rgb_image
from simdinov2.eval.attention_maps import image_to_input
from simdinov2.eval.patch_pca import pca_pictures, save_pca_figure
from simdinov2.models import build_vit
from simdinov2.tools import pca_features


@pytest.fixture(scope="module")
def images(tiny_imagefolder: Path) -> list[Path]:
    classes = sorted(p for p in (tiny_imagefolder / "val").iterdir() if p.is_dir())
    return [sorted(c.glob("*.png"))[0] for c in classes]  # one image of each class, 32 x 32


def tiny_vit(depth: int = 2, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vit("vit_tiny", patch_size=4, img_size=32, depth=depth, **kwargs).eval()


def save_teacher(model: torch.nn.Module, path: Path) -> Path:
    torch.save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_border_background_is_black_whatever_the_sign(sign):
    """An 8x8 grid: a 4x4 centre object on a background, in 16-dim features with noise; the first
    component separates them, and its (arbitrary) sign must not turn the object black."""
    gen = torch.Generator().manual_seed(0)
    centre = torch.zeros(8, 8, dtype=torch.bool)
    centre[2:6, 2:6] = True
    direction = torch.randn(16, generator=gen)
    grid = 0.05 * torch.randn(8, 8, 16, generator=gen) + sign * centre[..., None] * direction
    picture = pca_pictures([grid], threshold=0.5)[0]
    assert picture.shape == (8, 8, 3)
    assert (picture[~centre.numpy()] == 0).all()  # background black
    assert (picture[centre.numpy()].sum(axis=-1) > 0).mean() > 0.9  # the object coloured
    kept = pca_pictures([grid], threshold=0.0)[0]
    assert (kept[~centre.numpy()].sum(axis=-1) > 0).mean() > 0.9  # threshold 0 keeps the background too


def test_tool_writes_one_png_per_image_for_v1_and_v2_checkpoints(images, tmp_path):
    v1 = save_teacher(tiny_vit(v1=True), tmp_path / "checkpoint.pth")
    v2 = save_teacher(tiny_vit(num_register_tokens=2, init_values=1e-5), tmp_path / "teacher_checkpoint.pth")
    for ckpt in (v1, v2):
        out = tmp_path / f"pca_{ckpt.stem}"
        written = pca_features.main(
            [
                "--pretrained_weights",
                str(ckpt),
                "--image_path",
                *map(str, images),
                "--output_dir",
                str(out),
                "--image_size",
                "64",
                "--device",
                "cpu",
            ]
        )
        assert [p.name for p in written] == [f"{p.stem}_pca.png" for p in images]
        for path in written:
            with Image.open(path) as im:
                assert im.size == (64, 64) and im.mode == "RGB"
                pixels = np.asarray(im)
            black = (pixels.sum(axis=-1) == 0).mean()
            assert 0.0 < black < 1.0  # a background and a foreground (Fashion-MNIST: garment on black)


def test_release_names_load_from_the_hub_cache(images, tmp_path, monkeypatch):
    """`--pretrained_weights simdinov2_vitb16` reads the release file hubconf.py names (here a tiny model
    placed in the torch hub cache, offline); an unknown name is one line listing the release names."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    # hubconf builds `--arch`'s full depth: a 12-block vit_tiny
    save_teacher(tiny_vit(depth=12, num_register_tokens=4, init_values=1e-5), cache / "simdinov2_vitb16.pth")
    written = pca_features.main(["--pretrained_weights", "simdinov2_vitb16", "--arch", "vit_tiny", "--patch_size",
                                 "4", "--image_path", str(images[0]), "--output_dir", str(tmp_path / "out"),
                                 "--image_size", "32"])  # fmt: skip
    assert len(written) == 1 and written[0].is_file()
    with pytest.raises(SystemExit) as exit_info:
        pca_features.main(
            [
                "--pretrained_weights",
                "dinov2_vits14",
                "--image_path",
                str(images[0]),
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
    line = str(exit_info.value.code)
    assert "\n" not in line and "not a file, a URL or a release name" in line and "simdinov2_vitb16" in line


def test_demo_figure_has_images_above_their_pca(images, tmp_path):
    model = tiny_vit(num_register_tokens=2, init_values=1e-5)
    batch = torch.cat([image_to_input(load_rgb_image(p), 4) for p in images])
    path = save_pca_figure(model, batch, tmp_path / "figures" / "pca.png")
    with Image.open(path) as im:
        assert im.size == (128 * len(images), 256)  # 32 px images enlarged 4 times to 128 px
        top = np.asarray(im)[:128:4, :128:4]
    first = np.asarray(Image.open(images[0]).convert("RGB"), dtype=int)
    assert np.abs(top.astype(int) - first).max() <= 2  # the first image, de-normalised
    assert model.training is False


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--threshold", "2"], "--threshold 2.0 is not a fraction of the first component's range"),
        (["--image_path", "/nonexistent.png"], "--image_path /nonexistent.png is not a file"),
        (["--image_size", "0"], "--image_size 0 is not a size"),
    ],
)
def test_bad_input_is_one_line(flags, message, images, tmp_path):
    ckpt = save_teacher(tiny_vit(v1=True), tmp_path / "checkpoint.pth")
    argv = [
        "--pretrained_weights",
        str(ckpt),
        "--image_path",
        str(images[0]),
        "--output_dir",
        str(tmp_path),
        *flags,
    ]
    with pytest.raises(SystemExit) as exit_info:
        pca_features.main(argv)
    line = str(exit_info.value.code)
    assert "\n" not in line and line.startswith("pca_features: error: ") and message in line, line
