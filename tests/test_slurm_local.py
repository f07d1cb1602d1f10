"""launchers/slurm-local on the real local SLURM: `up` of another shape never breaks a running cluster.

The test brings up its own clusters under its own root, ports, subnet, bridge and namespace names, so the
clusters of the `slurm_env` and `multinode_slurm_env` fixtures (and other sessions' runs) are never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "launchers" / "slurm-local"
DAEMONS = {"slurmctld", "slurmd", "slurmdbd", "mariadbd", "slurmstepd"}


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "SLURM_LOCAL_NODES")}
    env.update(SLURM_LOCAL_ROOT=str(root), SLURM_LOCAL_PORT_BASE="7217", SLURM_LOCAL_DB_PORT="3322",
               SLURM_LOCAL_SUBNET="10.77.22", SLURM_LOCAL_BRIDGE="mst22br", SLURM_LOCAL_NS_PREFIX="mst22-",
               SLURM_LOCAL_VETH_PREFIX="mst22v-")
    return env


def _local(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def _daemons(root: Path) -> dict[int, str]:
    """Every SLURM/MariaDB process of this root, whatever started it: by its environment (SLURM_CONF) or
    its command line (mariadbd's datadir). A stray slurmd that `down` cannot stop shows up here."""
    conf = f"SLURM_CONF={root}/slurm.conf".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            if comm not in DAEMONS or (proc / "stat").read_text().split()[2] == "Z":
                continue
            if conf in (proc / "environ").read_bytes().split(b"\0") or str(root).encode() in (
                    proc / "cmdline").read_bytes():
                found[int(proc.name)] = comm
        except OSError:  # the process ended while we looked
            continue
    return found


def _srun(env: dict[str, str], nodes: int) -> list[str]:
    proc = subprocess.run(["srun", "-N", str(nodes), "-t1", "hostname"], capture_output=True, text=True,
                          timeout=120, env=dict(env, SLURM_CONF=f"{env['SLURM_LOCAL_ROOT']}/slurm.conf"))
    assert proc.returncode == 0, proc.stderr
    return sorted(proc.stdout.split())


def _refused(proc: subprocess.CompletedProcess[str], running: str, asked: str, root: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert running in lines[0] and asked in lines[0] and str(root) in lines[0], lines[0]
    assert "SLURM_LOCAL_ROOT=" in lines[0] and " down" in lines[0], lines[0]
    assert proc.stdout == ""  # nothing for `eval` to pick up


@pytest.mark.slow
def test_up_of_another_shape_refuses_a_running_cluster_and_reshapes_a_stopped_one():
    if os.geteuid() != 0:
        pytest.fail("slurm-local needs root")
    root = Path(tempfile.mkdtemp(prefix="msl22-", dir="/tmp"))
    env = _env(root)
    try:
        up = _local(env, "up")
        assert up.returncode == 0, up.stderr[-3000:]
        conf_before = (root / "slurm.conf").read_bytes()
        running = _daemons(root)
        assert {"slurmctld", "slurmd", "slurmdbd", "mariadbd"} <= set(running.values()), running

        # a running one-node cluster: `up --nodes 2` under its root is refused in one line, and changes nothing
        _refused(_local(env, "up", "--nodes", "2"), "1-node cluster", "2-node cluster", root)
        assert (root / "slurm.conf").read_bytes() == conf_before
        assert (root / "nodes").read_text().strip() == "1"
        assert _daemons(root) == running
        assert _local(env, "status").returncode == 0
        assert _srun(env, 1) == [os.uname().nodename]

        # `down` stops all of it even when told another shape: no stray slurmd survives
        down = _local(env, "down", "--nodes", "2")
        assert down.returncode == 0, down.stderr
        assert _daemons(root) == {}

        # a stopped cluster is reshaped: two nodes in their own namespaces, then refused the other way round
        up2 = _local(env, "up", "--nodes", "2")
        assert up2.returncode == 0, up2.stderr[-3000:]
        assert _srun(env, 2) == ["node1", "node2"]
        _refused(_local(env, "up", "--nodes", "1"), "2-node cluster", "1-node cluster", root)
        assert _local(env, "up").returncode == 0  # no --nodes: the shape the root has
        assert _srun(env, 2) == ["node1", "node2"]

        down = _local(env, "down")
        assert down.returncode == 0, down.stderr
        assert _daemons(root) == {}
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert "mst22" not in links and "mst22-" not in netns
    finally:
        _local(env, "down")
        leftovers = _daemons(root)
        shutil.rmtree(root, ignore_errors=True)
        assert leftovers == {}, leftovers
