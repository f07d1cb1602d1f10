"""Read offline W&B run files (`run-<id>.wandb`) back, in W&B's own record format.

The block/chunk reader is the engine's (masksub_exp/sinks/wandb_file.py: the sink reads earlier attempts'
files with it to know what W&B holds); these helpers turn its protobuf `Record`s into plain values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from masksub_exp.sinks.wandb_file import item_key
from masksub_exp.sinks.wandb_file import records as _records


def records(path: Path) -> list[Any]:
    assert path.read_bytes()[:4] == b":W&B", f"{path} is not a W&B run file"
    return _records(path)


def kinds(path: Path) -> list[str]:
    """The record types in the file, in order ("run", "history", ..., "exit")."""
    return [record.WhichOneof("record_type") for record in records(path)]


def exit_code(path: Path) -> int:
    """The exit code the run's `finish()` wrote (its exit record, which must be there)."""
    exits = [record.exit.exit_code for record in records(path) if record.WhichOneof("record_type") == "exit"]
    assert exits, f"{path} has no exit record (records: {kinds(path)}, {path.stat().st_size} bytes)"
    return exits[-1]


def run_info(path: Path) -> dict[str, Any]:
    """The run record's id, group, job type, name and config, plus every logged history key."""
    info: dict[str, Any] = {"history_keys": set()}
    found = records(path)
    assert any(r.WhichOneof("record_type") == "run" for r in found), (
        f"{path} holds no run record ({len(found)} records, {path.stat().st_size} bytes): is the file complete?")
    for record in found:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info.update(id=record.run.run_id, group=record.run.run_group, job_type=record.run.job_type,
                        name=record.run.display_name,
                        config={i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "history":
            info["history_keys"] |= {item_key(i) for i in record.history.item}
    return info


def of_kind(path: Path, kind: str) -> list[Any]:
    return [getattr(r, kind) for r in records(path) if r.WhichOneof("record_type") == kind]


def history(path: Path) -> list[dict[str, Any]]:
    """Every history row, in file order: {key: value}, `_step` included (image keys are nested dicts' parts)."""
    return [{item_key(i): json.loads(i.value_json) for i in row.item} for row in of_kind(path, "history")]


def summary(path: Path) -> dict[str, Any]:
    """The run summary as the file leaves it: every update applied in order, removals dropped."""
    out: dict[str, Any] = {}
    for record in of_kind(path, "summary"):
        out.update({item_key(i): json.loads(i.value_json) for i in record.update})
        for i in record.remove:
            out.pop(item_key(i), None)
    return out


def alerts(path: Path) -> list[tuple[str, str, str]]:
    return [(a.title, a.text, a.level) for a in of_kind(path, "alert")]


def tags(path: Path) -> list[str]:
    [run] = of_kind(path, "run")
    return list(run.tags)


def metric_definitions(path: Path) -> dict[str, dict[str, Any]]:
    """define_metric calls: name (or glob) -> {"step_metric": ..., "summary": {"max": True, ...}}."""
    out = {}
    for m in of_kind(path, "metric"):
        out[m.name or m.glob_name] = {"step_metric": m.step_metric,
                                      "summary": {f.name: v for f, v in m.summary.ListFields()}}
    return out
