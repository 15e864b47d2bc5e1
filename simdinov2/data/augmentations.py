"""Image augmentations of both trees: DINO multi-crop and the linear-probe / k-NN transforms.

`DataAugmentationDINO` owns the multi-crop recipe (upstream DINO's, identical in v1 and v2):
two global crops and `local_crops_number` local crops, each a RandomResizedCrop (bicubic) with
horizontal flip, colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8 and grayscale p=0.2; Gaussian blur p=1.0 on
global 1, p=0.1 plus solarize p=0.2 on global 2, p=0.5 on the locals; ImageNet normalisation.

The Gaussian blur is each upstream tree's own (`blur=`): v1 (`"dino"`, DINO) blurs with PIL's
`ImageFilter.GaussianBlur(radius)`, radius ~ U(0.1, 2.0), not truncated to a fixed kernel; v2 (`"dinov2"`,
DINOv2) uses a 9-tap kernel, sigma ~ U(0.1, 2.0), on every crop, the 96-px locals included. Grayscale inputs
become 3-channel RGB first so every crop has the same shape.

Speed: every op runs on PIL images (C kernels) and draws its randomness from torch's default
generator, like torchvision. The crop parameters and colour jitter are torchvision's; blur, grayscale,
solarize and the final tensor conversion are small local ops because torchvision's PIL paths for them
round-trip through tensors (blur was ~10x slower on 28 px crops). The blur gives the same values as
`torchvision.transforms.v2.GaussianBlur` (same kernel, reflect padding), up to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter

from .datasets.image_folder import to_rgb

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN = IMAGENET_DEFAULT_MEAN
IMAGENET_STD = IMAGENET_DEFAULT_STD

# DINOv2 uses a 9-pixel blur kernel on 224-pixel crops; we keep that kernel/crop ratio.
# DINOv2's blur kernel size, the same for every crop size.
DINOV2_BLUR_KERNEL = 9
BLUR_KINDS = ("dino", "dinov2")


def _coin(p: float) -> bool:
    """One Bernoulli(p) draw from torch's default generator (p=1 / p=0 draw nothing)."""
    if p >= 1.0:
        return True
    if p <= 0.0:
        return False
    return bool(torch.rand(1).item() < p)


class ToRGB:
    """Any image (PIL of any mode, HxW[xC] uint8 array, CxHxW uint8 tensor) -> PIL RGB image."""

    def __call__(self, img: Any) -> Image.Image:
        if isinstance(img, torch.Tensor):
            if img.ndim == 2:
                img = img.unsqueeze(0)
            img = img.permute(1, 2, 0).cpu().numpy()
        if isinstance(img, np.ndarray):
            if img.dtype != np.uint8:
                raise ValueError(f"expected a uint8 image array, got dtype {img.dtype}")
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            img = Image.fromarray(img)
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL image, numpy array or tensor, got {type(img).__name__}")
        return to_rgb(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomResizedCrop:
    """torchvision's RandomResizedCrop parameters; crop + bicubic resize in one PIL call."""

    def __init__(
        self,
        size: int,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: int = Image.Resampling.BICUBIC,
    ) -> None:
        self.size = int(size)
        self.scale = [float(s) for s in scale]
        self.ratio = [float(r) for r in ratio]
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        top, left, height, width = T.RandomResizedCrop.get_params(img, self.scale, self.ratio)
        box = (left, top, left + width, top + height)
        return img.resize((self.size, self.size), self.interpolation, box=box)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={tuple(self.scale)}, bicubic)"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if _coin(self.p) else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomGrayscale:
    """Grayscale with probability p, kept 3-channel (same values as torchvision's PIL path)."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.convert("L").convert("RGB") if _coin(self.p) else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


@lru_cache(maxsize=64)
def _reflect_index(n: int, radius: int) -> np.ndarray:
    """Indices of a length-n axis reflect-padded by `radius` (torch's 'reflect' mode)."""
    idx = np.abs(np.arange(-radius, n + radius))
    period = 2 * (n - 1) if n > 1 else 1
    idx = idx % period
    return np.where(idx > n - 1, period - idx, idx)


def gaussian_blur_array(image: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an HxWxC float32 array, reflect padding (torchvision semantics)."""
    radius = kernel_size // 2
    x = np.arange(kernel_size, dtype=np.float32) - radius
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    weights /= weights.sum()
    height, width = image.shape[:2]
    out = image
    for axis, length in ((0, height), (1, width)):
        padded = np.take(out, _reflect_index(length, radius), axis=axis)
        acc = weights[0] * (padded[:length] if axis == 0 else padded[:, :length])
        for i in range(1, kernel_size):
            acc += weights[i] * (padded[i : i + length] if axis == 0 else padded[:, i : i + length])
        out = acc
    return out


class GaussianBlur:
    """With probability p, blur with a `kernel_size` Gaussian of sigma ~ U(sigma_min, sigma_max)."""

    def __init__(self, kernel_size: int, sigma: Sequence[float] = (0.1, 2.0), p: float = 0.5) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"blur kernel size must be odd and positive (got {kernel_size})")
        self.kernel_size = int(kernel_size)
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if not _coin(self.p):
            return img
        sigma = float(torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item())
        blurred = gaussian_blur_array(np.asarray(img, dtype=np.float32), self.kernel_size, sigma)
        return Image.fromarray(np.clip(np.rint(blurred), 0, 255).astype(np.uint8))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, sigma={self.sigma}, p={self.p})"


class PILGaussianBlur:
    """DINO v1: with probability p, PIL's Gaussian blur with radius ~ U(radius_min, radius_max)."""

    def __init__(self, p: float = 0.5, radius: Sequence[float] = (0.1, 2.0)) -> None:
        self.p = p
        self.radius = (float(radius[0]), float(radius[1]))

    def __call__(self, img: Image.Image) -> Image.Image:
        if not _coin(self.p):
            return img
        radius = float(torch.empty(1).uniform_(self.radius[0], self.radius[1]).item())
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(radius={self.radius}, p={self.p})"


def make_blur(kind: str, p: float) -> GaussianBlur | PILGaussianBlur:
    """The blur of one upstream tree: `"dino"` (v1, PIL radius) or `"dinov2"` (v2, 9-tap kernel)."""
    if kind == "dino":
        return PILGaussianBlur(p=p)
    if kind == "dinov2":
        return GaussianBlur(DINOV2_BLUR_KERNEL, p=p)
    raise ValueError(f"blur={kind!r} is not one of {', '.join(BLUR_KINDS)}")


class RandomSolarize:
    """With probability p, invert the pixels >= threshold (torchvision / PIL semantics)."""

    def __init__(self, threshold: int = 128, p: float = 0.2) -> None:
        self.threshold = threshold
        self.p = p
        self._lut = [i if i < threshold else 255 - i for i in range(256)] * 3

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.point(self._lut) if _coin(self.p) else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold}, p={self.p})"


class ToNormalizedTensor:
    """PIL RGB image -> float32 tensor [3, H, W], scaled to [0, 1] then (x - mean) / std."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # uint8 value v maps to v * scale + shift, per channel.
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(3, 1, 1)
        self._shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std, strict=True)]).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        array = np.asarray(img, dtype=np.uint8)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        chw = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return chw.to(torch.float32).mul_(self._scale).add_(self._shift)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def make_normalize_transform(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> ToNormalizedTensor:
    return ToNormalizedTensor(mean, std)


def _color_jittering() -> list:
    return [
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        RandomGrayscale(p=0.2),
    ]


class DataAugmentationDINO:
    """DINO / DINOv2 multi-crop augmentation.

    Called on one image, returns (DINOv2 layout)
    `{"global_crops": [g1, g2], "global_crops_teacher": [g1, g2], "local_crops": [l1, ..., ln]}`
    of float32 tensors [3, S, S]; with `flat=True` (v1 trainer) the list `[g1, g2, l1, ..., ln]`
    (the same as `to_list` of the dict). `blur`: `"dinov2"` (v2 tree) or `"dino"` (v1 tree), see the module
    docstring.
    """

    def __init__(
        self,
        global_crops_scale: Sequence[float] = (0.4, 1.0),
        local_crops_scale: Sequence[float] = (0.05, 0.4),
        local_crops_number: int = 8,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        flat: bool = False,
        blur: str = "dinov2",
    ) -> None:
        if local_crops_number < 0:
            raise ValueError(f"local_crops_number must be >= 0 (got {local_crops_number})")
        if global_crops_size < 1 or local_crops_size < 1:
            raise ValueError(
                f"crop sizes must be positive (got global {global_crops_size}, local {local_crops_size})"
            )
        for name, scale in (
            ("global_crops_scale", global_crops_scale),
            ("local_crops_scale", local_crops_scale),
        ):
            if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
                raise ValueError(f"{name} must be two numbers 0 < lo <= hi <= 1 (got {tuple(scale)})")
        self.global_crops_scale = tuple(float(s) for s in global_crops_scale)
        self.local_crops_scale = tuple(float(s) for s in local_crops_scale)
        self.local_crops_number = int(local_crops_number)
        self.global_crops_size = int(global_crops_size)
        self.local_crops_size = int(local_crops_size)
        self.flat = flat

        gs, ls = self.global_crops_size, self.local_crops_size
        normalize = ToNormalizedTensor(mean, std)
        self.to_rgb = ToRGB()

        def geometric(size: int, scale: tuple) -> list:
            return [RandomResizedCrop(size, scale=scale), RandomHorizontalFlip(p=0.5)]

        self.global_transfo1 = T.Compose(
            geometric(gs, self.global_crops_scale) + _color_jittering() + [make_blur(blur, 1.0), normalize]
        )
        self.global_transfo2 = T.Compose(
            geometric(gs, self.global_crops_scale)
            + _color_jittering()
            + [make_blur(blur, 0.1), RandomSolarize(threshold=128, p=0.2), normalize]
        )
        self.local_transfo = T.Compose(
            geometric(ls, self.local_crops_scale) + _color_jittering() + [make_blur(blur, 0.5), normalize]
        )

    def __call__(self, image: Any) -> dict[str, list[torch.Tensor]] | list[torch.Tensor]:
        image = self.to_rgb(image)  # once, not once per crop
        global_crops = [self.global_transfo1(image), self.global_transfo2(image)]
        local_crops = [self.local_transfo(image) for _ in range(self.local_crops_number)]
        if self.flat:
            return global_crops + local_crops
        return {
            "global_crops": global_crops,
            # The teacher sees the same two global crops as the student (DINOv2).
            "global_crops_teacher": list(global_crops),
            "local_crops": local_crops,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(global 2x{self.global_crops_size}px scale={self.global_crops_scale}, "
            f"local {self.local_crops_number}x{self.local_crops_size}px scale={self.local_crops_scale}, "
            f"blur={self.blur}, flat={self.flat})"
        )


def to_list(crops: dict[str, list[torch.Tensor]] | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """v1 layout `[g1, g2, l1, ..., ln]` from what `DataAugmentationDINO` returns."""
    if isinstance(crops, dict):
        return list(crops["global_crops"]) + list(crops["local_crops"])
    return list(crops)


def eval_resize_size(crop_size: int) -> int:
    """Resize side for evaluation: crop · 8/7 (256 for 224, 32 for 28)."""
    return int(round(crop_size * 8 / 7))


def make_classification_eval_transform(
    resize_size: int | None = None,
    crop_size: int = 224,
    interpolation: T.InterpolationMode = T.InterpolationMode.BICUBIC,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """k-NN / linear-probe evaluation: RGB, Resize(shorter side = resize_size, default crop·8/7)
    bicubic, CenterCrop(crop_size), normalise."""
    if resize_size is None:
        resize_size = eval_resize_size(crop_size)
    return T.Compose(
        [
            ToRGB(),
            T.Resize(resize_size, interpolation=interpolation, antialias=True),
            T.CenterCrop(crop_size),
            ToNormalizedTensor(mean, std),
        ]
    )


def make_classification_train_transform(
    crop_size: int = 224,
    interpolation: T.InterpolationMode = T.InterpolationMode.BICUBIC,
    hflip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Linear-probe training: RGB, RandomResizedCrop (scale 0.08-1) bicubic, flip, normalise."""
    ops: list = [ToRGB(), T.RandomResizedCrop(crop_size, interpolation=interpolation, antialias=True)]
    if hflip_prob > 0.0:
        ops.append(RandomHorizontalFlip(hflip_prob))
    ops.append(ToNormalizedTensor(mean, std))
    return T.Compose(ops)
