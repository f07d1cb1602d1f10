"""Multi-node DDP on a real two-node SLURM cluster on this machine (launchers/slurm-local up --nodes 2).

node1 and node2 are each a slurmd in its own network namespace with its own address (10.77.0.11/12 on a
bridge) and host name; the ranks rendezvous over TCP between them, through the project's launcher
(hydra/launcher=slurm_cpu hydra.launcher.nodes=2: one gloo process per node). Nothing is mocked.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from masksub_exp import checkpoints

from .conftest import PYTHON, ROOT, run_command, slurm_local_up, start_command
from .test_slurm import (
    DDP_ARGS,
    assert_resumed_exactly,
    assert_two_ranks_match_one_process,
    preempt_one_of_twins,
    train_steps,
    wait_until,
)

pytestmark = pytest.mark.slow  # each test submits real two-node jobs (20-90 s on a loaded 2-core machine)

LAUNCHER = ["hydra/launcher=slurm_cpu", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=3"]


def sweep(args: list[str], env: dict[str, str], timeout: int = 240,
          setup: str = "export OMP_NUM_THREADS=1") -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "masksub_exp.train", "-m", *LAUNCHER, f"hydra.launcher.setup=[{json.dumps(setup)}]",
           f"hydra.launcher.name=mn{uuid.uuid4().hex[:8]}", *args]
    return run_command(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_folder(sweep_dir: Path) -> Path:
    return next(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def hosts_of_ranks(sweep_dir: Path) -> dict[int, str]:
    """From submitit's logs: the host each global rank ran on."""
    found = {}
    for log in sweep_dir.glob(".submitit/*/*_log.out"):
        for m in re.finditer(r"hostname=(\S+), local_rank=\d+\(\d+\), node=\d+\(\d+\), global_rank=(\d+)",
                             log.read_text()):
            found[int(m.group(2))] = m.group(1)
    return found


def test_two_nodes_train_like_one_process_with_one_all_reduce_per_step(multinode_slurm_env: dict,
                                                                         tmp_path: Path) -> None:
    proc = sweep([*DDP_ARGS, "train.batch_size=16", "train.count_allreduce=true", f"hydra.sweep.dir={tmp_path}"],
                 multinode_slurm_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = run_folder(tmp_path)
    assert hosts_of_ranks(tmp_path) == {0: "node1", 1: "node2"}, "one rank per node, on two hosts"
    print(f"two nodes vs one process: max |dw| = {assert_two_ranks_match_one_process(run, tmp_path / 'single'):.2e}")


def test_unreachable_master_fails_within_the_timeout_naming_address_and_port(multinode_slurm_env: dict,
                                                                             tmp_path: Path) -> None:
    # MASTER_ADDR preset to an address of the cluster's own subnet that no namespace holds: no rank can reach it
    start = time.monotonic()
    proc = sweep(["experiment=smoke", "train.max_steps=2", "train.dist_timeout_min=0.05",
                  f"hydra.sweep.dir={tmp_path}"], multinode_slurm_env,
                 setup="export OMP_NUM_THREADS=1 MASTER_ADDR=10.77.0.99 MASTER_PORT=29517")
    elapsed = time.monotonic() - start
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0
    assert "could not join the process group at MASTER_ADDR:MASTER_PORT=10.77.0.99:29517" in out, out[-3000:]
    assert "train.dist_timeout_min=0.05" in out
    assert elapsed < 120, f"the failed rendezvous took {elapsed:.0f} s to report"


PREEMPT_ARGS = ["experiment=smoke", "masksub.ratio=0.0", "data.synthetic_train_size=2048", "train.batch_size=8",
                "train.epochs=2", "train.log_every=1"]


def test_two_node_job_is_preempted_requeued_and_resumes_exactly(multinode_slurm_env: dict, tmp_path: Path) -> None:
    stopped, twin, preempted, reference = preempt_one_of_twins(sweep, PREEMPT_ARGS, multinode_slurm_env, tmp_path,
                                                               5, 240)
    assert stopped["world_size"] == 2  # both nodes, before and after the requeue
    assert_resumed_exactly(stopped, twin, preempted, reference, 5)


def alive(pid: int) -> bool:
    """Running (a zombie has ended: its parent simply has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rank_processes(node: str) -> list[int]:
    """The training processes (submitit tasks) running inside a node's network namespace."""
    pids = subprocess.run(["ip", "netns", "pids", f"msn-{node}"], capture_output=True, text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        # the task itself (python -m submitit.core._submit), not the srun that started it (whose args name both)
        if Path(argv[0]).name.startswith("python") and "submitit.core._submit" in argv:
            found.append(int(pid))
    return found


def node_loss_sweep(tmp_path: Path, name: str, train_size: int) -> list[str]:
    """A two-node sweep of one job to hit mid-run: a checkpoint every 4 steps, collectives bounded by 30 s."""
    args = ["experiment=smoke", "masksub.ratio=0.0", f"data.synthetic_train_size={train_size}", "train.batch_size=8",
            "train.epochs=1", "train.log_every=1", "train.ckpt_every=4", "train.dist_timeout_min=0.5",
            f"hydra.sweep.dir={tmp_path}"]
    return [PYTHON, "-m", "masksub_exp.train", "-m", *LAUNCHER, 'hydra.launcher.setup=["export OMP_NUM_THREADS=1"]',
            f"hydra.launcher.name={name}{uuid.uuid4().hex[:6]}", *args]


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return start_command(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextmanager
def node_loss_job(env: dict[str, str], sweep_dir: Path, name: str,
                  train_size: int) -> Iterator[tuple[list[str], subprocess.Popen, Path]]:
    """A node-loss test's job, started: its command, its launcher and its run folder once it has logged 6 steps
    (a checkpoint at step 4 is on disk). On the way out, whatever happened, the launcher is killed and the cluster
    brought up again: no node is left down for the next test (a healthy cluster's `up` takes a second)."""
    cmd = node_loss_sweep(sweep_dir, name, train_size=train_size)
    launcher = start(cmd, env)
    try:
        run = wait_until(lambda: next((p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                                      None), 120, "the run folder")
        wait_until(lambda: len(train_steps(run)) >= 6, 120, "6 steps (a checkpoint at step 4)")
        yield cmd, launcher, run
    finally:
        launcher.kill()
        slurm_local_up(env, "--nodes", "2")


def test_lost_node_fails_the_job_clearly_within_the_timeout_and_a_rerun_resumes(multinode_slurm_env: dict,
                                                                               tmp_path: Path) -> None:
    env = multinode_slurm_env
    with node_loss_job(env, tmp_path, "lost", train_size=2048) as (cmd, launcher, run):
        victims = rank_processes("node2")
        assert victims, "no training process found on node2"
        lost_at = time.monotonic()
        subprocess.run(["kill", "-9", *map(str, victims)], check=True)  # node2's rank dies at once
        out, err = launcher.communicate(timeout=180)
        reported_after = time.monotonic() - lost_at
    assert launcher.returncode != 0
    text = out + err
    # srun ends the whole step when a task is killed, so rank 0 does not even wait for its 30 s timeout
    assert "(task: 1)" in text and "has not produced any output (state: FAILED)" in text, text[-3000:]
    assert reported_after < 60, f"the sweep took {reported_after:.0f} s to report the lost node"
    lost_step = checkpoints.load(run / "checkpoints" / "last.pt")["state"]["step"]
    assert lost_step >= 4
    # the same command again resumes from the last checkpoint and finishes
    proc = run_command(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed_from_step"] == lost_step


def test_a_crashed_node_is_declared_down_and_the_requeued_job_resumes_when_it_returns(multinode_slurm_env: dict,
                                                                                     tmp_path: Path) -> None:
    """A node crash: every process of node2 (its slurmd, the job step, the rank) killed at once. Rank 0 on node1
    ends within train.dist_timeout_min, with one line in its log, instead of hanging; SLURM declares node2 DOWN
    after SlurmdTimeout (20 s on this cluster), ends the job as NODE_FAIL and requeues it; once the node is back
    the requeued job runs on both nodes again and resumes from the last checkpoint."""
    env = multinode_slurm_env
    with node_loss_job(env, tmp_path, "crash", train_size=8192) as (_, launcher, run):
        survivors = rank_processes("node1")
        node2 = subprocess.run(["ip", "netns", "pids", "msn-node2"], capture_output=True, text=True).stdout.split()
        assert survivors and len(node2) >= 3, (survivors, node2)  # slurmd, slurmstepd, the rank (at least)
        subprocess.run(["kill", "-9", *node2], check=True)
        lost_at = time.monotonic()
        wait_until(lambda: not any(alive(pid) for pid in survivors), 90, "rank 0 to end")
        rank0_ended = time.monotonic() - lost_at
        job = next(p.name for p in (tmp_path / ".submitit").iterdir() if p.name.isdigit())

        def states() -> str:
            return subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State"], env=env,
                                  capture_output=True, text=True).stdout
        wait_until(lambda: "NODE_FAIL" in states(), 120, "SLURM to declare the job's node failed")
        noticed = time.monotonic() - lost_at
        node_state = subprocess.run(["sinfo", "-h", "-n", "node2", "-o", "%T"], env=env, capture_output=True,
                                    text=True).stdout.strip()
        queued = wait_until(lambda: "PENDING" == subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip(),
            60, "the job to be requeued (PENDING: its node is down)")
        lost_step = checkpoints.load(run / "checkpoints" / "last.pt")["state"]["step"]
        # the node comes back (on a real cluster SLURM would start the requeued job on another node)
        slurm_local_up(env, "--nodes", "2").check_returncode()
        out, err = launcher.communicate(timeout=300)
    assert rank0_ended < 30, f"rank 0 took {rank0_ended:.0f} s (train.dist_timeout_min: 30 s) to end after the crash"
    print(f"rank 0 ended {rank0_ended:.1f} s after the crash; NODE_FAIL after {noticed:.1f} s; node2 {node_state}")
    assert node_state.startswith("down") and queued, node_state
    assert noticed < 90, f"SLURM took {noticed:.0f} s to declare node2 lost"
    assert lost_step >= 4
    assert launcher.returncode == 0, err[-3000:]
    # why the first attempt ended, in one line of the run's log (the task logs start afresh at the requeue)
    reason = [line for line in (run / "train.log").read_text().splitlines() if "distributed: " in line]
    assert len(reason) == 1, (run / "train.log").read_text()[-3000:]
    assert "rank 0: " in reason[0] and "did not complete" in reason[0], reason
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed_from_step"] == lost_step
    assert summary["restarts"] >= 1 and summary["world_size"] == 2
