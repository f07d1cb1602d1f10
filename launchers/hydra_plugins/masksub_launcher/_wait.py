"""Waiting for a sweep's jobs, through a node failure.

When a node dies under a job, SLURM ends the job as NODE_FAIL and, the job being requeueable (ours are:
preemption needs it), puts it back in the queue at once; when it runs again it resumes from its last
checkpoint. submitit takes NODE_FAIL for a final state and stops watching, so a plain `job.results()`
would report a failure while SLURM trains the same run folder in the background, and a re-run by the user
would race that job for its checkpoint. Here a job that SLURM requeued after NODE_FAIL is watched again
(one line says so) and its failed attempt's result files are removed, so only the new attempt's count.
A NODE_FAIL job that SLURM did not requeue is reported like any failed job.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

LIVE = {"PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
        "COMPLETING"}


def queue_state(job_id: str) -> str:
    """The job's state in the queue ('' once SLURM no longer lists it)."""
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""


def requeued_after_node_failure(job: Any) -> bool:
    return job.state.upper().startswith("NODE_FAIL") and queue_state(job.job_id) in LIVE


def watch_again(job: Any) -> None:
    """Forget submitit's cached final state of `job` and its failed attempt's result files."""
    job.watcher._finished.discard(job.job_id)  # submitit pinned (pyproject): these are its cache's fields
    job.watcher._info_dict.pop(job.job_id, None)
    for stale in job.paths.folder.glob(f"{job.job_id}_*_result.pkl"):
        stale.unlink(missing_ok=True)


def wait_for(jobs: Sequence[Any], poll_s: float = 2.0) -> list[Any]:
    """Every job's first task's result (a JobReturn), once all are done; through requeues after node failures."""
    announced: set[str] = set()
    while True:
        running = False
        for job in jobs:
            if not job.done():
                running = True
            elif requeued_after_node_failure(job):
                if job.job_id not in announced:
                    announced.add(job.job_id)
                    log.warning(f"job {job.job_id} lost a node (NODE_FAIL) and SLURM requeued it: waiting for it; "
                                "it resumes from its last checkpoint once it runs again")
                watch_again(job)
                running = True
        if not running:
            return [job.results()[0] for job in jobs]
        time.sleep(poll_s)  # the poll interval of submitit's own wait()
