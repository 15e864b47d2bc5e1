"""Samplers and the data-loader factory shared by the trainers and evals.

`InfiniteSampler` (DINOv2 style) yields an endless stream of dataset indices: epoch e is a
permutation seeded by (seed, e), identical on every rank, and rank r takes its items
`start, start + step, ...` (start = rank, step = world size) so ranks see disjoint shards.
`advance` skips that many items of this rank's stream in O(1), so a run resumed at iteration `it`
passes `advance = it * batch_size_per_gpu` and continues exactly where the saved run stood (upstream
left this at 0, so resumed runs replayed the first samples).

`make_data_loader(sampler_type="infinite")` also makes each sample's augmentation a pure function of
(seed, rank, position in the stream): before loading item k, torch's CPU generator, `random` and
numpy's global RNG are seeded from it (and restored afterwards), and each batch's collate (iBOT
masks) from its first sample. Batches are then the same whatever `num_workers` and whether or not the
run was interrupted and resumed, and data loading never disturbs the trainer's own RNG streams.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import signal
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torch.utils.data._utils.collate import default_collate

from simdinov2 import distributed

_SEED_MASK = (1 << 64) - 1
logger = logging.getLogger("simdinov2")
_capped_requests: set[tuple[int, int]] = set()  # (requested, cores) already reported by this process


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM or container allotment)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def usable_num_workers(requested: int) -> int:
    """`requested` loader workers, capped at the cores available: defaults sized for an 8-GPU node (10
    workers) would oversubscribe a small machine and make torch warn on every loader. One log line per
    process says when the cap applies."""
    cores = available_cores()
    if requested <= cores:
        return max(int(requested), 0)
    if (requested, cores) not in _capped_requests:
        _capped_requests.add((requested, cores))
        logger.info("num_workers %d capped at %d: the CPU cores available to this process", requested, cores)
    return cores


class SamplerType(StrEnum):
    INFINITE = "infinite"
    DISTRIBUTED = "distributed"
    NONE = "none"

    @classmethod
    def parse(cls, value: str | SamplerType | None) -> SamplerType:
        if value is None:
            return cls.NONE
        if isinstance(value, SamplerType):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            valid = ", ".join(t.value for t in cls)
            raise ValueError(f"sampler_type must be one of {valid} (got {value!r})") from None


def mix_seed(*values: int) -> int:
    """A well-spread 64-bit seed from a tuple of non-negative integers."""
    state = np.random.SeedSequence([int(v) & _SEED_MASK for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 32) | int(state[1])


class InfiniteSampler(Sampler[int]):
    """Endless, sharded, deterministic index stream (see the module docstring)."""

    def __init__(
        self,
        sample_count: int,
        shuffle: bool = True,
        seed: int = 0,
        start: int | None = None,
        step: int | None = None,
        advance: int = 0,
    ) -> None:
        self.sample_count = int(sample_count)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.start = distributed.get_rank() if start is None else int(start)
        self.step = distributed.get_world_size() if step is None else int(step)
        self.advance = int(advance)
        if self.step < 1 or not 0 <= self.start < self.step:
            raise ValueError(
                f"InfiniteSampler needs 0 <= start < step (got start={self.start}, step={self.step})"
            )
        if self.sample_count < self.step:
            raise ValueError(
                f"dataset has {self.sample_count} samples, fewer than the {self.step} processes reading it; "
                "use a larger dataset or fewer processes"
            )
        if self.advance < 0:
            raise ValueError(f"advance must be >= 0 (got {self.advance})")
        # Items of one epoch that fall on this rank.
        self.per_epoch = len(range(self.start, self.sample_count, self.step))

    def epoch_order(self, epoch: int) -> list[int]:
        """All indices of `epoch` in stream order (before sharding), the same on every rank."""
        if not self.shuffle:
            return list(range(self.sample_count))
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.sample_count, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.advance, self.per_epoch)
        for e in itertools.count(epoch):
            shard = self.epoch_order(e)[self.start :: self.step]
            yield from shard[offset:]
            offset = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.sample_count}, shuffle={self.shuffle}, seed={self.seed}, "
            f"rank {self.start}/{self.step}, advance={self.advance})"
        )


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, `random` and numpy's global RNG; restore all three on exit."""
    torch_state = torch.get_rng_state()
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        torch.default_generator.manual_seed(seed & _SEED_MASK)  # CPU only: never touches CUDA RNG
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class _PositionSeededSampler(Sampler):
    """Yields (index, seed of that stream position) pairs from an InfiniteSampler."""

    def __init__(self, sampler: InfiniteSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        s = self.sampler
        for position, index in enumerate(s, start=s.advance):
            yield index, mix_seed(s.seed, s.start, s.step, position)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sampler!r})"


class PositionSeededDataset(Dataset):
    """`dataset[(index, seed)] -> (seed, dataset[index])`, the item loaded under `seeded_rng(seed)`.

    Attribute access falls through to the wrapped dataset (`len`, `classes`, `get_targets`, ...).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, Any]:
        index, seed = item
        with seeded_rng(seed):
            return seed, self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # "dataset" is missing only while unpickling; dunders (e.g. a Subset's __getitems__, which
        # the DataLoader would call with our (index, seed) pairs) must not fall through.
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _SeededCollate:
    """Strips the per-sample seeds and runs `collate_fn` under a seed derived from the first one."""

    def __init__(self, collate_fn: Callable[[list], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, batch: list[tuple[int, Any]]) -> Any:
        with seeded_rng(mix_seed(batch[0][0], 1)):
            return self.collate_fn([item for _, item in batch])


def seed_loader_worker(worker_id: int) -> None:
    """`worker_init_fn` of the loaders: numpy seeded per worker (torch seeds `random` and itself per worker;
    numpy would otherwise repeat across workers), and the trainers' stop signals ignored: a terminal (Ctrl-C),
    torchrun (its workers' process groups) and SLURM (every process of the step) send them to the workers
    too, and the trainer, which stops after writing its checkpoint, ends its workers itself."""
    np.random.seed(torch.initial_seed() % 2**32)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)


def make_data_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    sampler_type: str | SamplerType | None = SamplerType.INFINITE,
    sampler_size: int = -1,
    sampler_advance: int = 0,
    drop_last: bool = True,
    collate_fn: Callable[[list], Any] | None = None,
    persistent_workers: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """DataLoader over `dataset` with the chosen sampler.

    - `infinite`: endless `InfiniteSampler` stream sharded over ranks (training); `sampler_advance`
      = items of this rank already consumed (iteration · batch_size_per_gpu); per-sample seeding as
      in the module docstring. `sampler_size` > 0 overrides the sample count.
    - `distributed`: torch's DistributedSampler (one pass per epoch, padded to equal shards;
      call `loader.sampler.set_epoch(e)` to reshuffle).
    - `none` / None: plain sequential (or shuffled, seeded) single-process sampling.

    `num_workers` is capped at the cores available (`usable_num_workers`).
    """
    kind = SamplerType.parse(sampler_type)
    num_workers = usable_num_workers(num_workers)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if sampler_advance and kind is not SamplerType.INFINITE:
        raise ValueError("sampler_advance (resuming mid-stream) needs sampler_type='infinite'")
    collate = collate_fn if collate_fn is not None else default_collate
    sampler: Sampler | None = None
    loader_dataset: Dataset = dataset
    if kind is SamplerType.INFINITE:
        sample_count = sampler_size if sampler_size > 0 else len(dataset)  # type: ignore[arg-type]
        infinite = InfiniteSampler(
            sample_count=sample_count, shuffle=shuffle, seed=seed, advance=sampler_advance
        )
        sampler = _PositionSeededSampler(infinite)
        loader_dataset = PositionSeededDataset(dataset)
        collate = _SeededCollate(collate)
    elif kind is SamplerType.DISTRIBUTED:
        sampler = DistributedSampler(
            dataset,
            num_replicas=distributed.get_world_size(),
            rank=distributed.get_rank(),
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        loader_dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if kind is SamplerType.NONE else None,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=seed_loader_worker,
        generator=generator,
    )
