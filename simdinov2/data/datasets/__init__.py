"""Datasets of both trees; `simdinov2.data.make_dataset` builds them from DINOv2-style strings."""

from .fashion_mnist import (
    DEFAULT_FASHION_MNIST_ROOT,
    FASHION_MNIST_CLASSES,
    FashionMNIST,
    export_fashion_mnist_imagefolder,
    parse_idx,
    read_idx,
)
from .image_folder import IMG_EXTENSIONS, ImageFolderDataset, UnreadableImageError, load_rgb_image, to_rgb
from .image_net import ImageNet, ImageNet22k, read_labels
from .unlabeled import UnlabeledImageDataset

__all__ = [
    "DEFAULT_FASHION_MNIST_ROOT",
    "FASHION_MNIST_CLASSES",
    "FashionMNIST",
    "IMG_EXTENSIONS",
    "ImageFolderDataset",
    "ImageNet",
    "ImageNet22k",
    "UnlabeledImageDataset",
    "UnreadableImageError",
    "export_fashion_mnist_imagefolder",
    "load_rgb_image",
    "parse_idx",
    "read_idx",
    "read_labels",
    "to_rgb",
]
