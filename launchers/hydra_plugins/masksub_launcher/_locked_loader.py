"""Hydra's config loader as the Optuna sweeper hands it to launchers (and, pickled with them, to their jobs).

- Several threads launch at once (the sweeper's asynchronous slots): composing a job's config re-initialises
  the loader's shared search-path sources, so one thread composes at a time while the jobs run in parallel.
- In a submitit job, Hydra's `Singleton.set_state` re-runs the plugin scan, which stores hydra-optuna-sweeper's
  own `hydra/sweeper/optuna` schema again; conf/hydra/sweeper/optuna.yaml would then be matched against it and
  the job's composition fail (optuna_search.register() removes it in the sweeper's process for the same reason).
This module stays light: it is imported wherever the launcher is unpickled.
"""

from __future__ import annotations

import threading
from typing import Any

_COMPOSE = threading.Lock()  # module level: a lock would not survive the pickling of the launcher into its jobs


class LockedConfigLoader:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # unpickling looks attributes up before __dict__ is filled
            raise AttributeError(name)
        return getattr(self.inner, name)

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> Any:
        from hydra.core.config_store import ConfigStore

        with _COMPOSE:
            ConfigStore.instance().repo.get("hydra", {}).get("sweeper", {}).pop("optuna.yaml", None)
            return self.inner.load_sweep_config(master_config, sweep_overrides)
