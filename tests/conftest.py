"""Shared fixtures: compose the real conf/ tree with Hydra's compose API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import masksub_exp.train  # noqa: F401  (registers the schema and resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FMNIST = Path("/usr/share/datasets/fashion-mnist")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def compose_cfg(overrides: list[str], out_dir: Path | None = None) -> DictConfig:
    """The config `python -m masksub_exp.train <overrides>` would see, with run paths in `out_dir`."""
    extra = []
    if out_dir is not None:
        extra = [f"paths.output_dir={out_dir}", f"paths.log_dir={out_dir.parent}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides + extra)


def smoke_overrides(**kw: object) -> list[str]:
    base = {"experiment": "smoke", "train.progress": "false"}
    base.update({k.replace("__", "."): str(v) for k, v in kw.items()})
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running the CLI in a subprocess from the repo root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


PYTHON = sys.executable


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """The real one-node SLURM cluster (launchers/slurm-local, needs root), and an env that reaches it."""
    proc = subprocess.run([str(ROOT / "launchers" / "slurm-local"), "up"], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"the local SLURM cluster did not come up (needs root):\n{proc.stderr[-3000:]}")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["SLURM_CONF"] = proc.stdout.strip().splitlines()[-1].split("=", 1)[1]
    env["OMP_NUM_THREADS"] = "1"
    return env


MULTINODE_ROOT = "/tmp/masksub-slurm-2node"


@pytest.fixture(scope="session")
def multinode_slurm_env() -> dict[str, str]:
    """A real two-node SLURM cluster (launchers/slurm-local up --nodes 2, needs root): node1 and node2, each
    slurmd in its own network namespace with its own address and host name. It has its own root, ports and
    database, so it runs beside the one-node cluster of `slurm_env`."""
    env = dict(os.environ, SLURM_LOCAL_ROOT=MULTINODE_ROOT)
    proc = subprocess.run([str(ROOT / "launchers" / "slurm-local"), "up", "--nodes", "2"], capture_output=True,
                          text=True, timeout=600, env=env)
    if proc.returncode != 0:
        pytest.fail(f"the local two-node SLURM cluster did not come up (needs root):\n{proc.stderr[-3000:]}")
    env["PYTHONPATH"] = str(ROOT)
    env["SLURM_CONF"] = proc.stdout.strip().splitlines()[-1].split("=", 1)[1]
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A real 1 MiB tmpfs (root only), to fill up for real: room for one 600 KiB checkpoint, not for two."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)  # lazy: a test that failed may still map a file
