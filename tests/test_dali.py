"""data.backend=dali on DALI's CPU operators: the recipes' pipelines, the sampler's order and resume point,
and a smoke training run through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from masksub_exp.bench.loader import data_config, make_jpeg_folder, recipe_aug
from masksub_exp.config import AugConfig, ConfigError, DataConfig
from masksub_exp.data import build_loaders
from masksub_exp.data.dali import files_and_labels, rand_augment_args
from masksub_exp.data.imagefolder import BadImageError
from masksub_exp.train import train

from .conftest import compose_cfg, smoke_overrides

pytest.importorskip("nvidia.dali", reason="pip install '.[dali]'")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_jpeg_folder(tmp_path_factory.mktemp("jpegs"), train=24, val=8, classes=3, size=(96, 72))


def epoch(loaders, epoch: int = 0, skip: int = 0) -> tuple[list[torch.Tensor], list[int]]:
    loaders.sampler.set_epoch(epoch, skip=skip)
    order = [index for index, _ in loaders.sampler]
    xs = []
    labels: list[int] = []
    for x, y in loaders.train:
        xs.append(x)
        labels += y.tolist()
    return xs, labels, order


@pytest.mark.parametrize("recipe", ["deit3", "swin", "rsb"])
def test_recipe_pipelines_give_normalised_batches_in_the_samplers_order(recipe: str, jpegs: Path) -> None:
    loaders = build_loaders(data_config(jpegs, 32, 1, backend="dali"), recipe_aug(recipe), batch_size=4, seed=0)
    xs, labels, order = epoch(loaders)
    _, truth = files_and_labels(_train_set(jpegs))
    assert len(xs) == len(loaders.train) and all(x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 for x in xs)
    assert labels == [truth[i] for i in order][:len(labels)]
    batch = torch.cat(xs)
    assert torch.isfinite(batch).all() and -3 < batch.mean() < 3 and 0.3 < batch.std() < 3  # normalised, not 0-255


def _train_set(root: Path):
    from masksub_exp.data.imagefolder import image_folder

    return image_folder(str(root), "train", None, num_classes=3)


def test_resume_point_and_reproducibility(jpegs: Path) -> None:
    """The same (seed, epoch, position) gives the same batches; a skip resumes the order exactly."""
    data, aug = data_config(jpegs, 32, 1, backend="dali"), recipe_aug("deit3")
    first = build_loaders(data, aug, batch_size=4, seed=3)
    xs, labels, _ = epoch(first, epoch=1)
    again, labels_again, _ = epoch(build_loaders(data, aug, batch_size=4, seed=3), epoch=1)
    assert labels == labels_again and all(torch.equal(a, b) for a, b in zip(xs, again, strict=True))
    _, resumed, _ = epoch(first, epoch=1, skip=8)
    assert resumed == labels[8:]
    other, _, _ = epoch(first, epoch=2)
    assert not torch.equal(other[0], xs[0])


def test_two_processes_share_the_epoch(jpegs: Path) -> None:
    data, aug = data_config(jpegs, 32, 1, backend="dali"), AugConfig()
    orders = []
    for rank in (0, 1):
        loaders = build_loaders(data, aug, batch_size=4, seed=0, rank=rank, world_size=2)
        _, labels, order = epoch(loaders)
        assert len(labels) == 12 == len(loaders.train) * 4
        orders.append(order)
    assert not set(orders[0]) & set(orders[1]) and len(orders[0] + orders[1]) == 24


def test_bad_jpeg_names_a_file(tmp_path: Path) -> None:
    root = make_jpeg_folder(tmp_path, train=8, val=2, classes=2, size=(64, 48))
    for f in (root / "train").rglob("*.jpg"):
        f.write_bytes(b"not a jpeg")
    loaders = build_loaders(data_config(root, 32, 1, backend="dali"), AugConfig(), batch_size=4, seed=0)
    with pytest.raises(BadImageError, match=r"train_000\d+\.jpg"):
        epoch(loaders)


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="data.backend"):
        DataConfig(name="synthetic", backend="dali")
    with pytest.raises(ConfigError, match="data.on_bad_image"):
        DataConfig(name="imagefolder", root="/", backend="dali", on_bad_image="skip")
    assert rand_augment_args("rand-m9-mstd0.5-inc1") == (2, 9) and rand_augment_args("rand-m7-n3") == (3, 7)


def test_smoke_training_run_through_the_engine(jpegs: Path, tmp_path: Path) -> None:
    overrides = smoke_overrides(data="imagefolder", data__root=str(jpegs), data__num_classes=3, data__img_size=32,
                                data__backend="dali", data__num_workers=1, train__batch_size=4, train__epochs=1,
                                train__log_every=2, recipe__aug__auto_augment="3a", recipe__aug__color_jitter=0.3,
                                recipe__aug__reprob=0.25)
    summary = train(compose_cfg(overrides, tmp_path / "run"))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if r["kind"] == "train"]
    assert summary["step"] == 6 and summary["status"] == "complete" and "top1" in summary
    assert train_lines and all(r["loss_main"] > 0 and 0 <= r["data_wait_frac"] <= 1 for r in train_lines)


def test_three_augment_applies_grayscale_solarize_or_blur(jpegs: Path) -> None:
    """DeiT-III's 3-Augment in DALI: each image gets one of grayscale / solarize / blur, all three occur."""
    aug = AugConfig(auto_augment="3a", hflip=0.0)
    data = data_config(jpegs, 32, 1, backend="dali")
    loaders = build_loaders(data, aug, batch_size=8, seed=0)
    xs, _, _ = epoch(loaders)
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    pixels = torch.cat(xs) * std + mean  # back to [0, 1]
    gray = (pixels.amax(1) - pixels.amin(1)).flatten(1).amax(1) < 0.02
    assert 0 < int(gray.sum()) < len(pixels)  # grayscale for some images, colour for the others
    colour = pixels[~gray]
    # solarize inverts everything >= 128, so a solarized image has no pixel above ~0.5; a blurred one has
    solarized = colour.flatten(1).amax(1) <= 128 / 255 + 0.01
    assert 0 < int(solarized.sum()) < len(colour)
