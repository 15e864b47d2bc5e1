"""Frozen-backbone feature extraction shared by every evaluation of both trees (k-NN, logistic
regression, v1 and v2 CLIs).

What this module owns:
- `IndexedDataset`: items become `(image, (index, target))`, so a batch says which dataset rows it holds.
- `ShardSampler`: the rows of one process (`rank::world`), optionally padded so that every process sees
  the same number of rows (feature extraction gathers once per batch, so all ranks must take the same
  number of steps; evaluation loops that only all-reduce at the end use it unpadded and count each row
  exactly once).
- `make_eval_loader`: the two combined into a `DataLoader`.
- `extract_features`: run a model over a loader, gather every rank's features and labels, and return
  them ordered by dataset index on every rank (DINO's "distributed feature extraction").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from simdinov2 import distributed
from simdinov2.data.samplers import usable_num_workers
from simdinov2.errors import UserError
from simdinov2.logging import MetricLogger
from simdinov2.precision import autocast

logger = logging.getLogger("simdinov2")


class IndexedDataset(Dataset):
    """Wrap a classification dataset so that item `i` is `(image, (i, target))`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, tuple[int, Any]]:
        image, target = self.dataset[index]
        return image, (index, target)


class ShardSampler(Sampler[int]):
    """Deterministic `rank::world_size` shard of `range(num_samples)`, without shuffling.

    With `pad=True` the shards are made equally long by repeating the first indices (as
    `DistributedSampler` does); `extract_features` writes a repeated row twice to the same slot, so the
    padding never duplicates a sample in the result.
    """

    def __init__(
        self, num_samples: int, rank: int | None = None, world_size: int | None = None, pad: bool = True
    ):
        self.num_samples = int(num_samples)
        self.rank = distributed.get_rank() if rank is None else int(rank)
        self.world_size = distributed.get_world_size() if world_size is None else int(world_size)
        self.pad = pad

    def _indices(self) -> list[int]:
        indices = list(range(self.num_samples))
        if self.pad and self.num_samples > 0:
            total = math.ceil(self.num_samples / self.world_size) * self.world_size
            indices += [indices[i % self.num_samples] for i in range(total - self.num_samples)]
        return indices[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def make_eval_loader(
    dataset: Dataset, batch_size: int, num_workers: int = 0, pad: bool = True, with_indices: bool = True
) -> DataLoader:
    """An ordered, sharded loader over `dataset` for evaluation (see `ShardSampler` for `pad`); workers
    capped at the cores available (`usable_num_workers`)."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise UserError("the evaluation dataset is empty; check the dataset path")
    wrapped = IndexedDataset(dataset) if with_indices else dataset
    return DataLoader(
        wrapped,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), pad=pad),  # type: ignore[arg-type]
        num_workers=usable_num_workers(num_workers),
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
        persistent_workers=False,
    )


def l2_normalized(model: nn.Module | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """`images -> normalize(model(images))` in float32: the k-NN features of both trees (cosine
    similarity is then a plain dot product)."""

    def features(images: Tensor) -> Tensor:
        return F.normalize(model(images).float(), dim=1, p=2)

    return features


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None, Tensor]:
    """(images, indices or None, labels) from `(images, (indices, labels))` or `(images, labels)`."""
    images, meta = batch[0], batch[1]
    if isinstance(meta, (list, tuple)) and len(meta) == 2:
        return images, torch.as_tensor(meta[0]), torch.as_tensor(meta[1])
    return images, None, torch.as_tensor(meta)


def _all_gather_variable(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` (first dimension may differ per rank) over all ranks, in rank order."""
    world = distributed.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    max_count = max(counts)
    padded = tensor.new_zeros((max_count, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:c] for g, c in zip(gathered, counts, strict=True)], dim=0)


@torch.no_grad()
def extract_features(
    model: nn.Module | Callable[[Tensor], Tensor],
    loader: DataLoader,
    gather_on_cpu: bool = False,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    print_freq: int = 10,
) -> tuple[Tensor, Tensor]:
    """Features `[N, D]` (float32) and labels `[N]` (long) of `loader.dataset`, row i = dataset item i.

    Batches are `(images, (indices, labels))` as `make_eval_loader` yields; plain `(images, labels)`
    batches are accepted in a single process with an ordered loader. Every rank must iterate the same
    number of batches (a padded `ShardSampler` guarantees it): each batch's features are all-gathered,
    and every rank ends up holding the full result, on `device` (the model's) or on the CPU with
    `gather_on_cpu` (for feature banks larger than accelerator memory).
    """
    if device is None:
        first_param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        device = first_param.device if first_param is not None else distributed.get_device()
    storage_device = torch.device("cpu") if gather_on_cpu else device
    world = distributed.get_world_size()
    num_samples = len(loader.dataset)  # type: ignore[arg-type]
    features: Tensor | None = None
    labels = torch.full((num_samples,), -1, dtype=torch.long, device=storage_device)
    next_row = 0  # ordered single-process loaders without indices
    metric_logger = MetricLogger(delimiter="  ")
    for batch in metric_logger.log_every(loader, print_freq, header="Extracting features"):
        images, indices, targets = _split_batch(batch)
        if indices is None:
            if world > 1:
                raise ValueError(
                    "extract_features needs (image, (index, target)) batches with several processes; "
                    "wrap the dataset with IndexedDataset or use make_eval_loader"
                )
            indices = torch.arange(next_row, next_row + images.shape[0])
            next_row += images.shape[0]
        images = images.to(device, non_blocking=True)
        with autocast(device, autocast_dtype, cuda_only=True):
            batch_features = model(images)
        batch_features = batch_features.float()
        indices = indices.to(device=batch_features.device, dtype=torch.long)
        targets = targets.to(device=batch_features.device, dtype=torch.long)
        if world > 1:
            batch_features = _all_gather_variable(batch_features.contiguous())
            indices = _all_gather_variable(indices)
            targets = _all_gather_variable(targets)
        if features is None:
            features = torch.zeros(
                (num_samples, batch_features.shape[-1]), dtype=torch.float32, device=storage_device
            )
            logger.info("storing features of shape %s on %s", tuple(features.shape), storage_device)
        indices = indices.to(storage_device)
        features.index_copy_(0, indices, batch_features.to(storage_device))
        labels.index_copy_(0, indices, targets.to(storage_device))
    if features is None:
        raise ValueError("the loader yielded no batch; the dataset is empty")
    missing = int((labels < 0).sum().item())
    if missing:
        raise RuntimeError(
            f"{missing} of {num_samples} samples were not extracted: the loader's sampler must "
            "cover the whole dataset (use make_eval_loader)"
        )
    return features, labels


def class_balanced_subset(labels: Tensor, n_per_class: int, seed: int) -> Tensor:
    """Indices of at most `n_per_class` random samples of each class (all of them for n < 0), sorted.

    Used by the v2 k-NN's `--n-per-class-list` / `--n-tries` few-shot protocol; seeded so every rank
    draws the same subset."""
    if n_per_class < 0:
        return torch.arange(labels.shape[0])
    generator = torch.Generator().manual_seed(int(seed))
    labels_cpu = labels.cpu()
    chosen: list[Tensor] = []
    for cls in torch.unique(labels_cpu):
        members = torch.nonzero(labels_cpu == cls, as_tuple=False).flatten()
        order = torch.randperm(members.shape[0], generator=generator)
        chosen.append(members[order[:n_per_class]])
    return torch.sort(torch.cat(chosen)).values


def dataset_labels(dataset: Dataset) -> Sequence[int] | None:
    """Labels of a dataset without decoding images, when it exposes them (`targets` / `get_targets`)."""
    if hasattr(dataset, "get_targets"):
        return list(dataset.get_targets())  # type: ignore[attr-defined]
    if hasattr(dataset, "targets"):
        return list(dataset.targets)  # type: ignore[attr-defined]
    return None
