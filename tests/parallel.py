"""How `make test` spreads the suite over pytest-xdist workers (`-n 4 --dist loadgroup`; hooks in conftest.py).

The tests of one SLURM cluster run in one worker, one after another: they share its 8 declared CPUs and its
queue, and the node-loss tests take a node down. The two clusters (one node, two nodes) run beside each other.

xdist's own `xdist_group` grouping does nothing on pytest 9.2: it renames the test's node id, which pytest
now derives from a structured id (pytest-xdist issue #1386, open). So the controller's scheduler groups the
tests itself, from the cluster fixture a test asks for by name; every worker checks, at collection, that the
fixtures pytest resolved agree, so a test reaching a cluster some other way fails loudly instead of racing.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from xdist.scheduler import LoadGroupScheduling

CLUSTER_GROUPS = {"slurm_env": "slurm-1node", "multinode_slurm_env": "slurm-2node"}
# modules whose tests bring up and down clusters of their own (own roots and ports) with launchers/slurm-local:
# conftest.py holds the machine-wide `up` lock while each of them runs
OWN_CLUSTER_MODULES = {"test_slurm_local"}


@functools.cache
def _cluster_tests(path: Path) -> dict[str, str]:
    """Test function name -> cluster group, for the tests of `path` that take a cluster fixture argument."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            params = {a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)}
            groups = [group for fixture, group in CLUSTER_GROUPS.items() if fixture in params]
            if groups:
                found[node.name] = groups[0]
    return found


def cluster_group(root: Path, nodeid: str) -> str | None:
    """The cluster group of a test, from its node id alone (all the xdist controller sees)."""
    path, _, rest = nodeid.partition("::")
    name = rest.split("[", 1)[0].split("::")[-1].split("@", 1)[0]
    file = root / path
    return _cluster_tests(file).get(name) if file.suffix == ".py" and file.is_file() else None


def check_groups(root: Path, items: list[pytest.Item]) -> None:
    """Collection-time check in each worker: the scheduler's reading agrees with the fixtures pytest resolved."""
    for item in items:
        used = [group for fixture, group in CLUSTER_GROUPS.items() if fixture in getattr(item, "fixturenames", ())]
        if used:
            item.add_marker(pytest.mark.xdist_group(used[0]))  # for xdist's own grouping, once it works again
        if (used[0] if used else None) != cluster_group(root, item.nodeid):
            raise pytest.UsageError(f"{item.nodeid} reaches a SLURM cluster through another fixture: take "
                                    f"{' or '.join(CLUSTER_GROUPS)} as an argument (tests/parallel.py groups by it)")


def make_scheduler(config: pytest.Config, log: object) -> LoadGroupScheduling:
    """LoadGroupScheduling whose groups are the clusters (and any working `xdist_group` suffix)."""
    from xdist.scheduler import LoadGroupScheduling

    root = config.rootpath

    class ClusterGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return cluster_group(root, nodeid) or super()._split_scope(nodeid)

    return ClusterGroups(config, log)  # type: ignore[arg-type]  (xdist's Producer)
