"""Shared fixtures: compose the real conf/ tree with Hydra's compose API."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import masksub_exp.train  # noqa: F401  (registers the schema and resolvers)

from . import parallel, warm_python

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FMNIST = Path("/usr/share/datasets/fashion-mnist")

# pytest-xdist runs several workers on the same cores: one torch thread per worker there, or they oversubscribe
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
torch.set_num_threads(THREADS)

# `make test-fast`, the inner loop: config, masks, step, reference gradients, checkpoints, layout (single tests
# elsewhere, e.g. the results page's analysis, carry @pytest.mark.fast themselves)
FAST_MODULES = {"test_config", "test_vit_tokens", "test_step", "test_reference", "test_checkpoints", "test_layout"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    parallel.check_groups(config.rootpath, items)
    for item in items:
        if item.path.stem in FAST_MODULES:
            item.add_marker(pytest.mark.fast)
    if WORKERS > 1:  # the longest first, so that no worker starts a 2-minute test when the others are done
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: the suite also runs without xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadgroup`: each SLURM cluster's tests in one worker (tests/parallel.py)."""
    return parallel.make_scheduler(config, log) if config.getvalue("dist") == "loadgroup" else None


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


def command_env() -> dict[str, str]:
    """Environment for running the CLI in a subprocess from the repo root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = str(THREADS) if WORKERS > 1 else env.get("OMP_NUM_THREADS", "2")
    return env


@pytest.fixture
def cli_env() -> dict[str, str]:
    return command_env()


PYTHON = sys.executable
_WARM: list[warm_python.WarmServer] = []


@pytest.fixture(scope="session", autouse=True)
def _warm_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """This worker's warm Python (tests/warm_python.py), started by the first command that runs warm."""
    if os.environ.get("MASKSUB_TESTS_COLD"):  # every command a fresh interpreter (to compare, or to rule it out)
        yield
        return
    server = warm_python.WarmServer(PYTHON, command_env(), tmp_path_factory.mktemp("warm"))
    _WARM.append(server)
    yield
    _WARM.remove(server)
    server.stop()


def start_command(cmd: list[str], **kw: Any) -> subprocess.Popen | warm_python.WarmProcess:
    """subprocess.Popen(cmd, **kw), forked from the warm Python when cmd is `python -m ...` that can run warm
    (tests/warm_python.py says when; Popen's stdin, if given, is not passed: the commands read none)."""
    if _WARM and _WARM[0].accepts(cmd, kw.get("env")):
        return warm_python.WarmProcess(_WARM[0], cmd, **kw)
    return subprocess.Popen(cmd, **kw)


def run_command(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, **kw), warm where start_command would start it warm."""
    if _WARM and _WARM[0].accepts(cmd, kw.get("env")):
        return warm_python.run(_WARM[0], cmd, **kw)
    return subprocess.run(cmd, **kw)


def run_cli(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m masksub_exp.train ARGS` from the repo root, output captured as text."""
    return run_command([PYTHON, "-m", "masksub_exp.train", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
UP_LOCK = Path(tempfile.gettempdir()) / "masksub-slurm-local-up.lock"
_UP_LOCK_HELD: list = []


@contextmanager
def up_lock() -> Iterator[None]:
    """One machine-wide lock for `launchers/slurm-local up`: xdist workers (and other test sessions) reach their
    first SLURM test together, and two `up`s at once race on apt, munged and the daemons' pid files."""
    if _UP_LOCK_HELD:  # re-entered (a test holding it asks for a cluster fixture): flock would wait on itself
        yield
        return
    with open(UP_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        _UP_LOCK_HELD.append(lock)
        try:
            yield
        finally:
            _UP_LOCK_HELD.pop()


def slurm_local_up(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`launchers/slurm-local up ARGS` under the lock; the second `up` finds the cluster healthy in a second."""
    with up_lock():
        return subprocess.run([str(ROOT / "launchers" / "slurm-local"), "up", *args], capture_output=True,
                              text=True, timeout=600, env=env)


@pytest.fixture(autouse=True)
def _own_clusters_under_the_up_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that runs slurm-local itself on its own root (tests/test_slurm_local.py) holds the `up` lock
    throughout, so that its `up`s and `down`s never race a fixture's `up` in another xdist worker."""
    if request.node.path.stem not in parallel.OWN_CLUSTER_MODULES:
        yield
        return
    with up_lock():
        yield


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """The real one-node SLURM cluster (launchers/slurm-local, needs root), and an env that reaches it."""
    proc = slurm_local_up(dict(os.environ))
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
    proc = slurm_local_up(env, "--nodes", "2")
    if proc.returncode != 0:
        pytest.fail(f"the local two-node SLURM cluster did not come up (needs root):\n{proc.stderr[-3000:]}")
    env["PYTHONPATH"] = str(ROOT)
    env["SLURM_CONF"] = proc.stdout.strip().splitlines()[-1].split("=", 1)[1]
    env["OMP_NUM_THREADS"] = "1"
    return env


@contextlib.contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at `mount` (root only) for the length of the block."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)  # lazy: a test that failed may still map a file


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (root only), to fill up for real: room for one 600 KiB checkpoint, not for two."""
    with tmpfs(tmp_path / "tiny", "size=1m") as mount:
        yield mount


# A function, as source for `python -c` scripts that try many command lines in one interpreter: it runs
# `python -m masksub_exp.train ARGV` as __main__ in that process and returns (exit code, stdout, stderr).
RUN_MAIN_SOURCE = """
def run_main(argv):
    import contextlib, io, runpy, sys
    from hydra.core.global_hydra import GlobalHydra
    GlobalHydra.instance().clear()
    sys.argv = argv
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module("masksub_exp.train", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code or 0
    return code, out.getvalue(), err.getvalue()
"""


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")  # no credentials: logger.mode=auto must pick offline
    monkeypatch.setenv("WANDB_SILENT", "true")
