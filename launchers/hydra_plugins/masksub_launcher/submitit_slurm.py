"""The SLURM launcher: hydra-submitit-launcher's, plus what long preemptible sweeps need.

- Every job's config is composed and validated before anything is submitted, and a job shape
  that cannot work (tasks_per_node != gpus_per_node on GPU nodes) is refused.
- `hydra.launcher.plan=true` prints each job with its overrides, run folder and sbatch header,
  and submits nothing. `hydra.launcher.wait=false` submits and returns with the job ids.
- Requeue: submitit's USR2 handler calls `checkpoint()` and requeues. The task itself catches
  USR2 first (masksub_exp.preemption): all ranks stop at one step, rank 0 saves, and only then is
  submitit's handler called; the requeued task re-runs the same job, which resumes from the
  checkpoint in its (deterministic) run folder.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

from ._wait import wait_for

log = logging.getLogger(__name__)


@dataclass
class MaskSubSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.masksub_launcher.submitit_slurm.MaskSubSlurmLauncher"
    # slurm.yaml sets it to ${.gpus_per_node}; Optional so that gpus_per_node=null reaches check_shape(), which
    # says what to do, instead of failing in OmegaConf's validation with a traceback
    tasks_per_node: Optional[int] = 1  # noqa: UP045 (Hydra's structured configs need typing.Optional)
    wait: bool = True  # false: submit the sweep and return with its job ids
    plan: bool = False  # true: print the jobs and their SLURM parameters, submit nothing


def register() -> None:
    """The launcher's schema for conf/hydra/launcher/slurm.yaml, and the class itself: an editable install
    maps this package in a way Hydra's plugin scan does not see, so it is registered by hand."""
    from hydra.core.plugins import Plugins

    ConfigStore.instance().store(group="hydra/launcher", name="masksub_slurm", node=MaskSubSlurmConf,
                                 provider="masksub_exp")
    Plugins.instance().register(MaskSubSlurmLauncher)


class LaunchError(ValueError):
    """A sweep that must not be submitted; the message says why."""


class MaskSubSlurmLauncher(SlurmLauncher):
    def __init__(self, wait: bool = True, plan: bool = False, **params: Any) -> None:
        super().__init__(**params)
        self.wait, self.plan = wait, plan

    def check_shape(self) -> None:
        gpus, tasks = self.params.get("gpus_per_node"), self.params.get("tasks_per_node")
        if not tasks and not gpus:
            raise LaunchError(
                f"hydra.launcher.gpus_per_node={_null(gpus)} leaves tasks_per_node={_null(tasks)} (this launcher runs "
                "one task per GPU): for CPU jobs use hydra/launcher=slurm_cpu"
            )
        if not tasks or tasks < 0:
            raise LaunchError(f"hydra.launcher.tasks_per_node={_null(tasks)}: a job needs at least one task per node")
        if gpus and tasks != gpus:
            raise LaunchError(
                f"hydra.launcher.tasks_per_node={tasks} but gpus_per_node={gpus}: training runs one task per "
                "GPU; set tasks_per_node equal to gpus_per_node"
            )

    def job_configs(self, job_overrides: list[list[str]]) -> list[Any]:
        """Each job's composed config, validated like train() will, before anything is submitted."""
        from masksub_exp.config import ConfigError, to_settings

        configs = []
        for overrides in job_overrides:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
            with_run_dir = OmegaConf.merge(task_cfg, {"paths": {"output_dir": _job_dir(cfg)}})
            try:
                to_settings(with_run_dir)
            except ConfigError as exc:
                raise LaunchError(f"job {' '.join(overrides)}: {exc}") from exc
            configs.append(cfg)
        return configs

    def make_executor(self):  # mirrors the parent's executor set-up, which is inline in its launch()
        import submitit

        params = dict(self.params)
        try:
            executor = submitit.AutoExecutor(folder=params.pop("submitit_folder"), cluster="slurm",
                                             slurm_max_num_timeout=params.pop("max_num_timeout"))
        except RuntimeError as exc:  # submitit: 'Could not detect "srun", are you indeed on a slurm cluster?'
            raise LaunchError(f"no SLURM here ({exc}): run the sweep with hydra/launcher=local, or start the "
                              "one-node cluster with launchers/slurm-local up") from None
        base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
                "stderr_to_stdout"}
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        try:
            self.check_shape()
            configs = self.job_configs(job_overrides)
            executor = self.make_executor()
        except LaunchError as exc:  # one clear line, nothing submitted
            refuse(str(exc))
        if self.plan:
            print_plan(executor, configs, job_overrides, initial_job_idx)
            return []
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        jobs = self.submit(executor, job_overrides, initial_job_idx)
        if self.wait:
            return wait_for(jobs)  # through SLURM's requeue of a job that lost a node
        for job, overrides in zip(jobs, job_overrides, strict=True):
            print(f"submitted {job.job_id}: {' '.join(filter_overrides(overrides))}", flush=True)
        print(f"sweep folder: {sweep_dir}; not waiting (hydra.launcher.wait=false)", flush=True)
        return []


    def submit(self, executor: Any, job_overrides: list[list[str]], first_idx: int) -> list[Any]:
        """One array job for the sweep (as hydra-submitit-launcher does); a refusal by sbatch becomes one line
        naming what was asked and the override that changes it."""
        from submitit.core.utils import FailedJobError

        job_params = []
        for i, overrides in enumerate(job_overrides):
            log.info(f"\t#{first_idx + i} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", first_idx + i, f"job_id_for_{first_idx + i}",
                               Singleton.get_state()))
        echoed = io.StringIO()  # submitit prints sbatch's stderr when it fails: it goes into our line instead
        try:
            with contextlib.redirect_stderr(echoed):
                jobs = executor.map_array(self, *zip(*job_params, strict=True))
        except FailedJobError as exc:
            refuse(f"sbatch said: {sbatch_reason(str(exc))}; the job asked for {asked_for(self.params)}")
        sys.stderr.write(echoed.getvalue())
        return jobs


def refuse(message: str) -> NoReturn:
    print(f"launch refused: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def sbatch_reason(stderr: str) -> str:
    """sbatch's error lines, without their 'sbatch: error:' prefixes, on one line."""
    lines = [line.split("error:", 1)[-1].strip() for line in stderr.strip().splitlines() if line.strip()]
    return " / ".join(lines) or "(no message)"


def asked_for(params: dict[str, Any]) -> str:
    """What the sweep asked SLURM for, each with the override that changes it."""
    gpus, gres = params.get("gpus_per_node"), params.get("gres")
    parts = [
        f"--gres={gres} (hydra.launcher.gres)" if gres else
        f"--gpus-per-node={gpus} (hydra.launcher.gpus_per_node; CPU only: hydra/launcher=slurm_cpu)" if gpus else
        "no GPUs (hydra.launcher.gpus_per_node)",
        f"partition={params.get('partition') or '<cluster default>'} (hydra.launcher.partition)",
        f"time={params.get('timeout_min')} min (hydra.launcher.timeout_min)",
        f"{params.get('nodes')} node(s) x {params.get('tasks_per_node')} task(s) x {params.get('cpus_per_task')} "
        "CPUs (hydra.launcher.nodes/tasks_per_node/cpus_per_task)",
    ]
    parts += [f"{key}={params[key]} (hydra.launcher.{key})" for key in ("mem_gb", "account", "qos", "constraint")
              if params.get(key)]
    return ", ".join(parts)


def _null(value: Any) -> str:
    return "null" if value is None else str(value)


def _job_dir(cfg: Any) -> str:
    return str(Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir))


def print_plan(executor: Any, configs: list[Any], job_overrides: list[list[str]], first_idx: int) -> None:
    from submitit.slurm.slurm import _make_sbatch_string

    parameters = dict(executor._executor.parameters)
    if len(configs) > 1:
        parameters["array_parallelism"] = parameters.get("array_parallelism", len(configs))
    header = [
        line for line in _make_sbatch_string(command="<task>", folder=executor.folder, **parameters).splitlines()
        if line.startswith("#SBATCH")
    ]
    print(f"plan: {len(configs)} job(s), nothing submitted (hydra.launcher.plan=true)")
    print("SLURM parameters:\n  " + "\n  ".join(header))
    for i, (cfg, overrides) in enumerate(zip(configs, job_overrides, strict=True)):
        listed = " ".join(filter_overrides(overrides)) or "(no overrides)"
        print(f"#{first_idx + i}: {listed}\n    run folder: {_job_dir(cfg)}")
