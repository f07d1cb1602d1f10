"""The study loop behind `optuna_search.MaskSubOptunaSweeper` (imports optuna; see that module's docstring)."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import optuna
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import Trial, TrialState

log = logging.getLogger(__name__)


class SearchError(CompactHydraException, ValueError):
    """A search that must not start; Hydra prints just the message (one line, no traceback)."""


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        self._check_holdout()
        distributions, fixed = self._search_space(arguments)
        directions = self._get_directions()
        if len(directions) != 1:
            raise SearchError(f"hydra.sweeper.direction={directions}: a search optimises one value (held-out top-1)")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)  # the sqlite file lives here
        study = optuna.create_study(study_name=self.study_name or "search", storage=self.storage,
                                    sampler=self.sampler, directions=directions, load_if_exists=True)
        log.info(f"Study {study.study_name!r} in {self.storage}: {len(study.trials)} trial(s) so far, "
                 f"{self.n_trials} wanted, {self.n_jobs} at a time")
        launched = 0  # new trials this invocation: never more than n_trials, even if all of them fail
        while True:
            trials = study.get_trials(deepcopy=False)
            complete = sum(t.state == TrialState.COMPLETE for t in trials)
            # RUNNING trials come from an interrupted sweep: run them again (their folders resume), don't re-ask
            stale = [Trial(study, t._trial_id) for t in trials if t.state == TrialState.RUNNING][:self.n_jobs]
            new = max(0, min(self.n_jobs - len(stale), self.n_trials - complete - len(stale), self.n_trials - launched))
            batch = stale + [study.ask() for _ in range(new)]
            if not batch:
                break
            if stale:
                log.info(f"Resuming trial(s) {[t.number for t in stale]} left running by an interrupted sweep")
            launched += new
            self._run_batch(study, batch, distributions, fixed)
            write_search(study, sweep_dir, self.n_trials)
        path = write_search(study, sweep_dir, self.n_trials)
        best = _best(study)
        if best is not None:
            complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
            log.info(f"Best of {complete} trial(s): {best.params}, value {best.value} (held-out); {path}")
            OmegaConf.save(OmegaConf.create({"name": "optuna", "study_name": study.study_name,
                                             "best_params": best.params, "best_value": best.value}),
                           sweep_dir / "optimization_results.yaml")

    def _check_holdout(self) -> None:
        holdout = OmegaConf.select(self.config, "data.holdout", default=None)
        if not holdout:
            raise SearchError("hydra/sweeper=optuna scores every trial on a held-out part of the training split, "
                              "never on the test set: set data.holdout=N (samples) or a fraction, e.g. "
                              "data.holdout=5000")

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

    def _run_batch(self, study: optuna.Study, batch: list[Trial], distributions: dict[str, Any],
                   fixed: dict[str, Any]) -> None:
        overrides = self._configure_trials(batch, distributions, fixed)
        returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        failures = []
        for trial, ret in zip(batch, returns, strict=True):
            try:
                run_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
                if run_dir:
                    trial.set_user_attr("run_dir", str(run_dir))
                value = ret.return_value  # raises the job's own exception if it failed
                if value is None:
                    raise SearchError("the run returned no top-1 (it was stopped before its final evaluation)")
                study.tell(trial.number, float(value))
            except Exception as exc:
                study.tell(trial.number, state=TrialState.FAIL)
                log.warning(f"Trial {trial.number} failed: {exc}")
                failures.append(ret)
        if failures and len(failures) / len(returns) > self.max_failure_rate:
            log.error(f"{len(failures)} of {len(returns)} trials failed (hydra.sweeper.max_failure_rate="
                      f"{self.max_failure_rate}); re-running the command resumes the search")
            for ret in failures:
                ret.return_value  # raises with the job's traceback  # noqa: B018


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


def write_search(study: optuna.Study, sweep_dir: Path, n_trials: int) -> Path:
    """`<sweep dir>/searches/<study>.json`: the study as the report reads it (written atomically)."""
    best = _best(study)
    record = {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "n_trials": n_trials,
        "metric": "held-out top-1 (%)",
        "trials": [{"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
                    "run_dir": t.user_attrs.get("run_dir")} for t in study.get_trials(deepcopy=False)],
        "best": None if best is None else {"number": best.number, "params": best.params, "value": best.value},
    }
    path = sweep_dir / "searches" / f"{study.study_name.replace('/', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path
