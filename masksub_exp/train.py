"""Entry point: `python -m masksub_exp.train [experiment=...] [overrides]`.

`main()` is a thin Hydra wrapper; `train(cfg)` does the work and is what tests call.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra_plugins.masksub_launcher.submitit_slurm import register as register_launchers
from omegaconf import DictConfig, OmegaConf

from . import checkpoints
from .build import build_parts
from .checkpoints import TrainState
from .config import ConfigError, Settings, register_configs, to_settings
from .distributed import DistInfo, init_distributed
from .engine import fit
from .preemption import StopSignal
from .run_folder import RunLock, previous_run, run_id_for


def train(cfg: DictConfig | Settings) -> dict[str, Any]:
    """Validate the config, build the run, resume if its folder holds a checkpoint, train, summarise."""
    settings = to_settings(cfg)
    dist = init_distributed(settings.train.device)
    run_dir = Path(settings.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
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
    payload = previous_run(run_dir, settings)
    resumed = TrainState(**payload["state"]) if payload else TrainState()
    parts = build_parts(settings, dist, run_dir, resumed_step=resumed.step,
                        run_id=run_id_for(run_dir, payload) if dist.is_main else "")
    state = TrainState()
    if payload is not None:
        state = checkpoints.restore_payload(payload, parts, rank=dist.rank)
        if dist.is_main:
            print(f"resumed from {run_dir / 'checkpoints' / 'last.pt'} at step {state.step}", file=sys.stderr)
    if dist.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(settings)))
    stop = StopSignal(dist.device)
    exit_code = 1
    try:
        summary = fit(parts, state, stop)
        exit_code = 0
    finally:
        parts.sinks.close(exit_code)  # W&B's finish() too, exceptions included
        if not stop.signum:  # a stopped run hands the handlers over to submitit's after the lock is gone
            stop.restore()
    return summary, stop


def summary_stopped(summary: dict[str, Any] | None) -> bool:
    return bool(summary) and str(summary["status"]).startswith("stopped")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("or_default"):
        # `${or_default:${hydra:job.override_dirname},default}`: an empty override list names the run "default"
        OmegaConf.register_new_resolver("or_default", lambda value, default: value or default)


register_configs()
register_resolvers()
register_launchers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
        if summary_stopped(summary):  # SIGTERM / SIGINT outside SLURM: saved, now leave
            sys.exit(130 if "SIGINT" in summary["status"] else 143)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as exc:
        print(f"missing file: {exc}", file=sys.stderr)
        sys.exit(2)
    return summary.get("top1")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
