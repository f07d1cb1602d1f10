"""Sweeps on a real one-node SLURM cluster (launchers/slurm-local) through the project's launcher.

Real daemons, real sbatch/srun/scancel, real multi-process gloo DDP on the CPU. Nothing is mocked;
the only thing a one-node cluster cannot show is DDP across nodes.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import torch

from masksub_exp import checkpoints
from masksub_exp.train import train

from .conftest import PYTHON, ROOT, compose_cfg, run_command, start_command

LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=3",
            'hydra.launcher.setup=["export OMP_NUM_THREADS=1"]']


def sweep(args: list[str], env: dict[str, str], tasks: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    shape = [] if any("tasks_per_node" in a for a in args) else [f"hydra.launcher.tasks_per_node={tasks}"]
    cmd = [PYTHON, "-m", "masksub_exp.train", "-m", *LAUNCHER, *shape, f"hydra.launcher.name=t{uuid.uuid4().hex[:8]}",
           *args]
    return run_command(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll a condition (not a fixed sleep): returns its first truthy value or fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def train_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r["step"] for r in lines if r["kind"] == "train"]


def test_sweep_runs_both_jobs_and_returns(slurm_env: dict, tmp_path: Path) -> None:
    proc = sweep(["experiment=smoke", "masksub=off,mask", "train.max_steps=4", f"hydra.sweep.dir={tmp_path}"],
                 slurm_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [r.name for r in runs] == ["masksub=mask,train.max_steps=4", "masksub=off,train.max_steps=4"]
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "capped by train.max_steps" and summary["step"] == 4
        assert (run / "checkpoints" / "last.pt").is_file() and (run / "config.yaml").is_file()
        assert train_steps(run)[-1] == 4
    assert "results in" in proc.stdout  # the sweep's comparison table


DDP_ARGS = ["experiment=smoke", "masksub.ratio=0.0", "recipe.optimizer.name=sgd", "recipe.optimizer.weight_decay=0",
            "train.max_steps=6", "train.log_every=3"]


def test_ddp_two_tasks_match_one_process_and_all_reduce_once_per_step(slurm_env: dict, tmp_path: Path) -> None:
    # ratio 0 keeps the sub-branch deterministic (masks are drawn per rank, so r > 0 cannot match a
    # 1-process run); the step still runs both branches, the first backward under no_sync()
    proc = sweep([*DDP_ARGS, "train.batch_size=16", "train.count_allreduce=true", f"hydra.sweep.dir={tmp_path}"],
                 slurm_env, tasks=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert_two_ranks_match_one_process(run, tmp_path / "single")


def assert_two_ranks_match_one_process(run: Path, reference: Path) -> float:
    """A 2-rank run of DDP_ARGS at batch 16 per rank: one all-reduce per step, and the weights of a one-process
    run at batch 32 (trained here, into `reference`). Returns the largest weight difference."""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 32
    assert summary["grad_allreduces"] == 6, "each step must all-reduce gradients exactly once (one bucket)"
    train(compose_cfg([*DDP_ARGS, "train.batch_size=32", "train.progress=false"], reference))
    a = checkpoints.load(run / "checkpoints" / "last.pt")["model"]
    b = checkpoints.load(reference / "checkpoints" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    return max((a[k] - b[k]).abs().max().item() for k in a)


PREEMPT_ARGS = ["experiment=smoke", "model=vit_fmnist", "data.img_size=28", "data.synthetic_train_size=2048",
                "train.batch_size=32", "train.epochs=2", "train.log_every=1"]  # 128 steps: a preemption at 15


def preempt_one_of_twins(submit, args: list[str], env: dict[str, str], sweep_dir: Path, steps: int,
                         wait_s: float) -> tuple[dict, dict, Path, Path]:
    """Two identical runs (train.ckpt_every changes only the run folder, not the trajectory); the first is
    preempted with USR2 after `steps` steps. Returns both summaries and run folders once both finished."""
    proc = submit([*args, "train.ckpt_every=0,100000", "hydra.launcher.wait=false", f"hydra.sweep.dir={sweep_dir}"],
                  env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_ids = [line.split()[1].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("submitted")]
    assert len(job_ids) == 2, proc.stdout
    try:
        # Hydra names each run folder after the job's overrides
        preempted = wait_until(lambda: next(sweep_dir.glob("*train.ckpt_every=0,*"), None), 60, "the run folder")
        reference = wait_until(lambda: next(sweep_dir.glob("*train.ckpt_every=100000,*"), None), 60, "the folder")
        wait_until(lambda: len(train_steps(preempted)) >= steps, wait_s / 2, f"the first job to train {steps} steps")
        subprocess.run(["scancel", "--signal=USR2", job_ids[0]], env=env, check=True)
        summaries = [wait_until(lambda r=r: (r / "summary.json").exists() and json.loads((r / "summary.json")
                                .read_text()), wait_s, f"{r.name} to finish") for r in (preempted, reference)]
    finally:
        subprocess.run(["scancel", *job_ids], env=env)
    return summaries[0], summaries[1], preempted, reference


def assert_resumed_exactly(stopped: dict, twin: dict, preempted: Path, reference: Path, steps: int) -> None:
    assert stopped["status"] == twin["status"] == "complete"
    assert stopped["restarts"] == 1 and twin["restarts"] == 0
    assert steps <= stopped["resumed_from_step"] < stopped["step"] == twin["step"]
    assert train_steps(preempted) == list(range(1, stopped["step"] + 1))  # every step logged once
    a = checkpoints.load(preempted / "checkpoints" / "last.pt")["model"]
    b = checkpoints.load(reference / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run diverged from the uninterrupted one"


def test_preemption_requeues_and_resumes_exactly(slurm_env: dict, tmp_path: Path) -> None:
    stopped, twin, preempted, reference = preempt_one_of_twins(sweep, PREEMPT_ARGS, slurm_env, tmp_path, 15, 300)
    assert_resumed_exactly(stopped, twin, preempted, reference, 15)


def test_failing_job_is_reported_and_nothing_hangs(slurm_env: dict, tmp_path: Path) -> None:
    # valid config, but the data cannot fill one batch: the error happens inside the job
    proc = sweep(["experiment=smoke", "data.synthetic_train_size=8", f"hydra.sweep.dir={tmp_path}"], slurm_env,
                 timeout=240)
    assert proc.returncode != 0
    assert "fewer than one global batch" in proc.stderr + proc.stdout


def test_cancelled_job_is_reported_and_nothing_hangs(slurm_env: dict, tmp_path: Path) -> None:
    name = f"j{uuid.uuid4().hex[:8]}"  # nothing in the names may contain "cancel": only SLURM's report can
    cmd = [PYTHON, "-m", "masksub_exp.train", "-m", *LAUNCHER, "hydra.launcher.tasks_per_node=1",
           f"hydra.launcher.name={name}", *PREEMPT_ARGS, "train.epochs=50", f"hydra.sweep.dir={tmp_path}"]
    launcher = start_command(cmd, cwd=ROOT, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        job = wait_until(lambda: subprocess.run(["squeue", "-h", "-t", "R", "-n", name, "-o", "%i"], env=slurm_env,
                                                capture_output=True, text=True).stdout.strip(), 120,
                         "the job to start running")
        subprocess.run(["scancel", job], env=slurm_env, check=True)
        out, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    # SLURM's state for this job, as submitit reports it; case-sensitive, since pytest names tmp_path after the
    # test ("test_cancelled_...") and that path is in the output too
    assert "CANCELLED" in err + out and job in err + out


def test_plan_shows_parameters_without_submitting(slurm_env: dict, tmp_path: Path) -> None:
    proc = sweep(["experiment=smoke", "masksub=off,mask", "hydra.launcher.plan=true", f"hydra.sweep.dir={tmp_path}"],
                 slurm_env, tasks=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nothing submitted" in proc.stdout and "#SBATCH --ntasks-per-node=2" in proc.stdout
    assert "#SBATCH --signal=USR2@120" in proc.stdout and "#SBATCH --time=10" in proc.stdout
    assert proc.stdout.count("run folder:") == 2
    assert not (tmp_path / ".submitit").exists()


@pytest.mark.parametrize("args,message", [
    (["hydra.launcher.gpus_per_node=2", "hydra.launcher.tasks_per_node=1"], "one task per GPU"),
    (["masksub.ratio=1.5"], "masksub.ratio"),
])
def test_bad_sweeps_are_refused_before_submission(slurm_env: dict, tmp_path: Path, args: list[str],
                                                  message: str) -> None:
    proc = sweep(["experiment=smoke", *args, f"hydra.sweep.dir={tmp_path}"], slurm_env)
    assert proc.returncode != 0 and message in proc.stderr
    assert not (tmp_path / ".submitit").exists()
