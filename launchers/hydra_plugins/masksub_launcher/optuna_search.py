"""`hydra/sweeper=optuna`: hydra-optuna-sweeper 1.3.0's sweeper with three rules for searches that are re-run.

* `n_trials` is the size of the study, not of one invocation: re-running the same command continues
  the study (sqlite storage and study name per sweep folder, `load_if_exists`) and only launches the
  trials still missing. A finished search re-run launches nothing.
* Trials left RUNNING by an interrupted sweep are launched again with their own parameters (their run
  folders resume from the last checkpoint) and told their result: every trial is in the study once.
* Trials are scored on `data.holdout`: a search on the test set is refused before anything is launched.

Trials run `n_jobs` at a time through whichever launcher is chosen (`hydra/launcher=slurm_cpu`, ...).
After every batch `<sweep dir>/searches/<study>.json` lists the trials (number, state, parameters,
held-out top-1, run folder), which `python -m masksub_exp.tools.report` reads. optuna is imported only
when a search runs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class MaskSubOptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, search_space: DictConfig | None = None,
                 custom_search_space: str | None = None, params: DictConfig | None = None) -> None:
        from ._optuna_study import ResumableOptunaSweeperImpl  # optuna and SQLAlchemy: only for searches

        self.sweeper = ResumableOptunaSweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                                  max_failure_rate, search_space, custom_search_space, params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)


def register() -> None:
    """Hydra's plugin scan does not see this package in an editable install, so the class is registered by hand.

    conf/hydra/sweeper/optuna.yaml replaces the plugin's own `optuna` entry (the plugin scan, which the first
    `Plugins.instance()` runs, has stored it by now): with both, Hydra would match the file against that schema
    (deprecated automatic schema matching), which fails on the schema's defaults list."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance().register(MaskSubOptunaSweeper)
    # Hydra imports optuna (and with it alembic and SQLAlchemy 1.4) when it instantiates the sampler, before
    # the sweeper: quiet them here. optuna 2.x uses SQLAlchemy 1.4's legacy API; alembic logs its plugins.
    os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    ConfigStore.instance().repo.get("hydra", {}).get("sweeper", {}).pop("optuna.yaml", None)
