"""Entry point: `python -m masksub_exp.train [experiment=...] [overrides]`.

`main()` is a thin Hydra wrapper; `train(cfg)` does the work and is what tests call.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from . import checkpoints
from .build import build_parts
from .checkpoints import TrainState
from .config import ConfigError, Settings, register_configs, to_settings
from .distributed import init_distributed
from .engine import fit


def _previous_run(run_dir: Path, settings: Settings) -> dict[str, Any] | None:
    """The checkpoint to resume from (train.resume=auto), after checking it belongs to this config."""
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.exists():
        return None
    if settings.train.resume == "never":
        # start over without destroying anything: the old run moves aside
        aside = run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir()
        for name in ("checkpoints", "metrics.jsonl", "summary.json"):
            if (run_dir / name).exists():
                shutil.move(str(run_dir / name), str(aside / name))
        print(f"train.resume=never: moved the previous run's files to {aside}", file=sys.stderr)
        return None
    payload = checkpoints.load(ckpt)
    if payload["config_hash"] != checkpoints.config_hash(settings):
        raise ConfigError(
            f"{ckpt} was written by a run with a different configuration; resuming it would mix two runs. "
            "Use another output folder (hydra.run.dir=...) or train.resume=never to start over "
            "(the old files are kept aside)."
        )
    return payload


def train(cfg: DictConfig | Settings) -> dict[str, Any]:
    """Validate the config, build the run, resume if its folder holds a checkpoint, train, summarise."""
    settings = to_settings(cfg)
    dist = init_distributed(settings.train.device)
    run_dir = Path(settings.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = _previous_run(run_dir, settings)
    resumed = TrainState(**payload["state"]) if payload else TrainState()
    parts = build_parts(settings, dist, run_dir, resumed_step=resumed.step)
    if payload is not None:
        state = checkpoints.restore_payload(payload, parts, rank=dist.rank)
        if dist.is_main:
            print(f"resumed from {run_dir / 'checkpoints' / 'last.pt'} at step {state.step}", file=sys.stderr)
    else:
        state = TrainState()
    if dist.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(settings)))
    try:
        return fit(parts, state)
    finally:
        parts.sinks.close()


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("or_default"):
        # `${or_default:${hydra:job.override_dirname},default}`: an empty override list names the run "default"
        OmegaConf.register_new_resolver("or_default", lambda value, default: value or default)


register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
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
