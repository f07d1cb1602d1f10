"""The launcher's wait through a node failure (launchers/hydra_plugins/masksub_launcher/_wait.py), on the real
one-node SLURM cluster with a real submitit job.

The one thing put in by hand is the moment submitit's watcher reads NODE_FAIL from sacct: on a real node loss
(tests/test_multinode.py) SLURM shows it for a few seconds before the requeue, and whether submitit's poll
falls in that window is chance. Everything else here is real: the job, its queue state, its result file.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
from pathlib import Path

import pytest
from hydra_plugins.masksub_launcher._wait import wait_for

pytestmark = pytest.mark.slow  # a real SLURM job (10-30 s)


def answer() -> int:
    return 42


def test_a_job_requeued_after_node_failure_is_waited_for_and_its_stale_result_ignored(
        slurm_env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import submitit

    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    monkeypatch.setenv("PYTHONPATH", slurm_env["PYTHONPATH"])  # the job unpickles this module's function
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    # held: the job waits in the queue, as a requeued job waits for a node
    executor.update_parameters(timeout_min=5, cpus_per_task=1, slurm_additional_parameters={"hold": True})
    job = executor.submit(answer)
    try:
        # the failed attempt's result (the rank that saw its peer's node die) and submitit's reading of sacct
        stale = job.paths.result_pickle
        stale.write_bytes(pickle.dumps(("error", "the failed attempt")))
        job.watcher.register_job(job.job_id)
        job.watcher._info_dict[job.job_id] = {"State": "NODE_FAIL"}
        job.watcher._finished.add(job.job_id)
        assert job.done()  # what a plain job.results() would act on: a failure, while SLURM still holds the job
        subprocess.run(["scontrol", "release", job.job_id], check=True, env=dict(os.environ))
        with caplog.at_level(logging.WARNING):
            results = wait_for([job], poll_s=0.5)
    finally:
        subprocess.run(["scancel", job.job_id], env=dict(os.environ))
    assert results == [42]  # the new attempt's result, not the stale one
    assert f"job {job.job_id} lost a node (NODE_FAIL) and SLURM requeued it" in caplog.text


def test_a_node_failure_slurm_did_not_requeue_is_reported(slurm_env: dict, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import submitit
    from submitit.core.utils import UncompletedJobError

    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(timeout_min=5, cpus_per_task=1, slurm_additional_parameters={"hold": True})
    job = executor.submit(answer)
    subprocess.run(["scancel", job.job_id], check=True, env=dict(os.environ))  # gone from the queue
    job.watcher.register_job(job.job_id)
    job.watcher._info_dict[job.job_id] = {"State": "NODE_FAIL"}
    job.watcher._finished.add(job.job_id)
    with pytest.raises(UncompletedJobError, match="NODE_FAIL"):
        wait_for([job], poll_s=0.5)
