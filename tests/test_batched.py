"""data.batch_augment: whole-batch shift and flip, each sample's draw still fixed by its own seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masksub_exp.config import AugConfig, ConfigError, DataConfig
from masksub_exp.data import build_loaders
from masksub_exp.data.batched import augment_batch, batched, uniforms
from masksub_exp.data.transforms import SmallImageTransform

from .test_data import fake_fmnist

TF = SmallImageTransform([0.5], [0.25], train=True, pad=2, hflip=0.5)


def by_hand(image: torch.Tensor, seed: int) -> torch.Tensor:
    """One sample, augmented the slow way from the same three uniforms."""
    u = uniforms(np.array([seed]), 3)[0]
    top, left = int(u[0] * 5), int(u[1] * 5)
    x = F.pad(image.float() / 255.0, (2, 2, 2, 2))[:, top:top + 28, left:left + 28]
    if u[2] < 0.5:
        x = x.flip(-1)
    return (x - 0.5) / 0.25


def test_each_sample_is_shifted_and_flipped_as_its_seed_says() -> None:
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    seeds = np.arange(1000, 1064)
    out = augment_batch(TF, images, seeds)
    for i in range(64):
        torch.testing.assert_close(out[i], by_hand(images[i], int(seeds[i])), rtol=0, atol=1e-6)


def test_a_sample_gets_the_same_augmentation_in_any_batch() -> None:
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    seeds = np.arange(16) * 7919
    whole = augment_batch(TF, images, seeds)
    halves = torch.cat([augment_batch(TF, images[8:], seeds[8:]), augment_batch(TF, images[:8], seeds[:8])])
    assert torch.equal(whole, torch.cat([halves[8:], halves[:8]]))


def test_draws_cover_every_shift_and_flip_about_half() -> None:
    u = uniforms(np.arange(20000), 3)
    shifts = set(zip((u[:, 0] * 5).astype(int).tolist(), (u[:, 1] * 5).astype(int).tolist(), strict=True))
    assert shifts == {(a, b) for a in range(5) for b in range(5)}
    assert abs((u[:, 2] < 0.5).mean() - 0.5) < 0.02
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03  # the three draws are not tied together


def test_loader_matches_the_per_sample_path_in_shape_order_and_resume(tmp_path: Path) -> None:
    fake_fmnist(tmp_path, n_train=64)
    aug = AugConfig(random_crop_pad=2, hflip=0.5)
    fast = build_loaders(DataConfig(root=str(tmp_path), batch_augment=True), aug, batch_size=8, seed=3)
    slow = build_loaders(DataConfig(root=str(tmp_path)), aug, batch_size=8, seed=3)
    fast.sampler.set_epoch(1)
    slow.sampler.set_epoch(1)
    got, want = list(fast.train), list(slow.train)
    assert len(got) == len(want) == 8
    for (x1, y1), (x2, y2) in zip(got, want, strict=True):
        assert x1.shape == x2.shape == (8, 1, 28, 28) and x1.dtype == torch.float32
        assert torch.equal(y1, y2)  # the same samples in the same order; only the draws differ
    # two processes of batch 4 see exactly the samples and augmentations one process of batch 8 sees
    ranks = [build_loaders(DataConfig(root=str(tmp_path), batch_augment=True), aug, batch_size=4, seed=3, rank=r,
                           world_size=2) for r in range(2)]
    for loaders in ranks:
        loaders.sampler.set_epoch(1)
    per_rank = [list(loaders.train) for loaders in ranks]
    single = {tuple(x.flatten()[:40].tolist()) for xb, _ in got for x in xb}
    split = {tuple(x.flatten()[:40].tolist()) for batches in per_rank for xb, _ in batches for x in xb}
    assert split == single


def test_a_set_that_is_not_in_memory_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="data.batch_augment=true needs an in-memory"):
        batched(torch.utils.data.TensorDataset(torch.zeros(2)))
