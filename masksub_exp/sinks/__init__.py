"""Where metrics go. Every sink takes the same flat records; the engine never knows which are on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from .console import ConsoleSink
from .jsonl import JsonlSink


class Sink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Sinks:
    """Fan-out to several sinks; a no-op on ranks other than 0."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def build_sinks(run_dir: Path, *, is_main: bool, logger_name: str, progress: bool, total_steps: int,
                resumed_step: int = 0) -> Sinks:
    if not is_main:
        return Sinks([])
    sinks: list[Sink] = [JsonlSink(run_dir / "metrics.jsonl", keep_until_step=resumed_step)]
    if progress:
        sinks.append(ConsoleSink(total_steps))
    # logger_name == "none": local files only; W&B plugs in here as one more sink
    return Sinks(sinks)


__all__ = ["ConsoleSink", "JsonlSink", "Sink", "Sinks", "build_sinks"]
