"""The torch loader's CPU savings: JPEG draft decoding (data.jpeg_draft), and the loader benchmark."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from masksub_exp.bench import step as bench
from masksub_exp.bench.loader import ResidentBatches, data_config, make_jpeg_folder, natural_image
from masksub_exp.config import AugConfig
from masksub_exp.data import build_datasets
from masksub_exp.data.imagefolder import BadImageError
from masksub_exp.data.transforms import DraftRandomResizedCrop, draft_factor, imagefolder_transform


def test_draft_factor_keeps_the_output_resolution() -> None:
    assert draft_factor(300, 300, 224, 224) == 1
    assert draft_factor(448, 460, 224, 224) == 2 and draft_factor(447, 900, 224, 224) == 1
    assert draft_factor(900, 1000, 224, 224) == 4 and draft_factor(5000, 5000, 224, 224) == 8


def _seeded(seed: int, fn):
    random.seed(seed)
    torch.manual_seed(seed)
    return fn()


def test_draft_decode_draws_the_same_crop_and_changes_pixels_little(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    natural_image(__import__("numpy").random.default_rng(0), 1200, 900).save(path, "JPEG", quality=92)
    data, aug = data_config(tmp_path, 160, 0), AugConfig(hflip=0.0)
    full_tf = imagefolder_transform(data, aug, True)
    draft_tf = imagefolder_transform(data_config(tmp_path, 160, 0, jpeg_draft=True), aug, True)
    assert isinstance(draft_tf.transforms[0], DraftRandomResizedCrop)
    base = full_tf.transforms[0]
    factors, diffs = [], []
    for seed in range(30):
        with Image.open(path) as im:
            i, j, h, w = _seeded(seed, lambda im=im: base.get_params(im, base.scale, base.ratio))
        factors.append(draft_factor(h, w, 160, 160))
        full = _seeded(seed, lambda: full_tf(Image.open(path).convert("RGB")))
        drafted = _seeded(seed, lambda: draft_tf(Image.open(path)))
        if factors[-1] == 1:
            assert torch.equal(full, drafted)  # no reduction qualifies: exactly the full decode
        else:
            diffs.append((full - drafted).abs().mean().item() * 0.226 * 255)  # in 0-255 pixel units
    assert {1, 2} <= set(factors)
    print("mean abs diff (0-255) per drafted crop:", [round(d, 2) for d in diffs])
    assert 0 < max(diffs) < 3  # the same region, resampled from a DCT-scaled decode


def test_lazy_decode_still_reports_a_bad_file(tmp_path: Path) -> None:
    root = make_jpeg_folder(tmp_path, train=4, val=2, classes=2, size=(80, 60))
    bad = root / "train" / "c0" / "train_00000.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    train, _ = build_datasets(data_config(root, 32, 0, jpeg_draft=True), AugConfig(), seed=0)
    with pytest.raises(BadImageError, match="train_00000.jpg"):
        train[0]


def test_loader_bench_reports_rates_and_cores(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench.main(["--loader", "--images", "16", "--workers", "1", "--batch-size", "4", "--recipes", "deit3_192",
                "--variants", "full,draft,prepared", "--root", str(tmp_path / "jpegs"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 16 and 40 < result["mean_file_kb"] < 150
    assert [r["variant"] for r in result["rows"]] == ["full", "draft", "prepared"]
    for row in result["rows"]:
        assert row["img_per_cpu_s_1core"] > 0 and row["loader_img_per_s"] > 0
        per_core = row["loader_img_per_cpu_s"]
        cores = row["cores_per_gpu"]["ViT-B/16 MaskSub compiled (224)"]
        assert 0 < per_core and cores == pytest.approx(2084 / per_core)
    assert (tmp_path / "jpegs-288" / "manifest.json").exists()


def test_train_bench_runs_a_preset_through_the_loop(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench.main(["--train", "--images", "32", "--out", str(tmp_path / "run"), "experiment=smoke", "data=imagefolder",
                "data.num_classes=8", "data.img_size=32", "data.num_workers=1", "train.batch_size=8",
                "train.epochs=1", "train.log_every=1", "train.progress=false"])
    out = capsys.readouterr().out
    assert "img/s, data_wait_frac" in out and "4 steps" in out and "train.precision=auto on cpu" in out
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_full_magnitude_posterize_is_not_a_bad_image() -> None:
    """timm's posterize at magnitude 10 asks Pillow (>= 13) for 0 bits; the transform gives a black image instead
    of a ValueError that the ImageFolder would report as an unreadable file."""
    data = data_config(Path("."), 32, 0)
    tf = imagefolder_transform(data, AugConfig(auto_augment="rand-m9-mstd0.5-inc1"), True)
    ra = next(t for t in tf.transforms if hasattr(t, "ops"))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    assert op(Image.new("RGB", (8, 8), (200, 100, 50))).getpixel((0, 0)) == (0, 0, 0)


def test_resident_batches_serve_one_batch_as_often_as_the_loader_would() -> None:
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    batches = ResidentBatches(x, y, 3)
    served = list(batches)
    assert len(batches) == 3 == len(served)
    assert all(torch.equal(a, x) and torch.equal(b, y) for a, b in served)
    served[0][0].mul_(0)  # mixup works in place: the next copy must not see it
    assert torch.equal(next(iter(batches))[0], x) and not torch.equal(served[0][0], x)


def test_train_bench_with_a_resident_batch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--train --resident: the preset's loop runs every step of the epoch on the one batch, the input costs
    (almost) nothing, and the engine's loader builder is back in place afterwards."""
    from masksub_exp import build, data

    bench.main(["--train", "--resident", "--json", "--out", str(tmp_path / "run"), "experiment=smoke",
                "data.synthetic_train_size=32", "train.batch_size=8", "train.epochs=1", "train.log_every=1",
                "train.progress=false"])
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 4 and result["log_windows"] == 3
    assert result["data_wait_frac"] < 0.1
    assert build.build_loaders is data.build_loaders
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
