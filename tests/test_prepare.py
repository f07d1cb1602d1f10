"""`python -m masksub_exp.tools.prepare`: a resized, re-runnable copy of an ImageFolder with a manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from masksub_exp.bench.loader import make_jpeg_folder
from masksub_exp.tools.prepare import main, prepare


def test_prepare_resizes_copies_and_reruns(tmp_path: Path) -> None:
    src = make_jpeg_folder(tmp_path / "src", train=6, val=2, classes=2, size=(200, 150))
    Image.new("RGB", (40, 30), (10, 20, 30)).save(src / "train" / "c0" / "small.png")
    dst = tmp_path / "dst"
    first = prepare(src, dst, short_side=64, quality=85)
    assert first["images"] == 9 and first["resized"] == 8 and first["copied"] == 1
    assert first["splits"] == {"train": {"images": 7}, "val": {"images": 2}}
    assert first["bytes"] < first["source_bytes"] and len(first["source_hash"]) == 64
    with Image.open(dst / "train" / "c1" / "train_00001.jpg") as im:
        assert min(im.size) == 64 and im.size == (85, 64)
    with Image.open(dst / "train" / "c0" / "train_00000.jpg") as im:  # a portrait file keeps its shape
        assert im.size == (64, 85)
    assert (dst / "train" / "c0" / "small.png").read_bytes() == (src / "train" / "c0" / "small.png").read_bytes()
    assert json.loads((dst / "manifest.json").read_text())["quality"] == 85
    again = prepare(src, dst, short_side=64, quality=85)
    assert again["kept_from_earlier_run"] == 9 and again["source_hash"] == first["source_hash"]
    changed = src / "val" / "c0" / "val_00000.jpg"
    Image.new("RGB", (300, 100)).save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, (dst / "manifest.json").stat().st_mtime_ns + 10**9))
    third = prepare(src, dst, short_side=64, quality=85)
    assert third["kept_from_earlier_run"] == 8 and third["source_hash"] != first["source_hash"]
    with Image.open(dst / "val" / "c0" / "val_00000.jpg") as im:
        assert im.size == (192, 64)


def test_prepare_refuses_other_parameters_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = make_jpeg_folder(tmp_path / "src", train=2, classes=1, size=(100, 80))
    prepare(src, tmp_path / "dst", short_side=32)
    with pytest.raises(SystemExit) as exit_info:
        main([str(src), str(tmp_path / "dst"), "--short-side", "48"])
    assert exit_info.value.code == 2 and "short_side" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing"), str(tmp_path / "out")])
    assert "does not exist" in capsys.readouterr().err
