"""The study loop behind `optuna_search.MaskSubOptunaSweeper` (imports optuna; see that module's docstring)."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import optuna
from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException
from hydra.types import HydraContext
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import Trial, TrialState

from masksub_exp.config import ConfigError
from masksub_exp.pruning import ENV_STORAGE, ENV_STUDY, ENV_TRIAL, PRUNERS, make_pruner, open_storage, uncached

from ._locked_loader import LockedConfigLoader

log = logging.getLogger(__name__)
LAUNCH_MODES = ("async", "batch")


class SearchError(CompactHydraException, ValueError):
    """A search that must not start; Hydra prints just the message (one line, no traceback)."""


def refuse(message: str) -> NoReturn:
    """Bad input: one line, exit 2, before any trial is asked or launched."""
    print(f"search refused: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    pruner: str = "none"
    pruner_options: dict[str, Any] = {}  # noqa: RUF012 (replaced per instance, never mutated)
    launch_mode: str = "async"

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        try:
            self._check_inputs()
            distributions, fixed = self._search_space(arguments)
            study = self._open_study()
        except (SearchError, ConfigError) as exc:
            refuse(str(exc))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Study {study.study_name!r} in {self.storage}: {len(study.trials)} trial(s) so far, "
                 f"{self.n_trials} wanted, {self.n_jobs} at a time ({self.launch_mode}), pruner {self.pruner}")
        # the trials open the study themselves (masksub_exp/pruning.py): storage and name reach every launcher's
        # jobs through the environment, the trial number through each job's own hydra.job.env_set
        os.environ[ENV_STORAGE], os.environ[ENV_STUDY] = str(self.storage), study.study_name
        runner = TrialRunner(self, study, distributions, fixed)
        try:
            runner.run()
        finally:
            path = write_search(study, sweep_dir, self.n_trials, runner.launches)
        best = _best(study)
        if best is not None:
            finished = _count(study, TrialState.COMPLETE, TrialState.PRUNED)
            log.info(f"Best of {finished} trial(s): {best.params}, value {best.value} (held-out); {path}")
            OmegaConf.save(OmegaConf.create({"name": "optuna", "study_name": study.study_name,
                                             "best_params": best.params, "best_value": best.value}),
                           sweep_dir / "optimization_results.yaml")

    def _check_inputs(self) -> None:
        holdout = OmegaConf.select(self.config, "data.holdout", default=None)
        if not holdout:
            pruned = f" (hydra.sweeper.pruner={self.pruner} prunes on it too)" if self.pruner != "none" else ""
            raise SearchError("hydra/sweeper=optuna scores every trial on a held-out part of the training split, "
                              f"never on the test set{pruned}: set data.holdout=N (samples) or a fraction, e.g. "
                              "data.holdout=5000")
        if not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            raise SearchError(f"hydra.sweeper.n_jobs={self.n_jobs}: trials at once must be at least 1")
        if self.pruner not in PRUNERS:
            raise SearchError(f"hydra.sweeper.pruner={self.pruner}: no such pruner (one of {', '.join(PRUNERS)})")
        if self.launch_mode not in LAUNCH_MODES:
            raise SearchError(f"hydra.sweeper.launch={self.launch_mode}: one of {', '.join(LAUNCH_MODES)}")
        make_pruner(self.pruner, self.pruner_options)  # bad options: ConfigError, one line
        if not self.storage or not str(self.storage).startswith("sqlite:///"):
            raise SearchError(f"hydra.sweeper.storage={self.storage}: the trials open the study themselves, so it "
                              "must be a SQLite file they can reach, e.g. sqlite:///${hydra.sweep.dir}/optuna.db")
        self.storage = check_study_file(str(self.storage))

    def _open_study(self) -> optuna.Study:
        directions = self._get_directions()
        if len(directions) != 1:
            raise SearchError(f"hydra.sweeper.direction={directions}: a search optimises one value (held-out top-1)")
        study = uncached(optuna.create_study(
            study_name=self.study_name or "search", storage=open_storage(self.storage), sampler=self.sampler,
            pruner=make_pruner(self.pruner, self.pruner_options), directions=directions, load_if_exists=True))
        study.set_user_attr("pruner", {"name": self.pruner, "options": dict(self.pruner_options)})
        return study

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(distributions, fixed parameters) from hydra.sweeper.params and the command line, as the plugin does."""
        self._process_searchspace_config()
        distributions, fixed = create_params_from_overrides(self._parse_sweeper_params_config() + list(arguments))
        space = dict(self.search_space_distributions or {})
        space.update(distributions)
        if isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in space.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, _product(len(v) for v in grid.values()))
        for name in fixed:
            space.pop(name, None)
        if not space:
            raise SearchError("nothing to search: give hydra.sweeper.params or a sweep override such as "
                              "'masksub.ratio=interval(0.1,0.9)'")
        return space, fixed


def check_study_file(url: str) -> str:
    """The SQLite URL with an absolute path (jobs may start elsewhere), once the file and its folder (SQLite
    writes its journal beside the file) are proven writable."""
    path = Path(url[len("sqlite:///"):]).absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".optuna-probe-"):
            pass
        with path.open("ab"):
            pass
    except OSError as exc:
        raise SearchError(f"hydra.sweeper.storage={url}: cannot write the study file {path} "
                          f"({exc.strerror or exc})") from None
    return f"sqlite:///{path}"


class TrialRunner:
    """Runs the study's trials through the launcher, n_jobs at a time.

    async: n_jobs worker threads; each takes the next trial (first those an interrupted search left RUNNING,
    then new ones while the study is short of n_trials), launches it as a one-job batch and tells its result,
    so a slot takes a new trial as soon as its trial ends. batch: n_jobs trials per launch, as Hydra's sweepers
    do. Hydra's basic launcher runs jobs inside this process, so it gets one trial at a time."""

    def __init__(self, impl: ResumableOptunaSweeperImpl, study: optuna.Study, distributions: dict[str, Any],
                 fixed: dict[str, Any]) -> None:
        self.impl, self.study, self.distributions, self.fixed = impl, study, distributions, fixed
        self.lock = threading.Lock()  # the study, the counters and the launch log
        self.stale = [Trial(study, t._trial_id) for t in study.get_trials(deepcopy=False)
                      if t.state == TrialState.RUNNING]
        self.asked = 0  # new trials this invocation: never more than n_trials, even if all of them fail
        self.ended = 0
        self.failures: list[JobReturn] = []
        self.errors: list[BaseException] = []
        self.launches: list[dict[str, Any]] = []  # launched_at / returned_at per trial: slot use, for the record
        if self.stale:
            log.info(f"Resuming trial(s) {[t.number for t in self.stale]} left running by an interrupted sweep")

    def next_trials(self, count: int) -> list[tuple[Trial, list[str]]]:
        with self.lock:
            if self.errors or self._too_many_failures():
                return []
            batch, self.stale = self.stale[:count], self.stale[count:]
            done = _count(self.study, TrialState.COMPLETE, TrialState.PRUNED)
            running = _count(self.study, TrialState.RUNNING)
            new = max(0, min(count - len(batch), self.impl.n_trials - done - running, self.impl.n_trials - self.asked))
            batch += [self.study.ask() for _ in range(new)]
            self.asked += new
            if not batch:
                return []
            overrides = self.impl._configure_trials(batch, self.distributions, self.fixed)
            # the trial number reaches the job's own environment (pruning.py); not part of its run folder's name
            return [(trial, [*job, f"++hydra.job.env_set.{ENV_TRIAL}={trial.number}"])
                    for trial, job in zip(batch, overrides, strict=True)]

    def run(self) -> None:
        launcher = self.impl.launcher
        in_process = type(launcher).__name__ == "BasicLauncher"
        if in_process and self.impl.n_jobs > 1:
            log.info("hydra/launcher=basic runs each trial inside this process, one at a time; for "
                     f"n_jobs={self.impl.n_jobs} at once use hydra/launcher=local, slurm or slurm_cpu")
        context = launcher.hydra_context
        launcher.hydra_context = HydraContext(config_loader=LockedConfigLoader(context.config_loader),
                                              callbacks=context.callbacks)
        try:
            if self.impl.launch_mode == "batch":
                self.work(1 if in_process else self.impl.n_jobs)
            elif in_process or self.impl.n_jobs == 1:
                self.work(1)
            else:
                workers = [threading.Thread(target=self.work, args=(1,), name=f"optuna-slot-{i}", daemon=True)
                           for i in range(self.impl.n_jobs)]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
        finally:
            launcher.hydra_context = context
        if self.errors:
            raise self.errors[0]
        if self._too_many_failures():
            log.error(f"{len(self.failures)} of {self.ended} trials failed (hydra.sweeper.max_failure_rate="
                      f"{self.impl.max_failure_rate}); re-running the command resumes the search")
            for ret in self.failures:
                ret.return_value  # raises with the job's traceback  # noqa: B018

    def work(self, count: int) -> None:
        """One slot: launch trials (`count` per launch) until the study needs no more."""
        try:
            while batch := self.next_trials(count):
                trials = [trial for trial, _ in batch]
                launched = time.time()
                with self.lock:  # job numbers (hydra.job.num, submitit's job names): one per trial launched
                    first_idx = self.impl.job_idx
                    self.impl.job_idx += len(batch)
                returns = self.impl.launcher.launch([job for _, job in batch], initial_job_idx=first_idx)
                returned = time.time()
                if len(returns) != len(trials):  # hydra.launcher.plan=true or wait=false: nothing to tell
                    log.warning("the launcher returned no results (plan or wait=false): the search stops here")
                    return
                with self.lock:
                    for trial, ret in zip(trials, returns, strict=True):
                        self.launches.append({"number": trial.number, "launched_at": launched,
                                              "returned_at": returned})
                        self.record(trial, ret)
                    write_search(self.study, Path(str(self.impl.config.hydra.sweep.dir)), self.impl.n_trials,
                                 self.launches)
        except BaseException as exc:  # noqa: BLE001 (a launcher's sys.exit too): the main thread re-raises it
            with self.lock:
                self.errors.append(exc)

    def record(self, trial: Trial, ret: JobReturn) -> None:
        """Tell the study how the trial ended, unless the trial did (pruned)."""
        self.ended += 1
        frozen = self.study._storage.get_trial(trial._trial_id)
        if frozen.state == TrialState.PRUNED:  # told by the trial itself (masksub_exp/pruning.py)
            log.info(f"Trial {trial.number} pruned after epoch {frozen.last_step}")
            return
        if frozen.state != TrialState.RUNNING:
            return
        try:
            run_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
            if run_dir:
                trial.set_user_attr("run_dir", str(run_dir))
            value = ret.return_value  # raises the job's own exception if it failed
            if value is None:
                raise SearchError("the run returned no top-1 (it was stopped before its final evaluation)")
            self.study.tell(trial.number, float(value))
        except Exception as exc:
            self.study.tell(trial.number, state=TrialState.FAIL)
            log.warning(f"Trial {trial.number} failed: {exc}")
            self.failures.append(ret)

    def _too_many_failures(self) -> bool:
        return bool(self.failures) and len(self.failures) / max(self.ended, 1) > self.impl.max_failure_rate


def _count(study: optuna.Study, *states: TrialState) -> int:
    return sum(t.state in states for t in study.get_trials(deepcopy=False))


def _product(sizes: Any) -> int:
    total = 1
    for size in sizes:
        total *= size
    return total


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def write_search(study: optuna.Study, sweep_dir: Path, n_trials: int,
                 launches: list[dict[str, Any]] | None = None) -> Path:
    """`<sweep dir>/searches/<study>.json`: the study as the report reads it (written atomically). `launches`
    (this invocation's) join those of earlier invocations already in the file."""
    best = _best(study)
    path = sweep_dir / "searches" / f"{study.study_name.replace('/', '_')}.json"
    earlier = json.loads(path.read_text()).get("launches", []) if path.exists() else []
    times = {(t["number"], t["launched_at"]): t for t in [*earlier, *(launches or [])]}
    record = {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "n_trials": n_trials,
        "metric": "held-out top-1 (%)",
        "pruner": study.user_attrs.get("pruner", {"name": "none"}),
        "trials": [{"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
                    "run_dir": t.user_attrs.get("run_dir"),
                    "epochs_reported": len(t.intermediate_values)} for t in study.get_trials(deepcopy=False)],
        "best": None if best is None else {"number": best.number, "params": best.params, "value": best.value},
        "launches": sorted(times.values(), key=lambda t: (t["launched_at"], t["number"])),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path

