"""Files from elsewhere never run code: weights files and a run's last.pt are read with weights_only.

The malicious files here are real pickles whose `args` entry, unpickled the old way
(`torch.load(weights_only=False)`), runs a command that creates a file; each test checks that the
file was never created. `test_the_plants_are_live` proves the payloads do run when loaded unsafely,
so "no file was created" is not vacuous.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from masksub_exp import checkpoints
from masksub_exp.config import ConfigError
from masksub_exp.pretrained import load_state_dict_file
from masksub_exp.safe_load import UnsafeCheckpointError, is_torchscript_archive, refused_globals

from .conftest import PYTHON, ROOT, run_command


class ShellPlant:
    """Unpickles to os.system("touch <marker>") (posix.system: a module torch blocks outright)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class CopyPlant(ShellPlant):
    """Unpickles to shutil.copyfile(<this test file>, marker): a global torch does not block by module."""

    def __reduce__(self) -> tuple:
        return shutil.copyfile, (__file__, str(self.marker))


PLANTS = {"posix.system": ShellPlant, "shutil.copyfile": CopyPlant}


def release(marker: Path, plant: type[ShellPlant]) -> dict:
    """An MAE/DeiT-style release whose `args` is the payload."""
    return {"model": {"pos_embed": torch.zeros(1, 2, 4)}, "epoch": 3, "args": plant(marker)}


def planted_last_pt(marker: Path, plant: type[ShellPlant]) -> dict:
    """Our checkpoint format, with the payload beside it (what someone with write access to a shared
    output folder could leave there)."""
    return {"format": checkpoints.FORMAT_VERSION, "config_hash": "0", "state": {"step": 1, "epoch": 0,
            "batch_in_epoch": 1}, "model": {}, "rng": [{}], "args": plant(marker)}


def one_line(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("[")]  # [..][HYDRA] logs


@pytest.mark.parametrize("name", PLANTS)
def test_the_plants_are_live(tmp_path: Path, name: str) -> None:
    torch.save(release(tmp_path / "PWNED", PLANTS[name]), tmp_path / "evil.pth")
    torch.load(tmp_path / "evil.pth", weights_only=False)  # the old reading
    assert (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name", PLANTS)
def test_a_malicious_release_is_refused_in_one_line_and_runs_nothing(tmp_path: Path, name: str) -> None:
    path = tmp_path / "mae_pretrain.pth"
    torch.save(release(tmp_path / "PWNED", PLANTS[name]), path)
    assert refused_globals(path) == [name]
    with pytest.raises(UnsafeCheckpointError) as err:
        load_state_dict_file(path)
    msg = str(err.value)
    assert "\n" not in msg and f"model.checkpoint={path}" in msg and f"needs {name}," in msg
    if name == "shutil.copyfile":
        assert msg.endswith("model.trust_checkpoint_globals=[shutil.copyfile]")
    else:  # torch never allows os/posix globals: the message does not pretend a setting would
        assert "no setting allows it" in msg and "trust_checkpoint_globals" not in msg
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name", PLANTS)
def test_a_planted_last_pt_is_refused_and_runs_nothing(tmp_path: Path, name: str) -> None:
    path = tmp_path / "last.pt"
    torch.save(planted_last_pt(tmp_path / "PWNED", PLANTS[name]), path)
    with pytest.raises(UnsafeCheckpointError, match=rf"^{re.escape(str(path))}: refused.*needs {name},.*"
                                                    "never hold it.*train.resume=never") as err:
        checkpoints.load(path)
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)
    assert not (tmp_path / "PWNED").exists()


def test_pickle_protocol_4_is_refused_without_a_way_to_trust_it(tmp_path: Path) -> None:
    """torch's weights_only reader cannot read protocol 4 at all, so no allowlist entry could help."""
    torch.save(release(tmp_path / "PWNED", CopyPlant), tmp_path / "p4.pth", pickle_protocol=4)
    with pytest.raises(UnsafeCheckpointError, match=r"Unsupported operand 149.*\.safetensors$"):
        load_state_dict_file(tmp_path / "p4.pth", trusted=["shutil.copyfile"])
    assert not (tmp_path / "PWNED").exists()


def test_a_legacy_file_is_still_read_with_weights_only(tmp_path: Path) -> None:
    """Pre-1.6 torch.save files are no zip: the opcode scan cannot read them, the weights_only load refuses."""
    path = tmp_path / "old.pth"
    torch.save(release(tmp_path / "PWNED", CopyPlant), path, _use_new_zipfile_serialization=False)
    assert refused_globals(path) == []
    with pytest.raises(UnsafeCheckpointError, match=r"needs shutil\.copyfile,"):
        load_state_dict_file(path)
    assert not (tmp_path / "PWNED").exists()


def rewrite_pickle(src: Path, dst: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Copy a torch zip archive with its data.pkl passed through `edit` (bytes -> bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, edit(data) if re.fullmatch(r"[^/]+/data\.pkl", item.filename) else data)


def test_what_releases_hold_beyond_tensors_loads(tmp_path: Path) -> None:
    """MAE / DeiT / timm training files keep argparse arguments and numpy values; numpy 1.x wrote its
    module as numpy.core, numpy 2.x as numpy._core: both load, to the same values."""
    sd = {"cls_token": torch.randn(1, 1, 4)}
    payload = {"model": sd, "args": argparse.Namespace(model="vit_base", lr=1e-3, input_size=224),
               "epoch": np.int64(399), "max_accuracy": np.float64(83.1), "seen": np.arange(3, dtype=np.uint32)}
    torch.save(payload, tmp_path / "new.pth")
    rewrite_pickle(tmp_path / "new.pth", tmp_path / "numpy1.pth", lambda b: b.replace(b"numpy._core.", b"numpy.core."))
    assert b"numpy.core.multiarray" in zipfile.ZipFile(tmp_path / "numpy1.pth").read("new/data.pkl")
    for name in ("new.pth", "numpy1.pth"):
        assert refused_globals(tmp_path / name) == []
        got = load_state_dict_file(tmp_path / name)
        assert got.keys() == {"cls_token"} and torch.equal(got["cls_token"], sd["cls_token"])
    from masksub_exp.safe_load import safe_torch_load

    full = safe_torch_load(tmp_path / "numpy1.pth", label="x")
    assert full["args"].lr == 1e-3 and full["epoch"] == 399 and full["seen"].tolist() == [0, 1, 2]


def test_a_trusted_type_is_allowed_by_name_only(tmp_path: Path) -> None:
    path = tmp_path / "dated.pth"
    torch.save({"model": {"w": torch.ones(2)}, "saved_on": datetime.date(2021, 11, 11)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"trust_checkpoint_globals=\[datetime\.date\]$"):
        load_state_dict_file(path)
    assert torch.equal(load_state_dict_file(path, trusted=["datetime.date"])["w"], torch.ones(2))
    with pytest.raises(ConfigError, match=r"model\.trust_checkpoint_globals: cannot import 'datetime\.dates'"):
        load_state_dict_file(path, trusted=["datetime.dates"])


def test_a_malicious_torchscript_archive_is_refused(tmp_path: Path) -> None:
    """An archive in OpenAI's CLIP layout whose data.pkl carries the payload: read by the TorchScript path,
    refused by the same allowlist, nothing runs."""
    torch.jit.script(torch.nn.Linear(2, 3)).save(str(tmp_path / "ok.pt"))
    buf = io.BytesIO()
    torch.save(release(tmp_path / "PWNED", CopyPlant), buf)
    evil_pickle = zipfile.ZipFile(buf).read("archive/data.pkl")
    rewrite_pickle(tmp_path / "ok.pt", tmp_path / "ViT-B-16.pt", lambda _: evil_pickle)
    (tmp_path / "plain.pth").write_bytes(buf.getvalue())
    assert is_torchscript_archive(tmp_path / "ViT-B-16.pt") and not is_torchscript_archive(tmp_path / "plain.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"ViT-B-16\.pt: refused.*needs shutil\.copyfile,"):
        load_state_dict_file(tmp_path / "ViT-B-16.pt")
    assert not (tmp_path / "PWNED").exists()


SMOKE = ["experiment=smoke", "train.progress=false", "train.max_steps=2"]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["model.checkpoint", "last.pt"])
def test_cli_refuses_a_malicious_file_in_one_line(tmp_path: Path, cli_env: dict, where: str) -> None:
    """The real command: a malicious `model.checkpoint=` file and a planted `last.pt` end with one line and
    exit 2 before anything is built, and the payload never runs."""
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    args = [*SMOKE, f"hydra.run.dir={run}"]
    if where == "model.checkpoint":
        evil = tmp_path / "mae_pretrain_vit_micro.pth"
        torch.save(release(marker, ShellPlant), evil)
        args.append(f"model.checkpoint={evil}")
        expected = [f"model.checkpoint={evil}: refused", "needs posix.system,", "no setting allows it"]
    else:
        evil = run / "checkpoints" / "last.pt"
        evil.parent.mkdir(parents=True)
        torch.save(planted_last_pt(marker, CopyPlant), evil)
        expected = [f"{evil}: refused", "needs shutil.copyfile,", "model.trust_checkpoint_globals=[shutil.copyfile]",
                    "train.resume=never"]
    before = evil.read_bytes()
    proc = run_command([PYTHON, "-m", "masksub_exp.train", *args], cwd=ROOT, env=cli_env, capture_output=True,
                          text=True, timeout=300)
    assert not marker.exists(), "the file's payload ran"  # first: what the old weights_only=False reading did
    lines = one_line(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("config error: ") and all(part in lines[0] for part in expected), lines[0]
    assert evil.read_bytes() == before  # the file is left as it was, for whoever investigates
    assert not (run / "metrics.jsonl").exists() and "global batch" not in proc.stderr  # nothing was built


def test_trust_reaches_the_resume_and_leaves_the_run_identity_alone(tmp_path: Path) -> None:
    """model.trust_checkpoint_globals applies to the run's own last.pt too, and is not part of the config
    hash: adding it to a command never stops that command's run from resuming."""
    from masksub_exp.config import to_settings
    from masksub_exp.run_folder import previous_run

    from .conftest import compose_cfg, smoke_overrides

    plain = to_settings(compose_cfg(smoke_overrides(), tmp_path))
    trust = "model.trust_checkpoint_globals=[datetime.date]"
    trusting = to_settings(compose_cfg([*smoke_overrides(), trust], tmp_path))
    assert trusting.model.trust_checkpoint_globals == ["datetime.date"]
    assert checkpoints.config_hash(plain) == checkpoints.config_hash(trusting)
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    torch.save({"format": checkpoints.FORMAT_VERSION, "config_hash": checkpoints.config_hash(plain),
                "saved_on": datetime.date(2026, 12, 2)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"needs datetime\.date,.*globals=\[datetime\.date\]"):
        previous_run(tmp_path, plain)
    assert previous_run(tmp_path, trusting)["saved_on"] == datetime.date(2026, 12, 2)
