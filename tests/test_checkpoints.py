"""Atomic checkpoint writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from masksub_exp import checkpoints


class Exploding:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def test_save_is_atomic_and_a_failed_save_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "last.pt"
    checkpoints.save_atomic({"format": checkpoints.FORMAT_VERSION, "x": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="boom"):
        checkpoints.save_atomic({"format": checkpoints.FORMAT_VERSION, "x": Exploding()}, path)
    assert torch.equal(checkpoints.load(path)["x"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a masksub-exp checkpoint"):
        checkpoints.load(tmp_path / "x.pt")
