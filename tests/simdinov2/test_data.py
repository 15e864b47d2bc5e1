"""Tests of simdinov2.data: readers, dataset strings, augmentations, masks, collate, samplers."""

from __future__ import annotations

import gzip
import itertools
import random
import shutil
import struct
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.transforms.v2 import functional as TF

from simdinov2.data import (
    DataAugmentationDINO,
    FashionMNIST,
    ImageFolderDataset,
    ImageNet,
    ImageNet22k,
    InfiniteSampler,
    MaskingGenerator,
    collate_data_and_cast,
    export_fashion_mnist_imagefolder,
    make_classification_eval_transform,
    make_classification_train_transform,
    make_data_loader,
    make_dataset,
    to_list,
)
from simdinov2.data.augmentations import (
    DINOV2_BLUR_KERNEL,
    IMAGENET_MEAN,
    PILGaussianBlur,
    ToNormalizedTensor,
    gaussian_blur_array,
)
from simdinov2.data.datasets import UnreadableImageError, parse_idx
from simdinov2.data.samplers import seeded_rng


# --------------------------------------------------------------------------- IDX / Fashion-MNIST
def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def tiny_idx_root(tmp_path: Path) -> Path:
    """A fake Fashion-MNIST folder: 7 train / 5 test images of 6x5 pixels."""
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 7), ("t10k", 5)):
        images = rng.integers(0, 256, (n, 6, 5), dtype=np.uint8)
        labels = (np.arange(n) * 3) % 10
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            with gzip.open(tmp_path / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(_idx_bytes(array))
        np.save(tmp_path / f"{prefix}-expected-images.npy", images)
    return tmp_path


def test_idx_parser_reads_header_and_payload(tiny_idx_root: Path) -> None:
    train = FashionMNIST("TRAIN", root=tiny_idx_root)
    expected = np.load(tiny_idx_root / "train-expected-images.npy")
    assert train.images.shape == (7, 6, 5) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images, expected)
    np.testing.assert_array_equal(train.targets, (np.arange(7) * 3) % 10)
    image, label = train[2]
    assert isinstance(image, Image.Image) and image.mode == "L" and image.size == (5, 6)
    np.testing.assert_array_equal(np.asarray(image), expected[2])
    assert label == 6 and isinstance(label, int)
    test = FashionMNIST("TEST", root=tiny_idx_root)
    val = FashionMNIST("VAL", root=tiny_idx_root)  # alias of TEST
    assert len(test) == len(val) == 5
    np.testing.assert_array_equal(test.images, val.images)


def test_idx_parser_rejects_bad_files() -> None:
    good = _idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    assert parse_idx(good).shape == (2, 3)
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match="payload"):
        parse_idx(good[:-1])


def test_fashion_mnist_missing_files_say_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST("TRAIN", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message
    assert "apt-get install dataset-fashion-mnist" in message and "\n" not in message
    with pytest.raises(ValueError, match="TRAIN or TEST"):
        FashionMNIST("HOLDOUT", root=tmp_path)


def test_real_fashion_mnist_both_splits(fashion_mnist_root: Path) -> None:
    for split, n in (("TRAIN", 60000), ("TEST", 10000)):
        ds = FashionMNIST(split, root=fashion_mnist_root)
        assert ds.images.shape == (n, 28, 28) and ds.images.dtype == np.uint8
        assert ds.targets.shape == (n,)
        # Fashion-MNIST is balanced: every one of the 10 classes has n/10 images.
        np.testing.assert_array_equal(np.bincount(ds.targets, minlength=10), np.full(10, n // 10))
        image, label = ds[n - 1]
        assert image.mode == "L" and image.size == (28, 28) and 0 <= label <= 9
        assert 0 < ds.images[:100].mean() < 255


# --------------------------------------------------------------------------- augmentations
def _rgb(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("global_size,local_size,n_local", [(28, 12, 2), (224, 96, 8)])
def test_multicrop_shapes(global_size: int, local_size: int, n_local: int) -> None:
    aug = DataAugmentationDINO(
        global_crops_size=global_size, local_crops_size=local_size, local_crops_number=n_local
    )
    image = _rgb(300, 260) if global_size > 100 else Image.fromarray(np.full((28, 28), 90, dtype=np.uint8))
    out = aug(image)
    assert set(out) == {"global_crops", "global_crops_teacher", "local_crops"}
    assert [tuple(t.shape) for t in out["global_crops"]] == [(3, global_size, global_size)] * 2
    assert [tuple(t.shape) for t in out["local_crops"]] == [(3, local_size, local_size)] * n_local
    assert all(t.dtype == torch.float32 for t in out["global_crops"] + out["local_crops"])
    assert all(a is b for a, b in zip(out["global_crops"], out["global_crops_teacher"], strict=True))


def test_flat_layout_matches_dict_layout() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))  # grayscale
    kwargs = dict(global_crops_size=28, local_crops_size=12, local_crops_number=3)
    torch.manual_seed(5)
    as_dict = DataAugmentationDINO(**kwargs)(image)
    torch.manual_seed(5)
    as_list = DataAugmentationDINO(**kwargs, flat=True)(image)
    assert isinstance(as_list, list) and len(as_list) == 5
    for a, b in zip(to_list(as_dict), as_list, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(6)
    other = DataAugmentationDINO(**kwargs, flat=True)(image)
    assert not torch.equal(other[0], as_list[0])  # random, not constant


def test_blur_is_each_trees_own_and_matches_its_reference() -> None:
    image = np.random.default_rng(3).integers(0, 256, (28, 21, 3), dtype=np.uint8)
    # v2: DINOv2's 9-tap kernel whatever the crop size (torchvision's GaussianBlur values).
    assert DINOV2_BLUR_KERNEL == 9
    for k, sigma in ((3, 0.7), (5, 1.9), (9, 1.3)):
        ours = np.rint(gaussian_blur_array(image.astype(np.float32), k, sigma))
        ref = TF.gaussian_blur_image(torch.from_numpy(image).permute(2, 0, 1), [k, k], [sigma, sigma])
        assert np.abs(ours - ref.permute(1, 2, 0).numpy()).max() <= 1
    v2 = DataAugmentationDINO(global_crops_size=28, local_crops_size=12, local_crops_number=1)
    blurs = [
        t
        for tr in (v2.global_transfo1, v2.local_transfo)
        for t in tr.transforms
        if "Blur" in type(t).__name__
    ]
    assert [b.kernel_size for b in blurs] == [9, 9]  # the local crops too, not a smaller kernel
    # v1: PIL's blur with the drawn radius (not truncated to a kernel size).
    v1 = DataAugmentationDINO(global_crops_size=28, local_crops_size=12, local_crops_number=1, blur="dino")
    assert all(
        isinstance(t, PILGaussianBlur) for t in v1.global_transfo1.transforms if "Blur" in type(t).__name__
    )
    pil = Image.fromarray(image)
    torch.manual_seed(0)
    radius = float(torch.empty(1).uniform_(0.1, 2.0).item())
    torch.manual_seed(0)
    ours = PILGaussianBlur(p=1.0)(pil)
    assert np.array_equal(np.asarray(ours), np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=radius))))
    with pytest.raises(ValueError, match="blur"):
        DataAugmentationDINO(blur="scaled")


def test_normalisation_and_classification_transforms() -> None:
    mean_color = np.array(IMAGENET_MEAN) * 255
    flat = Image.fromarray(np.broadcast_to(np.rint(mean_color), (10, 10, 3)).astype(np.uint8))
    assert ToNormalizedTensor()(flat).abs().max() < 0.01
    eval_tf = make_classification_eval_transform(crop_size=28)
    gray = Image.fromarray(np.zeros((28, 40), dtype=np.uint8))
    assert tuple(eval_tf(gray).shape) == (3, 28, 28)
    assert tuple(
        make_classification_eval_transform(resize_size=256, crop_size=224)(_rgb(300, 400)).shape
    ) == (3, 224, 224)
    assert tuple(make_classification_train_transform(crop_size=28)(gray).shape) == (3, 28, 28)


def test_bad_augmentation_arguments() -> None:
    with pytest.raises(ValueError, match="local_crops_number"):
        DataAugmentationDINO(local_crops_number=-1)
    with pytest.raises(ValueError, match="global_crops_scale"):
        DataAugmentationDINO(global_crops_scale=(0.9, 0.2))


# --------------------------------------------------------------------------- masks and collate
def test_masking_generator_respects_budget() -> None:
    random.seed(0)
    grid = 14
    generator = MaskingGenerator(grid, max_num_patches=0.5 * grid * grid)
    assert not generator(0).any()
    for target in (10, 40, 98):
        counts = []
        for _ in range(30):
            mask = generator(target)
            assert mask.shape == (grid, grid) and mask.dtype == bool
            assert mask.sum() <= target
            counts.append(mask.sum())
        assert np.mean(counts) >= 0.8 * target
    tiny = MaskingGenerator((7, 7), max_num_patches=24.5)
    assert 0 < tiny(20).sum() <= 20


def _fake_samples(batch: int, n_local: int, global_size: int = 8, local_size: int = 4) -> list:
    samples = []
    for b in range(batch):
        crops = {
            "global_crops": [torch.full((3, global_size, global_size), 10.0 * b + k) for k in range(2)],
            "local_crops": [
                torch.full((3, local_size, local_size), 100.0 + 10 * b + k) for k in range(n_local)
            ],
        }
        crops["global_crops_teacher"] = crops["global_crops"]
        samples.append((crops, b))
    return samples


def test_collate_shapes_order_and_masks() -> None:
    random.seed(1)
    batch, n_local, grid = 5, 3, 7
    n_tokens = grid * grid
    generator = MaskingGenerator(grid, max_num_patches=0.5 * n_tokens)
    out = collate_data_and_cast(
        _fake_samples(batch, n_local),
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        dtype=torch.bfloat16,
        n_tokens=n_tokens,
        mask_generator=generator,
    )
    globals_, locals_ = out["collated_global_crops"], out["collated_local_crops"]
    assert tuple(globals_.shape) == (2 * batch, 3, 8, 8) and globals_.dtype == torch.bfloat16
    assert tuple(locals_.shape) == (n_local * batch, 3, 4, 4)
    # crop-major: row k * B + b is crop k of image b
    assert globals_[1 * batch + 3, 0, 0, 0].item() == 31.0
    assert locals_[2 * batch + 4, 0, 0, 0].item() == 142.0
    masks = out["collated_masks"]
    assert masks.shape == (2 * batch, n_tokens) and masks.dtype == torch.bool
    per_crop = masks.sum(1)
    assert int((per_crop > 0).sum()) == int(2 * batch * 0.5)
    assert per_crop.max() <= 0.5 * n_tokens
    assert torch.equal(out["mask_indices_list"], masks.flatten().nonzero().flatten())
    assert out["n_masked_patches"].item() == masks.sum().item() == len(out["masks_weight"])
    # each masked crop's patch weights sum to 1 (CosinePatchLoss / iBOT normalisation)
    assert out["masks_weight"].sum().item() == pytest.approx(int((per_crop > 0).sum()), rel=1e-5)
    assert out["upperbound"] >= out["n_masked_patches"].item()


def test_collate_without_masking() -> None:
    out = collate_data_and_cast(
        _fake_samples(2, 0),
        (0.1, 0.5),
        mask_probability=0.0,
        dtype=torch.float32,
        n_tokens=4,
        mask_generator=MaskingGenerator(2),
    )
    assert out["collated_masks"].shape == (4, 4) and not out["collated_masks"].any()
    assert out["collated_local_crops"].shape[0] == 0 and out["n_masked_patches"].item() == 0


# --------------------------------------------------------------------------- datasets and strings
def test_imagefolder_dataset(tiny_imagefolder: Path) -> None:
    ds = ImageFolderDataset(tiny_imagefolder / "train")
    class_dirs = sorted(p.name for p in (tiny_imagefolder / "train").iterdir() if p.is_dir())
    assert ds.classes == class_dirs and len(ds.classes) == 3
    n_files = sum(1 for p in (tiny_imagefolder / "train").rglob("*.png"))
    assert len(ds) == n_files > 0
    image, target = ds[len(ds) - 1]
    assert image.mode == "RGB" and target == 2
    np.testing.assert_array_equal(np.bincount(ds.get_targets()), np.bincount([t for _, t in ds.samples]))


def test_imagefolder_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    (tmp_path / "noimages" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path / "noimages")
    (tmp_path / "loose").mkdir()
    _rgb(8, 8).save(tmp_path / "loose" / "a.png")
    with pytest.raises(ValueError, match="move them into class sub-folders"):
        ImageFolderDataset(tmp_path / "loose")
    bad = tmp_path / "corrupt" / "cat" / "broken.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"definitely not a jpeg")
    ds = ImageFolderDataset(tmp_path / "corrupt")
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        ds[0]


def _write_16bit_gradient(path: Path) -> np.ndarray:
    """A real 16-bit grayscale PNG (PIL from a uint16 array) spanning the whole 0..65535 range."""
    levels = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode == "I;16"  # what Pillow makes of it (convert("RGB") would clip it)
    return levels


def test_16bit_png_is_scaled_to_8bit_not_saturated(tmp_path: Path) -> None:
    levels = _write_16bit_gradient(tmp_path / "root" / "a" / "deep.png")
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / "root" / "a" / "rgb.png")
    dataset = ImageFolderDataset(tmp_path / "root")
    image = dataset.get_image(0)
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    expected = np.floor(levels.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(pixels[..., 0], expected)
    assert (pixels == 255).mean() < 0.01  # clipping made about 99.6% of this gradient 255
    assert np.unique(pixels).size == 256  # every 8-bit level is used
    np.testing.assert_array_equal(np.asarray(dataset.get_image(1)), 7)  # 8-bit images unchanged


def test_16bit_images_through_the_augmentation_and_deeper_images_refused(tmp_path: Path) -> None:
    from simdinov2.data.augmentations import ToRGB
    from simdinov2.data.datasets import UnreadableImageError, load_rgb_image

    levels = _write_16bit_gradient(tmp_path / "deep.png")
    pixels = np.asarray(ToRGB()(Image.open(tmp_path / "deep.png")))
    assert (
        pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255 and pixels[32, 0, 0] == round(levels[32, 0] / 257)
    )
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "int32.tif")
    with pytest.raises(
        UnreadableImageError, match=r"int32.tif is a 32-bit integer image with values in \[70000, 70000\]"
    ):
        load_rgb_image(tmp_path / "int32.tif")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(UnreadableImageError, match="float.tif is a floating-point image"):
        load_rgb_image(tmp_path / "float.tif")


def test_dataset_strings(
    tiny_imagefolder: Path, tiny_idx_root: Path, mini_imagenet: Path, tmp_path: Path
) -> None:
    train_dir = tiny_imagefolder / "train"
    folder = make_dataset(f"ImageFolder:root={train_dir}")
    assert isinstance(folder, ImageFolderDataset) and len(folder) == len(ImageFolderDataset(train_dir))
    assert isinstance(make_dataset(str(train_dir)), ImageFolderDataset)  # bare path
    fm = make_dataset(f"FashionMNIST:split=TEST:root={tiny_idx_root}", transform=lambda im: im.size)
    assert isinstance(fm, FashionMNIST) and len(fm) == 5 and fm[0][0] == (5, 6)
    assert len(make_dataset(f"FashionMNIST:split=train:root={tiny_idx_root}")) == 7
    in22k = make_dataset(f"ImageNet22k:root={train_dir}:extra={tmp_path}")
    assert isinstance(in22k, ImageNet22k) and len(in22k) == len(folder)
    extra = tmp_path / "extra"
    ImageNet.dump_extra(mini_imagenet, extra)
    for split in ("TRAIN", "VAL", "TEST"):
        ds = make_dataset(f"ImageNet:split={split}:root={mini_imagenet}:extra={extra}")
        assert isinstance(ds, ImageNet) and len(ds) > 0


@pytest.mark.parametrize(
    "bad,fragment",
    [
        ("", "empty"),
        ("Foo:root=/x", "unknown dataset 'Foo'"),
        ("ImageNet:root=/x:extra=/y", "missing split"),
        ("ImageNet:split=TRAINING:root=/x", "split must be"),
        ("ImageFolder:root", "not key=value"),
        ("ImageFolder:root=/x:color=red", "unknown key 'color'"),
        ("ImageFolder:root=/x:root=/y", "given twice"),
        ("/definitely/not/a/folder", "does not exist"),  # not "unknown dataset"
    ],
)
def test_bad_dataset_strings(bad: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        make_dataset(bad)
    message = str(info.value)
    assert fragment in message and "expected" in message and "\n" not in message


def test_imagenet_reader_on_mini_tree(mini_imagenet: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    with pytest.raises(FileNotFoundError) as info:
        ImageNet("TRAIN", root=mini_imagenet, extra=extra)
    assert f"python prepare.py --root {mini_imagenet} --extra {extra}" in str(info.value)
    counts = ImageNet.dump_extra(mini_imagenet, extra)
    label_ids = [line.split(",")[0] for line in (mini_imagenet / "labels.txt").read_text().splitlines()]
    for split in ("TRAIN", "VAL"):
        ds = ImageNet(split, root=mini_imagenet, extra=extra)
        files = sorted((mini_imagenet / split.lower()).rglob("*.JPEG"))
        assert len(ds) == counts[split] == len(files)
        assert sorted(Path(ds.image_path(i)) for i in range(len(ds))) == files
        for i in range(len(ds)):  # target = row of the folder's class in labels.txt
            assert ds.get_target(i) == label_ids.index(Path(ds.image_path(i)).parent.name)
        assert list(ds.get_class_ids()) == label_ids
        image, target = ds[0]
        assert image.mode == "RGB" and target == ds.get_targets()[0]
    test = ImageNet("TEST", root=mini_imagenet, extra=extra)
    assert len(test) == len(list((mini_imagenet / "test").glob("*.JPEG"))) and test[0][1] == -1


def test_imagenet_subset_has_no_fixed_sizes(mini_imagenet: Path, tmp_path: Path) -> None:
    subset = tmp_path / "subset"
    shutil.copytree(mini_imagenet, subset)
    shutil.rmtree(subset / "test")
    shutil.rmtree(subset / "train" / "n01443537")
    first = sorted((subset / "train" / "n01440764").iterdir())[0]
    first.unlink()
    counts = ImageNet.dump_extra(subset, subset / "extra")
    assert set(counts) == {"TRAIN", "VAL"}
    ds = ImageNet("TRAIN", root=subset, extra=subset / "extra")
    assert len(ds) == sum(1 for _ in (subset / "train").rglob("*.JPEG"))
    assert set(ds.get_targets().tolist()) == {0, 2}  # labels.txt rows, not renumbered
    assert not (subset / "extra" / "entries-TEST.npy").exists()


# --------------------------------------------------------------------------- samplers and loaders
def _take(sampler: InfiniteSampler, n: int) -> list[int]:
    return list(itertools.islice(iter(sampler), n))


@pytest.mark.parametrize("n", [10, 11])
def test_infinite_sampler_shards_and_epochs(n: int) -> None:
    ranks = [InfiniteSampler(n, shuffle=True, seed=3, start=r, step=2) for r in range(2)]
    first_epoch = [_take(s, s.per_epoch) for s in ranks]
    assert set(first_epoch[0]).isdisjoint(first_epoch[1])
    assert sorted(first_epoch[0] + first_epoch[1]) == list(range(n))
    stream = _take(ranks[0], 5 * ranks[0].per_epoch)
    epochs = [stream[i * ranks[0].per_epoch : (i + 1) * ranks[0].per_epoch] for i in range(5)]
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled each epoch
    assert _take(InfiniteSampler(n, seed=3, start=0, step=2), 30) == _take(ranks[0], 30)
    assert _take(InfiniteSampler(n, seed=4, start=0, step=2), 30) != _take(ranks[0], 30)
    assert _take(InfiniteSampler(n, shuffle=False, start=1, step=2), 6) == [1, 3, 5, 7, 9, 1]


def test_infinite_sampler_advance_resumes_stream() -> None:
    full = _take(InfiniteSampler(13, seed=0, start=1, step=3), 40)
    for advance in (0, 3, 4, 9, 17):  # inside the first epoch, on and across epoch boundaries
        resumed = _take(InfiniteSampler(13, seed=0, start=1, step=3, advance=advance), 40 - advance)
        assert resumed == full[advance:]
    with pytest.raises(ValueError, match="fewer than the 4 processes"):
        InfiniteSampler(3, start=0, step=4)


class _NoisyDataset(torch.utils.data.Dataset):
    """Item i = i + random noise from torch, numpy and `random`: shows which RNG state loading saw."""

    def __len__(self) -> int:
        return 23

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), torch.rand(1).item(), np.random.rand(), random.random()])


def _batches(num_workers: int, advance: int, n: int) -> list[torch.Tensor]:
    loader = make_data_loader(
        _NoisyDataset(), batch_size=4, num_workers=num_workers, seed=7, sampler_advance=advance
    )
    return [batch for batch in itertools.islice(iter(loader), n)]


@pytest.mark.slow
def test_loader_batches_depend_only_on_seed_and_position() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    full = _batches(num_workers=0, advance=0, n=8)
    assert torch.equal(torch.get_rng_state(), before)  # loading leaves the trainer's RNG alone
    resumed = _batches(num_workers=0, advance=3 * 4, n=5)
    for a, b in zip(full[3:], resumed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with_workers = _batches(num_workers=2, advance=0, n=4)
    for a, b in zip(full, with_workers, strict=False):  # the first 4 of the 8
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    noise = torch.cat(full)[:, 1:]
    assert len(torch.unique(noise[:, 0])) == len(noise)  # every sample got its own seed


def test_loader_collate_is_seeded_and_other_sampler_types() -> None:
    def collate(items: list) -> torch.Tensor:
        return torch.stack(items).sum(0) + random.random()

    kwargs = dict(batch_size=4, num_workers=0, seed=2, collate_fn=collate)
    a = list(itertools.islice(iter(make_data_loader(_NoisyDataset(), **kwargs)), 3))
    b = list(itertools.islice(iter(make_data_loader(_NoisyDataset(), **kwargs)), 3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    dist_loader = make_data_loader(_NoisyDataset(), batch_size=5, sampler_type="distributed", drop_last=False)
    assert isinstance(dist_loader.sampler, torch.utils.data.DistributedSampler) and len(dist_loader) == 5
    plain = make_data_loader(_NoisyDataset(), batch_size=5, sampler_type=None, shuffle=False, drop_last=False)
    assert torch.equal(next(iter(plain))[:, 0], torch.arange(5.0))
    with pytest.raises(ValueError, match="sampler_type must be one of"):
        make_data_loader(_NoisyDataset(), batch_size=2, sampler_type="epochal")
    with pytest.raises(ValueError, match="needs sampler_type='infinite'"):
        make_data_loader(_NoisyDataset(), batch_size=2, sampler_type="distributed", sampler_advance=4)


def test_seeded_rng_restores_state() -> None:
    random.seed(3)
    expected = random.random()
    random.seed(3)
    with seeded_rng(123):
        inside = (torch.rand(1).item(), random.random())
    assert random.random() == expected
    with seeded_rng(123):
        assert (torch.rand(1).item(), random.random()) == inside


def test_dino_pipeline_end_to_end(tiny_imagefolder: Path) -> None:
    """ImageFolder -> multi-crop -> infinite loader -> collate with masks, as the v2 trainer uses it."""
    aug = DataAugmentationDINO(global_crops_size=28, local_crops_size=12, local_crops_number=2)
    ds = make_dataset(f"ImageFolder:root={tiny_imagefolder / 'train'}", transform=aug)
    n_tokens = (28 // 4) ** 2
    collate = partial(
        collate_data_and_cast,
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        dtype=torch.float32,
        n_tokens=n_tokens,
        mask_generator=MaskingGenerator(7, max_num_patches=0.5 * n_tokens),
    )
    loader = make_data_loader(ds, batch_size=6, num_workers=0, seed=0, collate_fn=collate)
    batch = next(iter(loader))
    assert tuple(batch["collated_global_crops"].shape) == (12, 3, 28, 28)
    assert tuple(batch["collated_local_crops"].shape) == (12, 3, 12, 12)
    assert tuple(batch["collated_masks"].shape) == (12, n_tokens)
    assert torch.isfinite(batch["collated_global_crops"]).all()


def test_loader_shards_over_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    from simdinov2 import distributed

    seen = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(distributed, "get_world_size", lambda: 2)
        loader = make_data_loader(_NoisyDataset(), batch_size=4, seed=1, drop_last=True)
        indices = torch.cat(list(itertools.islice(iter(loader), 3)))[:, 0].long().tolist()
        seen.append(indices[: len(range(rank, 23, 2))])  # this rank's share of the first epoch
    assert [len(s) for s in seen] == [12, 11]
    assert set(seen[0]).isdisjoint(seen[1]) and sorted(seen[0] + seen[1]) == list(range(23))


def test_export_fashion_mnist_imagefolder(tiny_idx_root: Path, tmp_path: Path) -> None:
    from simdinov2.data.datasets.fashion_mnist import class_folder_name

    out = tmp_path / "fm"
    train_dir = export_fashion_mnist_imagefolder(out, "TRAIN", root=tiny_idx_root)
    assert train_dir == out / "train"
    ds = ImageFolderDataset(train_dir)
    labels = (np.arange(7) * 3) % 10
    # one folder per class, even an empty one, so ImageFolder's class index is the label
    assert ds.classes == [class_folder_name(label) for label in range(10)]
    assert sorted(ds.get_targets().tolist()) == sorted(labels.tolist())
    image = Image.open(train_dir / class_folder_name(6) / "2.png")
    assert image.mode == "L" and image.size == (5, 6)
    np.testing.assert_array_equal(np.asarray(image), np.load(tiny_idx_root / "train-expected-images.npy")[2])
    val_dir = export_fashion_mnist_imagefolder(
        out, "TEST", root=tiny_idx_root, limit_per_class=1, image_size=9, rgb=True, classes=[0, 3]
    )
    assert val_dir == out / "val" and sorted(p.name for p in val_dir.iterdir() if p.is_dir()) == [
        "0_T-shirt_top",
        "3_Dress",
    ]
    image = Image.open(next((val_dir / "3_Dress").iterdir()))
    assert image.mode == "RGB" and image.size == (9, 9)
    # a re-export with other arguments replaces the old tree instead of mixing with it
    export_fashion_mnist_imagefolder(out, "TEST", root=tiny_idx_root, classes=[3])
    assert sorted(p.name for p in val_dir.iterdir() if p.is_dir()) == ["3_Dress"]


@pytest.mark.gpu
def test_loader_pins_memory_on_cuda() -> None:
    loader = make_data_loader(_NoisyDataset(), batch_size=4, seed=0)
    batch = next(iter(loader))
    assert batch.is_pinned()
    assert batch.to("cuda", non_blocking=True).device.type == "cuda"


def test_loader_workers_are_capped_at_the_available_cores(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging
    import os

    from simdinov2.data import samplers
    from simdinov2.data.samplers import available_cores, make_data_loader, usable_num_workers
    from simdinov2.eval.features import make_eval_loader

    # The cap is logged once per (request, cores): forget the requests earlier tests in this process made
    # (with 2 cores, the eval commands' default of 10 workers is the same request as cores + 8).
    monkeypatch.setattr(samplers, "_capped_requests", set())
    cores = available_cores()
    if hasattr(os, "sched_getaffinity"):
        assert cores == len(os.sched_getaffinity(0))
    assert usable_num_workers(0) == 0 and usable_num_workers(cores) == cores
    dataset = torch.utils.data.TensorDataset(torch.zeros(4, 1), torch.zeros(4))
    with caplog.at_level(logging.INFO, logger="simdinov2"):
        assert make_eval_loader(dataset, 2, num_workers=cores + 8).num_workers == cores
        assert make_data_loader(dataset, 2, num_workers=cores + 8, sampler_type="none").num_workers == cores
    capped = [r.getMessage() for r in caplog.records if "capped" in r.getMessage()]
    assert capped == [f"num_workers {cores + 8} capped at {cores}: the CPU cores available to this process"]
