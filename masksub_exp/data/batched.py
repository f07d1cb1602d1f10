"""Whole-batch augmentation for in-memory small images (`data.batch_augment=true`).

The per-sample path (SeededDataset + SmallImageTransform) reseeds python, numpy and torch for every sample:
~0.35 ms an image on one core, which starves a GPU (the Fashion-MNIST GPU matrix waited on data 86 % of the
time at ~2,500 img/s a process). Here a whole batch is gathered from the uint8 tensor and shifted / flipped
with vectorised ops. Each sample's shift and flip still come from its own seed (the sampler's per-sample
seed, through a counter-based hash), never from the batch it lands in, so what was promised for the
per-sample path holds here too: N processes with batch B see exactly what one process with batch N x B sees,
and a resumed run sees what an uninterrupted one would. The draws differ from the per-sample path's (another
generator), with the same distributions: a uniform shift in [-pad, pad] on each axis and a flip with
probability `hflip`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..config import ConfigError
from .transforms import SmallImageTransform


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A counter-based 64-bit hash (SplitMix64's finaliser): independent-looking values for consecutive inputs."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)  # uint64 arithmetic wraps, as the hash needs
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seeds: np.ndarray, k: int) -> np.ndarray:
    """(B, k) floats in [0, 1): draw j of sample i depends on seeds[i] and j only."""
    counters = seeds.astype(np.uint64)[:, None] * np.uint64(k) + np.arange(k, dtype=np.uint64)[None, :]
    return (splitmix64(counters) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def augment_batch(tf: SmallImageTransform, images: torch.Tensor, seeds: np.ndarray) -> torch.Tensor:
    """(B, C, H, W) uint8 or float -> normalised float batch, shifted and flipped per sample by its seed."""
    x = images.float()
    if tf.scale_uint8 and images.dtype == torch.uint8:
        x = x / 255.0
    if tf.train and (tf.pad or tf.hflip):
        b, c, h, w = x.shape
        u = torch.from_numpy(uniforms(seeds, 3))
        if tf.pad:
            span = 2 * tf.pad + 1
            top, left = (u[:, 0] * span).long(), (u[:, 1] * span).long()
            x = F.pad(x, (tf.pad,) * 4)
            rows = (top[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w + 2 * tf.pad)
            x = x.gather(2, rows)
            cols = (left[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
            x = x.gather(3, cols)
        if tf.hflip:
            flip = (u[:, 2] < tf.hflip)[:, None, None, None]
            x = torch.where(flip, x.flip(-1), x)
    return (x - tf.mean) / tf.std


class BatchedImages(Dataset):
    """An in-memory image set served a batch at a time: the DataLoader hands `__getitems__` the batch's
    (index, seed) pairs and gets back the finished (images, labels) tensors."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: SmallImageTransform) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item: Any) -> tuple[torch.Tensor, int]:
        x, y = self.__getitems__([item])
        return x[0], int(y[0])

    def __getitems__(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor([i[0] if isinstance(i, tuple) else i for i in items])
        seeds = np.array([i[1] if isinstance(i, tuple) else i for i in items], dtype=np.int64)
        return augment_batch(self.transform, self.images[index], seeds), self.targets[index]


def already_collated(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def batched(dataset: Dataset) -> BatchedImages:
    """The batched form of an in-memory image set (or a Subset of one, as a held-out split makes)."""
    indices = None
    while isinstance(dataset, Subset):
        chosen = torch.as_tensor(dataset.indices)
        indices = chosen if indices is None else chosen[indices]
        dataset = dataset.dataset
    images, targets = getattr(dataset, "images", None), getattr(dataset, "targets", None)
    transform = getattr(dataset, "transform", None)
    if not (isinstance(images, torch.Tensor) and isinstance(transform, SmallImageTransform)):
        raise ConfigError("data.batch_augment=true needs an in-memory small-image set (fashion_mnist); "
                          f"{type(dataset).__name__} is not one: set data.batch_augment=false")
    if indices is not None:
        images, targets = images[indices], torch.as_tensor(targets)[indices]
    return BatchedImages(images, torch.as_tensor(targets), transform)
