"""Run the results sweeps without SLURM: every run of every sweep as its own `masksub_exp.train` process.

Used on a machine with no cluster (the GPU box of `benchmarks/gpu_results.sh`) and on a shared CPU where
SLURM's node is busy. Runs go in the plan's order (the main comparison first), `parallel` at a time. With a
deadline, no run starts after it, and runs still going then get SIGTERM: they checkpoint and exit within
`grace_s` (else they are killed), and a re-run resumes them; finished runs are kept, not run again. Every
planned run is listed in `plan.json` (a later call for more sweeps adds to it), so the page names the runs
that did not finish instead of silently leaving them out.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PlannedRun:
    key: str  # the sweep's folder
    name: str  # the run's folder inside it: its overrides
    overrides: tuple[str, ...]


def expand(key: str, experiment: str, params: dict[str, str], seeds: Sequence[int],
           common: Sequence[str]) -> list[PlannedRun]:
    """One run per combination of the sweep's comma-separated values and the seeds, seed by seed: with the slower
    arm written first in `params`, the two arms of a pair are adjacent and the slower one starts first."""
    names = list(params)
    runs = []
    for seed in seeds:
        for values in itertools.product(*(params[n].split(",") for n in names)):
            chosen = [f"{n}={v}" for n, v in zip(names, values, strict=True)] + [f"seed={seed}"]
            runs.append(PlannedRun(key, ",".join(chosen), (f"experiment={experiment}", *chosen, *common)))
    return runs


def seed_of(run: PlannedRun) -> str:
    return next(o for o in run.name.split(",") if o.startswith("seed="))


def interleave(groups: list[list[PlannedRun]]) -> list[PlannedRun]:
    """The first seed of every setting of every sweep first, then the next, ...: a deadline cuts whole seeds
    (pairs), not models; inside a sweep a seed's runs stay together in the sweep's order."""
    by_seed = [[list(runs) for _, runs in itertools.groupby(g, key=seed_of)] for g in groups]
    ordered: list[PlannedRun] = []
    for batch in itertools.zip_longest(*by_seed):
        for item in batch:
            if item is not None:
                ordered.extend(item)
    return ordered


def write_plan(root: Path, names: list[str]) -> None:
    """plan.json lists every run planned under `root`: a later call (more sweeps) adds to it, never drops."""
    path = root / "plan.json"
    earlier = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(earlier + [n for n in names if n not in earlier], indent=1))


def is_complete(folder: Path) -> bool:
    path = folder / "summary.json"
    return path.exists() and json.loads(path.read_text()).get("status") == "complete"


def record_attempt(root: Path, run: str, started: float, outcome: str) -> None:
    """attempts.jsonl: when each run's process ran (wall clock), so the page can tell which arms ran side by side."""
    with (root / "attempts.jsonl").open("a") as f:
        f.write(json.dumps({"run": run, "start": started, "end": time.time(), "outcome": outcome}) + "\n")


def run_locally(runs: list[PlannedRun], root: Path, parallel: int, threads: int, device: str,
                deadline_s: float | None = None, grace_s: float = 60.0,
                admit: Callable[[Path], bool] | None = None) -> dict[str, str]:
    """Run `runs` as subprocesses; returns {key/name: outcome}. Logs go to <root>/<key>/<name>.log. `admit`
    (a plan's stamp) may refuse a run folder, which is then left alone and reported."""
    root.mkdir(parents=True, exist_ok=True)
    write_plan(root, [f"{r.key}/{r.name}" for r in runs])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    outcome = {f"{r.key}/{r.name}": "done" for r in runs if is_complete(root / r.key / r.name)}
    pending, active = [r for r in runs if f"{r.key}/{r.name}" not in outcome], []
    if admit is not None:
        for run in [r for r in pending if not admit(root / r.key / r.name)]:
            pending.remove(run)
            outcome[f"{run.key}/{run.name}"] = "not counted (its folder predates the plan)"
            print(f"[results] {run.key}/{run.name}: its folder was made before the plan: left alone", flush=True)
    kept = sum(v == "done" for v in outcome.values())
    if kept:  # a finished run is kept as it is: its log and numbers stay those of the run that trained it
        print(f"[results] {kept} run(s) already finished: kept", flush=True)
    while pending or active:
        late = deadline_s is not None and time.monotonic() - started > deadline_s
        while pending and len(active) < parallel and not late:
            run = pending.pop(0)
            folder = root / run.key / run.name
            folder.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "masksub_exp.train", *run.overrides, f"train.device={device}",
                   "train.progress=false", f"hydra.run.dir='{folder}'"]
            # appended, not rewritten: a resumed run's log keeps what its earlier attempts printed (a crash's
            # traceback, the step a deadline stopped it at); each attempt starts with a dated header line
            log = (root / run.key / f"{run.name}.log").open("a")
            log.write(f"[results] attempt started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            active.append((run, log, proc, time.time()))
        if late:
            for run in pending:
                outcome[f"{run.key}/{run.name}"] = "not started (deadline)"
            pending.clear()
            for _, _, proc, _ in active:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)  # checkpoint and exit: a re-run resumes it
        for item in list(active):
            run, log, proc, began = item
            code = proc.poll()
            if code is None and late and time.monotonic() - started > deadline_s + grace_s:
                proc.kill()
                code = proc.wait()
            if code is not None:
                log.close()
                active.remove(item)
                stopped = late and code in (-15, 143)  # SIGTERM at the deadline: checkpointed, resumable
                outcome[f"{run.key}/{run.name}"] = "done" if code == 0 else "stopped (deadline)" if stopped \
                    else f"exit {code}"
                record_attempt(root, f"{run.key}/{run.name}", began, outcome[f"{run.key}/{run.name}"])
                print(f"[results] {run.key}/{run.name}: {outcome[f'{run.key}/{run.name}']} (this attempt "
                      f"{time.time() - began:.0f} s; {time.monotonic() - started:.0f} s since this command started)",
                      flush=True)
        time.sleep(0.5)  # a poll interval, not a wait for anything in particular
    return outcome
