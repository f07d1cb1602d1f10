"""metrics.jsonl: one JSON object a line, appended (a resumed run continues the same file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _truncate_after(path: Path, step: int) -> None:
    """Drop the lines logged after `step`: the resumed run logs those steps again."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class JsonlSink:
    def __init__(self, path: Path, keep_until_step: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _truncate_after(path, keep_until_step or 0)
        self.file = open(path, "a", buffering=1)  # line-buffered: a crash loses at most one line

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")

    def close(self, exit_code: int = 0) -> None:
        self.file.close()
