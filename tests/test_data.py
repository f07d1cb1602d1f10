"""Data: the idx reader on files written here and on the real Fashion-MNIST, seeded sampling."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from masksub_exp.config import AugConfig, DataConfig
from masksub_exp.data import build_loaders
from masksub_exp.data.fashion_mnist import FashionMNIST, read_idx

from .conftest import FMNIST


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def fake_fmnist(root: Path, n_train: int = 64, n_test: int = 16, gz: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, (n,)), gz)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    fake_fmnist(tmp_path, gz=gz)
    ds = FashionMNIST(str(tmp_path), "train")
    assert len(ds) == 64 and ds.images.shape == (64, 1, 28, 28)
    raw = read_idx(tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(raw.copy()))


def test_truncated_idx_is_a_clear_error(tmp_path: Path) -> None:
    fake_fmnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        FashionMNIST(str(tmp_path), "train")


def test_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        FashionMNIST(str(tmp_path / "nowhere"), "train")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        FashionMNIST(str(tmp_path / "empty"), "train")


def test_real_fashion_mnist() -> None:
    if not FMNIST.is_dir():
        pytest.fail(f"{FMNIST} is missing: run `make test` (it installs dataset-fashion-mnist)")
    train, test = FashionMNIST(None, "train"), FashionMNIST(None, "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert torch.bincount(train.targets).tolist() == [6000] * 10
    mean = train.images.float().mean().item() / 255
    assert abs(mean - 0.2860) < 0.001


def _epoch(loaders, epoch: int, skip_batches: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loaders.sampler.set_epoch(epoch, skip=skip_batches * loaders.train.batch_size)
    return list(loaders.train)


def test_sampling_is_deterministic_resumable_and_worker_independent(tmp_path: Path) -> None:
    fake_fmnist(tmp_path, n_train=64)
    data = DataConfig(root=str(tmp_path))
    aug = AugConfig(random_crop_pad=2, hflip=0.5)
    a = build_loaders(data, aug, batch_size=8, seed=3)
    full = _epoch(a, 1)
    assert len(full) == 8
    # the tail of an epoch after skipping 3 batches equals the uninterrupted epoch's tail, bit for bit,
    # also when loaded by a worker process
    b = build_loaders(DataConfig(root=str(tmp_path), num_workers=1), aug, batch_size=8, seed=3)
    tail = _epoch(b, 1, skip_batches=3)
    for (x1, y1), (x2, y2) in zip(full[3:], tail, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # augmentation is random: another epoch orders and augments differently
    other = _epoch(a, 2)
    assert not torch.equal(full[0][0], other[0][0])


def test_shards_are_disjoint_across_ranks(tmp_path: Path) -> None:
    fake_fmnist(tmp_path, n_train=64, n_test=15)
    data = DataConfig(root=str(tmp_path))
    seen_train, seen_eval = [], 0
    for rank in range(2):
        loaders = build_loaders(data, AugConfig(), batch_size=8, seed=0, rank=rank, world_size=2)
        loaders.sampler.set_epoch(0)
        seen_train += [i for i, _ in loaders.sampler]
        seen_eval += sum(len(y) for _, y in loaders.eval)
    assert sorted(seen_train) == list(range(64)) and seen_eval == 15
