"""A run's folder: whether it holds a run to resume, and who may write to it."""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from . import checkpoints
from .config import ConfigError, Settings


def previous_run(run_dir: Path, settings: Settings) -> dict[str, Any] | None:
    """The checkpoint to resume from (train.resume=auto), after checking it belongs to this config."""
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.exists():
        return None
    if settings.train.resume == "never":
        # start over without destroying anything: the old run moves aside
        aside = run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir()
        for name in ("checkpoints", "metrics.jsonl", "summary.json", "run_id"):
            if (run_dir / name).exists():
                shutil.move(str(run_dir / name), str(aside / name))
        print(f"train.resume=never: moved the previous run's files to {aside}", file=sys.stderr)
        return None
    payload = checkpoints.load(ckpt, trusted=settings.model.trust_checkpoint_globals)  # weights_only: runs no code
    if payload["config_hash"] != checkpoints.config_hash(settings):
        raise ConfigError(
            f"{ckpt} was written by a run with a different configuration; resuming it would mix two runs. "
            "Use another output folder (hydra.run.dir=...) or train.resume=never to start over "
            "(the old files are kept aside)."
        )
    return payload



class RunLock:
    """An exclusive lock on the run folder for the life of the training process (rank 0).

    Run folders are named by their overrides so that re-running a command resumes it; the lock makes
    a second, concurrent run of the same command fail at once instead of interleaving checkpoints.
    The kernel drops it when the process dies, so a killed or requeued job never leaves it behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ConfigError(
                f"run folder {run_dir} is in use by {holder}; wait for it, or pick another folder "
                "(hydra.run.dir=... or different overrides)"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        job = os.environ.get("SLURM_JOB_ID")
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}" + (f", SLURM job {job}" if job else ""))
        self.file.flush()

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def run_id_for(run_dir: Path, payload: dict[str, Any] | None) -> str:
    """The run's id for trackers: from its checkpoint, else from the folder (a run that died before its
    first checkpoint), else a new one. Written to the folder so a requeue finds it."""
    path = run_dir / "run_id"
    run_id = (payload or {}).get("run_id") or (path.read_text().strip() if path.exists() else "")
    if not run_id:
        run_id = secrets.token_hex(4)  # 8 characters, as W&B's own ids; random, so runs never share one
    if not path.exists() or path.read_text().strip() != run_id:
        path.write_text(run_id + "\n")
    return run_id


def check_writable(run_dir: Path) -> None:
    """Create the run folder and prove it takes a write, or fail now with the reason."""
    probe = run_dir / f".write-probe.{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise checkpoints.StorageError(exc.errno, f"cannot write to the run folder {run_dir}: "
                                       f"{exc.strerror or exc} (paths.output_dir / hydra.run.dir)") from exc
