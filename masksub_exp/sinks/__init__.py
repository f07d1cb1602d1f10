"""Where metrics go. Every sink takes the same flat records; the engine never knows which are on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ..config import Settings
from .console import ConsoleSink
from .jsonl import JsonlSink


class Sink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self, exit_code: int = 0) -> None: ...


class Sinks:
    """Fan-out to several sinks; empty on ranks other than 0."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(record)

    def close(self, exit_code: int = 0) -> None:
        for sink in self.sinks:
            sink.close(exit_code)

    # optional parts of a sink: only trackers (W&B) take pictures and a run summary
    def image(self, key: str, path: Path, step: int) -> None:
        for sink in self.sinks:
            if hasattr(sink, "image"):
                sink.image(key, path, step)

    def summarize(self, summary: dict[str, Any]) -> None:
        for sink in self.sinks:
            if hasattr(sink, "summarize"):
                sink.summarize(summary)

    @property
    def wants_images(self) -> bool:
        return any(hasattr(sink, "image") for sink in self.sinks)


def hydra_labels(run_dir: Path) -> tuple[str | None, str]:
    """(group, name) for a tracker: the sweep folder of a multirun, and the job's overrides."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, run_dir.name
    hc = HydraConfig.get()
    group = str(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    return group, hc.job.override_dirname or "default"


def build_sinks(settings: Settings, run_dir: Path, *, is_main: bool, world_size: int, total_steps: int,
                resumed_step: int, run_id: str) -> Sinks:
    if not is_main:
        return Sinks([])
    sinks: list[Sink] = [JsonlSink(run_dir / "metrics.jsonl", keep_until_step=resumed_step)]
    if settings.train.progress:
        sinks.append(ConsoleSink(total_steps, start_step=resumed_step))
    if settings.logger.name == "wandb":
        from .wandb import WandbSink  # imported only when asked for: logger=none never loads wandb

        group, name = hydra_labels(run_dir)
        sinks.append(WandbSink(settings, run_dir, run_id, group=group, name=name, world_size=world_size))
    return Sinks(sinks)


__all__ = ["ConsoleSink", "JsonlSink", "Sink", "Sinks", "build_sinks"]
