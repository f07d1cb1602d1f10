"""Resumable, seeded sampling.

Each index is yielded with a per-sample seed derived from (seed, epoch, rank, position), and
`SeededDataset` seeds the augmentation RNGs with it. A sample's augmentation therefore does not
depend on which worker loads it or on what was loaded before, so a run resumed mid-epoch (by
skipping the batches already consumed) sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import Dataset, DistributedSampler, Sampler


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    ss = np.random.SeedSequence([seed, epoch, rank, position])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


class ResumableSampler(Sampler):
    """Wraps an epoch-aware index sampler; yields (index, sample_seed) and can skip a prefix."""

    def __init__(self, base: Sampler[int], seed: int, rank: int = 0) -> None:
        self.base = base
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        world = getattr(self.base, "num_replicas", 1)
        for position, index in enumerate(self.base):
            if position >= self.skip:
                # seeded by the sample's place in the global order, so N processes with batch B augment
                # exactly like one process with batch N x B
                yield int(index), sample_seed(self.seed, self.epoch, 0, position * world + self.rank)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


class SeededRepeatAugSampler(RepeatAugSampler):
    """timm's RepeatAugSampler with the order drawn from seed + epoch (timm's uses the epoch alone, so every
    seed of a sweep would see the same order), as torch's DistributedSampler does."""

    def __init__(self, dataset: Dataset, *, seed: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.seed = seed

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch = self.seed + epoch  # the parent seeds its generator with self.epoch and nothing else
        try:
            return super().__iter__()
        finally:
            self.epoch = epoch


def train_sampler(dataset: Dataset, seed: int, rank: int, world_size: int, repeats: int = 0) -> ResumableSampler:
    """Shuffled shards per process; with repeats > 1 timm's repeated-augmentation sampler (each image
    `repeats` times per epoch, the copies spread over the processes, augmented independently)."""
    if repeats > 1:
        base: Sampler[int] = SeededRepeatAugSampler(dataset, seed=seed, num_replicas=world_size, rank=rank,
                                                    shuffle=True, num_repeats=repeats)
    else:
        base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                  drop_last=True)
    return ResumableSampler(base, seed=seed, rank=rank)


class SeededDataset(Dataset):
    """Seeds python, numpy and torch RNGs per sample when given (index, seed) pairs."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, tuple):
            index, seed = item
            if torch.utils.data.get_worker_info() is None:
                # in the main process: don't disturb the training RNG streams
                state = (random.getstate(), np.random.get_state())
                with torch.random.fork_rng(devices=[]):
                    _seed_all(seed)
                    sample = self.base[index]
                random.setstate(state[0])
                np.random.set_state(state[1])
                return sample
            _seed_all(seed)
            return self.base[index]
        return self.base[item]


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    # the CPU generator only: torch.manual_seed would also (re)seed every CUDA device, 30x slower
    torch.default_generator.manual_seed(seed)
