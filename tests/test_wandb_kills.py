"""A W&B offline run killed with SIGKILL at the worst moments still reaches W&B with every step once."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from masksub_exp import checkpoints

from .conftest import PYTHON, ROOT, start_command
from .test_logging import jsonl_steps, metric_steps, metric_steps_of, wandb_files
from .wandb_records import exit_code


def wait_until(proc: subprocess.Popen, condition, what: str) -> None:  # noqa: ANN001
    """Poll `condition` while `proc` runs; once it holds, freeze `proc` (SIGSTOP) and check it again. The caller
    kills a frozen process, so what it reads at the kill is what held there: a run polled late under load cannot
    have moved past the point (another checkpoint) between the check and the kill."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            proc.send_signal(signal.SIGSTOP)
            if condition():
                return
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)  # polling for a file to change, not waiting out a race
    raise AssertionError(f"{what}: not seen (exit code {proc.poll()})")


def checkpoint_step(ckpt: Path) -> int:
    return checkpoints.load(ckpt)["state"]["step"] if ckpt.exists() else -1


def wandb_ahead_of_checkpoint(run: Path, ckpt: Path) -> bool:
    """The second attempt's W&B file holds a step past the checkpoint on disk. Polled: the checkpoint is read
    only once the file holds a row (it stays a 7-byte header until wandb-core writes its first 32 KiB block)."""
    files = wandb_files(run)
    if len(files) != 2 or files[-1].stat().st_size <= 7:
        return False
    return max(metric_steps_of(files[-1])[-1:] or [-1]) > checkpoint_step(ckpt)


@pytest.mark.slow
def test_a_sigkilled_offline_run_reaches_wandb_with_every_step_once(offline: None, tmp_path: Path,
                                                                    cli_env: dict) -> None:
    # wandb-core writes its run file in 32 KiB blocks (LevelDB's log format): a SIGKILLed attempt's file lacks
    # what its last block had not reached, which can be steps that metrics.jsonl and the checkpoint hold
    # (attempt 1, killed as its first checkpoint lands, before any block is full: the next attempt must replay
    # them), or it can hold steps past the checkpoint (attempt 2, killed once a block holds steps past its
    # checkpoint: the next attempt trains them again and must not log them twice). Attempt 2 logs every step and
    # saves only at the epoch's end (step 32; the cadences are not part of the run's identity), so its first
    # block (about step 40 here) lands with the checkpoint at 32 and stays ahead of it until the run ends at 64.
    run = tmp_path / "run"
    env = {**cli_env, "NETRC": "/nonexistent", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    args = [PYTHON, "-m", "masksub_exp.train", "experiment=smoke", "logger=wandb", "logger.mode=offline",
            "train.progress=false", "data.synthetic_train_size=1024", f"hydra.run.dir={run}"]
    every_step = ["train.ckpt_every=1000", "train.log_every=1"]
    ckpt = run / "checkpoints" / "last.pt"
    kills = [(["train.ckpt_every=10", "train.log_every=2"], lambda: ckpt.exists()),  # step 10's checkpoint
             # this attempt's own W&B file holds a step past the checkpoint on disk
             (every_step, lambda: wandb_ahead_of_checkpoint(run, ckpt))]
    at_kill = []
    for cadence, condition in kills:
        proc = start_command([*args, *cadence], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until(proc, condition, "the kill point")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        at_kill.append({"wandb_rows": metric_steps(run), "checkpoint": checkpoint_step(ckpt)})
    assert at_kill[0]["wandb_rows"] == [] and at_kill[0]["checkpoint"] >= 10  # W&B behind the checkpoint
    assert at_kill[1]["wandb_rows"][-1] > at_kill[1]["checkpoint"] >= 10  # steps past the checkpoint in W&B
    done = subprocess.run([*args, *every_step], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = jsonl_steps(run)
    assert steps[-1] == 64 and 32 in steps  # both epoch-end evals
    assert metric_steps(run) == steps  # every metrics.jsonl step once, in order, across the three files
    assert len(wandb_files(run)) == 3 and exit_code(wandb_files(run)[-1]) == 0
    print(f"at each kill, W&B's rows on disk and the checkpoint step: {at_kill}")
