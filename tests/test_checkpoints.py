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


def test_a_full_disk_after_a_good_save_keeps_the_previous_checkpoint(tiny_fs: Path) -> None:
    path = tiny_fs / "checkpoints" / "last.pt"
    first = torch.arange(150_000, dtype=torch.float32)  # ~600 KiB
    checkpoints.save_atomic({"format": checkpoints.FORMAT_VERSION, "x": first, "step": 1}, path)
    with pytest.raises(checkpoints.StorageError, match="previous checkpoint is intact") as error:
        checkpoints.save_atomic({"format": checkpoints.FORMAT_VERSION, "x": first + 1, "step": 2}, path)
    assert error.value.errno == 28  # ENOSPC: reported as a full disk
    payload = checkpoints.load(path)
    assert payload["step"] == 1 and torch.equal(payload["x"], first)
    del payload  # load() memory-maps the file: unmap it before the tmpfs is unmounted
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # the partial temp file is gone


def test_stale_temporaries_are_removed_when_a_run_starts(tmp_path: Path) -> None:
    from masksub_exp.train import train

    from .conftest import compose_cfg, smoke_overrides

    run = tmp_path / "run"
    stale = run / "checkpoints" / ".last.pt.tmp.999999"  # what a kill during a write leaves (another pid)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    summary = train(compose_cfg(smoke_overrides(train__max_steps=1), run))
    assert summary["step"] == 1 and not stale.exists()
    assert sorted(p.name for p in stale.parent.iterdir()) == ["last.pt"]
