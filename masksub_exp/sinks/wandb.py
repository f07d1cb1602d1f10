"""W&B as one more sink (rank 0 only). Imported only when `logger=wandb`.

The run id lives in the run folder and in every checkpoint, and W&B is initialised with
`resume="allow"`, so a requeued or re-run job continues the same W&B run; new runs get new ids.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import wandb

from ..config import Settings


def resolve_mode(mode: str) -> str:
    """auto: online with an API key (env or netrc), offline without one."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY") or _netrc_has_wandb():
        return "online"
    return "offline"


def _netrc_has_wandb() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def git_state(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit or None, "git_dirty": dirty if commit else None}


def run_metadata(world_size: int) -> dict[str, Any]:
    env = os.environ
    return {
        **git_state(Path(__file__).resolve().parents[2]),
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", "0")),
        "world_size": world_size,
    }


class WandbSink:
    def __init__(self, settings: Settings, run_dir: Path, run_id: str, *, group: str | None, name: str,
                 world_size: int) -> None:
        cfg = settings.logger
        config = {**asdict(settings), "meta": run_metadata(world_size)}
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, mode=resolve_mode(cfg.mode), dir=str(run_dir), id=run_id,
            resume="allow", group=group, job_type=settings.recipe.name, name=name, tags=list(cfg.tags),
            config=config,
        )

    def log(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        values = {f"{kind}/{k}": v for k, v in record.items() if k not in ("kind", "step")}
        self.run.log(values, step=record["step"])

    def close(self, exit_code: int = 0) -> None:
        """Finish the run and return only once its run file (`run-<id>.wandb`) is complete on disk.

        `finish()` returns when W&B's service (wandb-core) has handled the exit record, but the service writes
        the run file through a buffer that it flushes when the run's stream closes, and `finish()` asks for
        that close without waiting for it (a one-way `inform_finish`). Right after `finish()` the file can
        still be 7 bytes long, so a `wandb sync` of a finished run would upload a partial run (seen in
        tests/test_logging.py). `wandb.teardown()` waits for the service process to exit, which closes and
        flushes every stream; it is skipped when another W&B run of this process is still active.
        """
        self.run.finish(exit_code=exit_code)
        if wandb.run is None:
            wandb.teardown()
