"""Pre-registered plans: what an evidence part will run and how it will be judged, committed before any run.

A plan is a YAML file under docs/plans/ (one per budget). The results command refuses to start runs under a
plan that is missing, unparsable, uncommitted or dirty, or whose deadline cannot fit one pair; it records the
plan's commit in budget.json and stamps every run folder it creates with that commit (`.plan`), so the page
counts only runs made under the committed plan: a run folder without that stamp was made before it.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STAMP = ".plan"  # in each run folder: the plan commit it ran under


class PlanError(ValueError):
    """A plan that cannot be used; the message is one line naming the file and what is wrong."""


@dataclass(frozen=True)
class Comparison:
    sweep: str  # a results sweep key (masksub_exp/results/command.py: plan())
    claim: str  # what the comparison tests, in words, fixed before the runs
    baseline: str = "baseline"
    treatment: str = "mask r=0.5"


@dataclass(frozen=True)
class Plan:
    path: Path
    name: str
    part: str  # "cpu" or "gpu": which part of docs/results.md
    seeds: tuple[int, ...]
    epochs: int
    comparisons: tuple[Comparison, ...]
    analysis: str
    train_limit: int | None = None
    device: str = "cpu"
    launcher: str = "local"
    parallel: int = 2
    threads: int = 1
    deadline_min: float | None = None
    extra: str = ""
    minutes_per_epoch: dict[str, float] = field(default_factory=dict)  # measured estimates per arm (mode)
    commit: str = ""  # the last commit that touched the plan file
    committed_at: str = ""  # its committer time, UTC

    @property
    def sweeps(self) -> list[str]:
        return list(dict.fromkeys(c.sweep for c in self.comparisons))

    def pair_minutes(self) -> float | None:
        """The slower arm's estimated minutes for the whole budget (both arms of a pair run side by side)."""
        return max(self.minutes_per_epoch.values()) * self.epochs if self.minutes_per_epoch else None


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PlanError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.strip()


def commit_of(path: Path) -> tuple[str, str]:
    """(commit, UTC time) of the last commit that touched `path`; refuses an uncommitted or dirty file."""
    repo = path.resolve().parent
    status = git(repo, "status", "--porcelain", "--", str(path.resolve()))
    if status.startswith("??"):
        raise PlanError(f"plan {path} is not committed: commit it before the first run (pre-registration)")
    if status:
        raise PlanError(f"plan {path} has uncommitted changes: commit it before the first run (pre-registration)")
    line = git(repo, "log", "-1", "--format=%H %ct", "--", str(path.resolve()))
    if not line:
        raise PlanError(f"plan {path} is not committed: commit it before the first run (pre-registration)")
    sha, stamp = line.split()
    return sha, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(stamp)))


def _need(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in raw:
        raise PlanError(f"plan {path}: missing key '{key}'")
    if not isinstance(raw[key], kind):
        raise PlanError(f"plan {path}: '{key}' must be {getattr(kind, '__name__', kind)}, got {raw[key]!r}")
    return raw[key]


def parse(path: Path, sweep_keys: list[str]) -> Plan:
    """The plan as written (no git check): one PlanError line for anything wrong."""
    if not path.is_file():
        raise PlanError(f"plan {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PlanError(f"plan {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise PlanError(f"plan {path} must be a mapping of keys, got {type(raw).__name__}")
    known = {"name", "part", "seeds", "epochs", "comparisons", "analysis", "train_limit", "device", "launcher",
             "parallel", "threads", "deadline_min", "extra", "minutes_per_epoch"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PlanError(f"plan {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    seeds = _need(raw, "seeds", list, path)
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise PlanError(f"plan {path}: 'seeds' must be a non-empty list of integers >= 0, got {seeds!r}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise PlanError(f"plan {path}: seed(s) {twice} given twice: each seed is one pair")
    comparisons = []
    for item in _need(raw, "comparisons", list, path):
        if not isinstance(item, dict) or "sweep" not in item or "claim" not in item:
            raise PlanError(f"plan {path}: each comparison needs 'sweep' and 'claim', got {item!r}")
        if item["sweep"] not in sweep_keys:
            raise PlanError(f"plan {path}: unknown sweep {item['sweep']!r}; known: {', '.join(sweep_keys)}")
        comparisons.append(Comparison(**{k: str(v) for k, v in item.items()}))
    if not comparisons:
        raise PlanError(f"plan {path}: no comparisons")
    epochs = _need(raw, "epochs", int, path)
    part = _need(raw, "part", str, path)
    if epochs < 1 or part not in ("cpu", "gpu"):
        raise PlanError(f"plan {path}: 'epochs' must be >= 1 and 'part' cpu or gpu")
    plan = Plan(path=path, name=_need(raw, "name", str, path), part=part, seeds=tuple(seeds), epochs=epochs,
                comparisons=tuple(comparisons), analysis=_need(raw, "analysis", str, path),
                train_limit=raw.get("train_limit"), device=raw.get("device", "cpu"),
                launcher=raw.get("launcher", "local"), parallel=int(raw.get("parallel", 2)),
                threads=int(raw.get("threads", 1)), deadline_min=raw.get("deadline_min"),
                extra=raw.get("extra") or "", minutes_per_epoch=dict(raw.get("minutes_per_epoch") or {}))
    pair = plan.pair_minutes()
    if plan.deadline_min is not None and pair is not None and plan.deadline_min < pair:
        raise PlanError(f"plan {path}: deadline {plan.deadline_min:g} min cannot finish one pair (the slower "
                        f"arm needs ~{pair:.0f} min at {plan.epochs} epochs): raise the deadline or cut the epochs")
    return plan


def load(path: Path, sweep_keys: list[str]) -> Plan:
    """The plan, checked, with the commit it was registered at."""
    plan = parse(path, sweep_keys)
    sha, when = commit_of(path)
    return Plan(**{**plan.__dict__, "commit": sha, "committed_at": when})


def stamp(folder: Path, plan: Plan) -> bool:
    """Mark a run folder as made under `plan`; False (and nothing written) for a folder made before it."""
    path = folder / STAMP
    if path.exists():
        return json.loads(path.read_text()).get("plan_commit") == plan.commit
    if folder.exists() and any(folder.iterdir()):
        return False  # trained (or started) before this plan existed: it never counts
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"plan": plan.name, "plan_commit": plan.commit,
                                "stamped": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}))
    return True


def stamped_by(folder: Path) -> str | None:
    """The plan commit a run folder was made under, or None."""
    path = folder / STAMP
    return json.loads(path.read_text()).get("plan_commit") if path.exists() else None
