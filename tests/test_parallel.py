"""The xdist scheduling of `make test` (tests/parallel.py): each SLURM cluster's tests stay in one worker."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import ROOT, UP_LOCK, up_lock
from .parallel import check_groups, cluster_group, make_scheduler

pytestmark = pytest.mark.fast

ONE_NODE = "tests/test_slurm.py::test_plan_shows_parameters_without_submitting"
TWO_NODES = "tests/test_multinode.py::test_two_node_job_is_preempted_requeued_and_resumes_exactly"
PARAMETRISED = "tests/test_cli.py::test_sbatch_refusals_name_what_was_asked_and_the_override[x-y-z]"
NO_CLUSTER = "tests/test_config.py::test_default_is_the_demo"


def test_the_group_is_read_from_the_cluster_fixture_a_test_takes() -> None:
    assert cluster_group(ROOT, ONE_NODE) == cluster_group(ROOT, PARAMETRISED) == "slurm-1node"
    assert cluster_group(ROOT, TWO_NODES) == "slurm-2node"
    assert cluster_group(ROOT, NO_CLUSTER) is None
    assert cluster_group(ROOT, "tests/no_such_file.py::test_x") is None


def test_the_scheduler_puts_each_cluster_in_one_work_unit(request: pytest.FixtureRequest,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request.config.option, "tx", ["popen"] * 3)  # what `-n 3` sets
    scheduler = make_scheduler(request.config, None)
    scopes = {nodeid: scheduler._split_scope(nodeid) for nodeid in (ONE_NODE, TWO_NODES, PARAMETRISED, NO_CLUSTER)}
    assert scopes == {ONE_NODE: "slurm-1node", PARAMETRISED: "slurm-1node", TWO_NODES: "slurm-2node",
                      NO_CLUSTER: NO_CLUSTER}  # a test of no cluster is a unit of its own


def test_a_cluster_reached_through_another_fixture_is_refused(request: pytest.FixtureRequest) -> None:
    item = request.node
    check_groups(ROOT, [item])  # this test takes no cluster, and none is resolved for it
    item.fixturenames = [*item.fixturenames, "slurm_env"]  # as if a fixture it takes asked for the cluster
    with pytest.raises(pytest.UsageError, match="through another fixture"):
        check_groups(ROOT, [item])


def test_the_up_lock_keeps_other_processes_out_until_released() -> None:
    try_lock = ["flock", "--nonblock", str(UP_LOCK), "true"]  # util-linux: exit 1 when the lock is held
    with up_lock():
        with up_lock():  # re-entered in this process: no wait on itself
            assert subprocess.run(try_lock).returncode == 1
        assert subprocess.run(try_lock).returncode == 1  # the inner exit kept it
    assert subprocess.run(try_lock).returncode == 0
