"""`hydra/sweeper=optuna`: hydra-optuna-sweeper 1.3.0's sweeper with rules for searches that are re-run, pruning
and slots that never idle.

* `n_trials` is the size of the study, not of one invocation: re-running the same command continues
  the study (sqlite storage and study name per sweep folder, `load_if_exists`) and only launches the
  trials still missing. A finished search re-run launches nothing.
* Trials left RUNNING by an interrupted sweep are launched again with their own parameters (their run
  folders resume from the last checkpoint) and told their result: every trial is in the study once.
* Trials are scored on `data.holdout`: a search on the test set is refused before anything is launched.
* Pruning (`pruner`: none, median, successive_halving, hyperband; `pruner_options`: the Optuna pruner's
  arguments): each trial reports its held-out top-1 after every epoch and stops when the pruner says so,
  checkpoint kept, `summary.json` status `pruned`; the trial marks itself PRUNED, so it is never rerun.
* `launch=async` (default): `n_jobs` slots, each launching its next trial (a one-job batch) as soon as its
  trial ends, through whichever launcher is chosen (`hydra/launcher=local`, `slurm_cpu`, ...); `batch`:
  `n_jobs` trials per launch, each batch waiting for its slowest trial. Hydra's basic launcher runs trials in
  this process, one at a time.

Bad input (an unknown pruner, n_jobs < 1, no data.holdout, an unwritable study file) is one line and exit 2,
before any trial is asked. After every trial `<sweep dir>/searches/<study>.json` lists the trials (number,
state, parameters, held-out top-1, run folder) and when each was launched and returned, which
`python -m masksub_exp.tools.report` reads. optuna is imported only when a search runs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class MaskSubOptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, search_space: DictConfig | None = None,
                 custom_search_space: str | None = None, params: DictConfig | None = None, pruner: str = "none",
                 pruner_options: DictConfig | None = None, launch: str = "async") -> None:
        from ._optuna_study import ResumableOptunaSweeperImpl  # optuna and SQLAlchemy: only for searches

        self.sweeper = ResumableOptunaSweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                                  max_failure_rate, search_space, custom_search_space, params)
        self.sweeper.pruner = str(pruner)
        self.sweeper.pruner_options = dict(OmegaConf.to_container(pruner_options) if pruner_options else {})
        self.sweeper.launch_mode = str(launch)

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
