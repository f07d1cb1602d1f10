"""Hydra callbacks: after a sweep, print its runs' results side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

COLUMNS = ("run", "masksub", "ratio", "seed", "steps", "top1", "top5", "wall_s")


def collect_summaries(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(sweep_dir.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        summary["run"] = path.parent.name
        rows.append(summary)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [list(COLUMNS)]
    for r in rows:
        cells.append([
            r["run"], r["masksub_mode"], f"{r['masksub_ratio']:g}", str(r["seed"]), str(r["step"]),
            f"{r.get('top1', float('nan')):.2f}", f"{r.get('top5', float('nan')):.2f}", f"{r['wall_time_s']:.0f}",
        ])
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class CompareRuns(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_summaries(sweep_dir)
        if rows:
            held = {r.get("eval_split") == "holdout" for r in rows}  # data.holdout runs score on held-out samples
            split = "held-out" if held == {True} else "test" if held == {False} else "held-out (data.holdout) or test"
            print(f"\nresults in {sweep_dir} ({split} top-1/top-5 %, main branch):\n{format_table(rows)}", flush=True)
