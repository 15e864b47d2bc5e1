"""The demo's figures: the loss curve of the run, the CLS attention of the trained teacher and the PCA of
its patch features.

`save_figures` is the one place the demo draws: a new figure of a run (e.g. a PCA of patch features) is
one more line there, and its file name one more entry of `FIGURES`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from simdinov2.data.augmentations import IMAGENET_MEAN, IMAGENET_STD
from simdinov2.eval.attention_maps import cls_attention_maps
from simdinov2.eval.features import dataset_labels
from simdinov2.eval.patch_pca import save_pca_figure
from simdinov2.tools.plot_log import plot_run

FIGURES = ("loss_curve.png", "attention.png", "pca.png")  # what save_figures writes into a run's folder


def save_figures(output_dir: Path, teacher: nn.Module, test_set: Dataset, title: str) -> list[Path]:
    """Every figure of a demo run, into `output_dir` (names: `FIGURES`)."""
    class_names = getattr(test_set, "classes", None)
    return [
        plot_run(output_dir, output_dir / "loss_curve.png", title=title),
        save_attention_figure(teacher.cpu(), test_set, output_dir / "attention.png", class_names=class_names),
        # the first 3 principal components of the patch tokens as RGB, one PCA over 6 test images
        save_pca_figure(
            teacher.cpu(), torch.stack([test_set[i][0] for i in range(6)]), output_dir / "pca.png"
        ),
        # further figures of the trained teacher go here (add their file names to FIGURES)
    ]


def first_image_per_class(dataset: Dataset, n_images: int) -> list[int]:
    """Indices of the first image of each of the first `n_images` classes."""
    labels = dataset_labels(dataset)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(min(len(dataset), 1000))]  # type: ignore[arg-type]
    labels = [int(label) for label in labels]
    return [labels.index(cls) for cls in sorted(set(labels))][:n_images]


@torch.no_grad()
def save_attention_figure(
    model: nn.Module,
    dataset: Dataset,
    out: str | Path,
    n_images: int = 6,
    class_names: Sequence[str] | None = None,
) -> Path:
    """One row per test image (the first image of each of the first `n_images` classes): the image, then
    the last block's CLS->patch attention of every head (`simdinov2.eval.attention_maps.cls_attention_maps`),
    one colour block per patch drawn over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rows = []
    for index in first_image_per_class(dataset, n_images):
        image, label = dataset[index]
        attention = cls_attention_maps(model, image.unsqueeze(0))  # [heads, h, w]
        picture = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        rows.append((picture, attention.numpy(), int(label)))
    heads = rows[0][1].shape[0]
    fig, axes = plt.subplots(
        len(rows), heads + 1, figsize=(1.6 * (heads + 1), 1.6 * len(rows)), squeeze=False
    )
    for r, (picture, attention, label) in enumerate(rows):
        axes[r][0].imshow(picture)
        name = class_names[label] if class_names and label < len(class_names) else str(label)
        axes[r][0].set_ylabel(name, fontsize=7)
        extent = (0, picture.shape[1], picture.shape[0], 0)
        for h in range(heads):
            axes[r][h + 1].imshow(picture.mean(axis=2), cmap="gray", extent=extent)
            axes[r][h + 1].imshow(
                attention[h], cmap="inferno", alpha=0.6, interpolation="nearest", extent=extent
            )
            if r == 0:
                axes[r][h + 1].set_title(f"head {h}", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("image", fontsize=8)
    fig.suptitle("CLS attention of the last block (trained teacher)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
