"""Datasets and loaders from config. Training yields (index, seed) through a resumable sampler."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import AugConfig, ConfigError, DataConfig
from .batched import already_collated, batched
from .fashion_mnist import FashionMNIST
from .holdout import HoldoutSplit, hold_out
from .imagefolder import image_folder
from .sampler import ResumableSampler, SeededDataset, train_sampler
from .synthetic import SyntheticImages
from .synthetic_text import SyntheticText
from .transforms import imagefolder_transform, small_image_transform


@dataclass
class Loaders:
    train: DataLoader
    sampler: ResumableSampler
    eval: DataLoader
    train_size: int
    eval_size: int
    test: DataLoader | None = None  # with data.holdout: the test split, evaluated once at the end, never for selection
    split: HoldoutSplit | None = None  # with data.holdout: which training samples are held out


def build_datasets(data: DataConfig, aug: AugConfig, seed: int, bad_log: Path | None = None,
                   tokenizer_folder: str | None = None) -> tuple[Dataset, Dataset]:
    if data.name == "fashion_mnist":
        return (
            FashionMNIST(data.root, "train", small_image_transform(data, aug, True), limit=data.train_limit),
            FashionMNIST(data.root, "test", small_image_transform(data, aug, False)),
        )
    if data.name == "synthetic":
        def make(size: int, split_seed: int, train: bool) -> Dataset:
            tf = small_image_transform(data, aug, train, scale_uint8=False)
            return SyntheticImages(size, data.num_classes, data.in_chans, data.img_size, split_seed, tf,
                                   prototype_seed=seed)
        return make(data.synthetic_train_size, seed + 1, True), make(data.synthetic_val_size, seed + 2, False)
    if data.name == "text":
        from ..hf import tokenizer_from  # transformers only for text runs
        from .text import build_text_datasets

        if not tokenizer_folder:
            raise ConfigError("data.name=text needs model.checkpoint: the tokenizer comes from the checkpoint folder")
        train, evaluation, found = build_text_datasets(data.root, tokenizer_from(tokenizer_folder), data.seq_len,
                                                       data.train_limit, seed, data.eval_limit)
        if found > data.num_classes:
            raise ConfigError(f"data.num_classes={data.num_classes} but the text set has {found} labels")
        return train, evaluation
    if data.name == "synthetic_text":
        return (SyntheticText(data.synthetic_train_size, data.num_classes, data.vocab_size, data.seq_len, seed + 1),
                SyntheticText(data.synthetic_val_size, data.num_classes, data.vocab_size, data.seq_len, seed + 2))
    if data.name == "imagefolder":
        assert data.root is not None
        common = dict(num_classes=data.num_classes, on_bad_image=data.on_bad_image, bad_log=bad_log)
        return (
            image_folder(data.root, "train", imagefolder_transform(data, aug, True), **common,
                         lazy_decode=data.jpeg_draft),
            image_folder(data.root, "val", imagefolder_transform(data, aug, False), **common),
        )
    raise ValueError(f"data.name={data.name!r} is not a known dataset")


def build_splits(data: DataConfig, aug: AugConfig, seed: int, bad_log: Path | None = None,
                 tokenizer_folder: str | None = None) -> tuple[Dataset, Dataset, Dataset | None, HoldoutSplit | None]:
    """(train, eval, test, split): eval is the test split, or with data.holdout the held-out part of the
    training split (then test is the test split, and split says which samples were held out)."""
    if not data.holdout:
        train_set, eval_set = build_datasets(data, aug, seed, bad_log, tokenizer_folder)
        return train_set, eval_set, None, None
    # the draw is over the whole training split, so data.train_limit never changes which samples are held out
    full_train, test_set = build_datasets(replace(data, train_limit=None), aug, seed, bad_log, tokenizer_folder)
    train_set, held_out, split = hold_out(full_train, test_set, data.holdout, data.holdout_seed, data.train_limit)
    return train_set, held_out, test_set, split


def build_loaders(data: DataConfig, aug: AugConfig, *, batch_size: int, seed: int, rank: int = 0,
                  world_size: int = 1, pin_memory: bool = False, bad_log: Path | None = None,
                  tokenizer_folder: str | None = None, device: torch.device | None = None) -> Loaders:
    train_set, eval_set, test_set, split = build_splits(data, aug, seed, bad_log, tokenizer_folder)
    if len(train_set) < batch_size * world_size:
        raise ConfigError(
            f"train.batch_size={batch_size}: the training set ({data.name}) has {len(train_set)} samples, "
            f"fewer than one global batch ({batch_size} x {world_size} processes)"
        )
    sampler = train_sampler(train_set, seed, rank, world_size, repeats=aug.repeated_aug)
    workers = data.num_workers
    common = dict(num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)
    # own generators: creating a loader iterator must not draw from the global RNG, or a resumed
    # run's random streams would drift from an uninterrupted run's
    if data.backend == "dali":  # the same sampler (order, shards, resume point); DALI decodes and augments
        from .dali import DaliTrainLoader

        train_loader = DaliTrainLoader(train_set, sampler, data, aug, batch_size=batch_size, seed=seed, rank=rank,
                                       device=device)
    elif data.batch_augment:  # one vectorised augmentation per batch, per-sample seeds kept (data/batched.py)
        train_loader = DataLoader(batched(train_set), batch_size=batch_size, sampler=sampler, drop_last=True,
                                  collate_fn=already_collated, generator=torch.Generator().manual_seed(seed), **common)
    else:
        train_loader = DataLoader(SeededDataset(train_set), batch_size=batch_size, sampler=sampler, drop_last=True,
                                  generator=torch.Generator().manual_seed(seed), **common)
    # a strided shard without padding, so ranks' counts add up to exactly the eval set
    eval_sampler = list(range(rank, len(eval_set), world_size))
    eval_loader = DataLoader(eval_set, batch_size=batch_size, sampler=eval_sampler,
                             generator=torch.Generator().manual_seed(seed), **common)
    test_loader = None
    if test_set is not None:
        test_loader = DataLoader(test_set, batch_size=batch_size, sampler=list(range(rank, len(test_set), world_size)),
                                 generator=torch.Generator().manual_seed(seed), **common)
    return Loaders(train_loader, sampler, eval_loader, len(train_set), len(eval_set), test_loader, split)


__all__ = ["HoldoutSplit", "Loaders", "build_datasets", "build_loaders", "build_splits", "FashionMNIST",
           "SyntheticImages"]
