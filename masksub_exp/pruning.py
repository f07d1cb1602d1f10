"""Optuna pruning inside a trial: report held-out top-1 after each epoch's eval, stop when the study says so.

A search (`hydra/sweeper=optuna`, launchers/hydra_plugins/masksub_launcher/) runs each trial as an ordinary run
and hands it its study through the environment, on every launcher: MASKSUB_OPTUNA_STORAGE (the study's SQLite
URL) and MASKSUB_OPTUNA_STUDY come from the sweeper's own environment (SLURM and submitit pass it on);
MASKSUB_OPTUNA_TRIAL (the trial number) is set per job by Hydra's `hydra.job.env_set`. The pruner's name and
options are kept in the study itself (user attribute "pruner"), so the trial prunes by the search's rule.

Rank 0 opens the study, reports and asks the pruner; its answer is broadcast so every rank stops after the
same epoch. The trial itself marks the study trial PRUNED before it returns: a search that is killed and
resumed sees the trial as finished and never runs it again. optuna is imported only inside a search.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from .config import ConfigError

ENV_STORAGE = "MASKSUB_OPTUNA_STORAGE"
ENV_STUDY = "MASKSUB_OPTUNA_STUDY"
ENV_TRIAL = "MASKSUB_OPTUNA_TRIAL"
PRUNERS = ("none", "median", "successive_halving", "hyperband")
SQLITE_TIMEOUT_S = 120  # trials and the sweeper write the same file; a busy file waits instead of failing


def make_pruner(name: str, options: dict[str, Any] | None = None) -> Any:
    """The Optuna pruner `name` (one of PRUNERS) with `options` as its keyword arguments."""
    import optuna

    classes = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "hyperband": optuna.pruners.HyperbandPruner}
    if name not in classes:
        raise ConfigError(f"hydra.sweeper.pruner={name}: no such pruner (one of {', '.join(PRUNERS)})")
    given = {key: value for key, value in (options or {}).items() if value is not None}  # null: Optuna's default
    try:
        return classes[name](**given)
    except (TypeError, ValueError) as exc:  # an argument this pruner does not take, or a value it refuses
        raise ConfigError(f"hydra.sweeper.pruner={name} with pruner_options {given}: {exc}") from None


def open_storage(url: str) -> Any:
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})


def uncached(study: Any) -> Any:
    """`study` reading the database itself: optuna 2.x wraps RDBStorage in a cache that never re-reads the trials
    its own process created, so the sweeper would not see what the trial processes write (reports, PRUNED)."""
    backend = getattr(study._storage, "_backend", None)  # optuna.storages._CachedStorage (optuna pinned to 2.x)
    if backend is not None:
        study._storage = backend
    return study


class TrialReporter:
    """Called by the engine after each epoch's eval that leaves training to do: 'stop' when the trial is pruned."""

    def __init__(self, storage: str, study_name: str, number: int, is_main: bool, run_dir: str) -> None:
        self.number = number
        self.trial: Any = None
        self.study: Any = None
        if is_main:  # one process talks to the study; the others follow its decision
            import optuna
            from optuna.trial import TrialState

            loaded = optuna.load_study(study_name=study_name, storage=open_storage(storage))
            spec = loaded.user_attrs.get("pruner", {"name": "none", "options": {}})
            self.study = uncached(optuna.load_study(study_name=study_name, storage=loaded._storage,
                                                    sampler=loaded.sampler,
                                                    pruner=make_pruner(spec["name"], spec["options"])))
            trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
            if self.study._storage.get_trial(trial_id).state == TrialState.RUNNING:
                self.trial = optuna.trial.Trial(self.study, trial_id)
                self.trial.set_user_attr("run_dir", run_dir)
                self.trial.set_user_attr("process_started_at", time.time())
            else:  # the search already closed this trial (a run re-run by hand): train, report nothing
                print(f"optuna trial {number} is already finished: not reporting to the study", file=sys.stderr)

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        prune = False
        if self.trial is not None:
            if metrics.get("eval_split") != "holdout":
                raise ConfigError("a pruned search scores trials on data.holdout, never on the test set: "
                                  "set data.holdout")
            self.trial.report(float(metrics["top1"]), step=epoch)
            prune = self.trial.should_prune()
        if not _agree(prune):
            return None
        if self.trial is not None:
            from optuna.trial import TrialState

            self.study.tell(self.number, state=TrialState.PRUNED)  # before the summary: never rerun, even if killed
            print(f"optuna trial {self.number} pruned after epoch {epoch} (held-out top-1 {metrics['top1']:.2f})",
                  file=sys.stderr, flush=True)
        return "stop"


def _agree(flag: bool) -> bool:
    """Rank 0's decision on every rank (a collective: all ranks call it at the same epoch end)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def trial_reporter(is_main: bool, run_dir: str) -> TrialReporter | None:
    """The reporter of the Optuna trial this process runs, or None outside a search."""
    number = os.environ.get(ENV_TRIAL)
    storage, study = os.environ.get(ENV_STORAGE), os.environ.get(ENV_STUDY)
    if number is None or not storage or not study:
        return None
    return TrialReporter(storage, study, int(number), is_main, run_dir)
