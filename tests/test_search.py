"""Searches: hydra/sweeper=optuna on data.holdout, through the real local SLURM cluster, interrupted and resumed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from masksub_exp.tools.report import report

from .conftest import PYTHON, ROOT, run_command, start_command
from .test_slurm import wait_until

SEARCH = ["experiment=smoke", "hydra/sweeper=optuna", "hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1",
          'hydra.launcher.setup=["export OMP_NUM_THREADS=1"]', "hydra.launcher.timeout_min=10",
          "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "data.holdout=48", "train.max_steps=3",
          "train.progress=false"]


def states(db: Path) -> list[tuple[int, str]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return sorted(conn.execute("SELECT number, state FROM trials").fetchall())
    except sqlite3.OperationalError:  # the sweeper is creating the tables
        return []


def test_search_without_holdout_is_refused(tmp_path: Path, cli_env: dict) -> None:
    cmd = [PYTHON, "-m", "masksub_exp.train", "-m", "experiment=smoke", "hydra/sweeper=optuna",
           f"hydra.sweep.dir={tmp_path}"]
    proc = run_command(cmd, cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "data.holdout" in proc.stderr and "Traceback" not in proc.stderr
    assert not states(tmp_path / "optuna.db")  # refused before any trial


@pytest.mark.slow
def test_search_on_slurm_survives_a_kill_and_holds_every_trial_once(slurm_env: dict, tmp_path: Path) -> None:
    name = f"search{uuid.uuid4().hex[:8]}"
    cmd = [PYTHON, "-m", "masksub_exp.train", "-m", *SEARCH, f"hydra.launcher.name={name}",
           f"hydra.sweep.dir={tmp_path}"]
    db = tmp_path / "optuna.db"
    # 1. start the 4-trial search (2 slots, each taking a new trial as soon as its trial ends); kill the sweeper
    # (SIGKILL, no clean-up) once all 4 trials are asked and some still run
    first = start_command(cmd, cwd=ROOT, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        wait_until(lambda: len(states(db)) == 4 and any(s == "RUNNING" for _, s in states(db)), 300,
                   "the last trial to be asked", interval=0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        log = first.communicate()[0]
    killed = states(db)
    running = [n for n, s in killed if s == "RUNNING"]
    assert len(killed) == 4 and running and all(s in ("COMPLETE", "RUNNING") for _, s in killed), log[-3000:]

    # jobs already submitted for the second batch run on without their sweeper; let them end
    def queue_empty() -> bool:
        out = subprocess.run(["squeue", "-h", "-n", name], env=slurm_env, capture_output=True, text=True)
        return out.returncode == 0 and not out.stdout.strip()

    wait_until(queue_empty, 300, "the killed sweep's jobs to leave the queue", interval=0.5)

    # 2. the same command again: runs the trials left running (their run folders resume), asks nothing new
    second = run_command(cmd, cwd=ROOT, env=slurm_env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert f"Resuming trial(s) {running}" in second.stdout + second.stderr
    assert states(db) == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE"), (3, "COMPLETE")]

    # every trial once, each with its own run folder, scored on the held-out samples
    search = json.loads(next((tmp_path / "searches").glob("*.json")).read_text())
    trials = search["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    ratios = [t["params"]["masksub.ratio"] for t in trials]
    assert len(set(ratios)) == 4 and all(0.05 <= r <= 0.95 for r in ratios)
    folders = {Path(t["run_dir"]) for t in trials}
    assert len(folders) == 4 and folders == {p.parent for p in tmp_path.glob("*/summary.json")}
    digests = set()
    for t in trials:
        summary = json.loads((Path(t["run_dir"]) / "summary.json").read_text())
        assert summary["eval_split"] == "holdout" and summary["holdout_size"] == 48 and summary["step"] == 3
        assert summary["top1"] == t["value"] and "test_top1" in summary
        assert summary["masksub_ratio"] == pytest.approx(t["params"]["masksub.ratio"])
        digests.add(summary["holdout_sha256"])
    assert len(digests) == 1  # every trial scored on the same held-out samples
    assert search["best"]["value"] == max(t["value"] for t in trials)

    # 3. once more: the study is complete, nothing is launched
    third = run_command(cmd, cwd=ROOT, env=slurm_env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "sweep output dir" not in third.stdout + third.stderr
    assert len(states(db)) == 4

    text = report([tmp_path], tmp_path / "report")
    assert text.count("| COMPLETE |") == 4 and "Best: trial" in text
    assert list((tmp_path / "report").glob("search_*.png"))
