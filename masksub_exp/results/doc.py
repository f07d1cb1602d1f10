"""docs/results.md as a whole: a CPU part from a plan's runs, and GPU parts from committed run records, each with
its own budget, machine, plan (or the word "exploratory") and verdicts; plus README's generated evidence block."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import yaml

from ..tools.report import Run, find_runs
from .page import (
    MAIN_KEYS,
    MODELS,
    Budget,
    section_bert,
    section_loss,
    section_main,
    section_ratio,
    section_small_data,
    section_unfinished,
    section_variants,
    section_wall_clock,
)
from .plan import STAMP, stamped_by
from .runs import is_complete
from .stats import RULE

README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


def cpu_machine() -> str:
    from .. import host  # imports torch: only when a page is written

    return host.describe()


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


@dataclass
class Part:
    """One budget's runs: what was planned, how it ran, on what, and under which plan."""

    root: Path
    budget: Budget
    sweeps: list[str]
    record: dict

    @classmethod
    def load(cls, root: Path, budget: Budget | None = None) -> Part:
        record = json.loads((root / "budget.json").read_text()) if (root / "budget.json").exists() else {}
        if budget is None:  # a committed part: its budget comes with its runs
            known = {f.name for f in fields(Budget)}
            budget = Budget(**{k: v for k, v in record.get("budget", {}).items() if k in known})
        sweeps = record.get("sweeps") or sorted(d.name for d in root.iterdir() if d.is_dir())
        return cls(root, budget, sweeps, record)

    @property
    def plan(self) -> dict:
        return self.record.get("plan") or {}

    def claims(self) -> dict[str, str]:
        """The plan's claim per sweep, as registered (from budget.json, else from the committed plan file)."""
        if "claims" in self.plan:
            return self.plan["claims"]
        path = Path(__file__).resolve().parents[2] / self.plan["path"] if self.plan else None
        if path is None or not path.is_file():
            return {}
        return {c["sweep"]: c["claim"] for c in (yaml.safe_load(path.read_text()) or {}).get("comparisons", [])}

    def runs(self) -> tuple[list[Run], list[Run]]:
        """(counted, not counted): under a plan only runs stamped with its commit count."""
        every = find_runs([self.root]) if any(self.root.rglob("summary.json")) else []
        if not self.plan:
            return every, []
        ok = [r for r in every if stamped_by(r.folder) == self.plan["commit"]]
        return ok, [r for r in every if r not in ok]


LOST = "on a machine not kept since: its runs missing from this record are lost, not counted"


def export_record(root: Path, dest: Path) -> Path:
    """Copy a plan's run files that the page reads (no checkpoints) to `dest` (committed: docs/results_runs/)."""
    earlier = json.loads((dest / "budget.json").read_text()) if (dest / "budget.json").exists() else {}
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("budget.json", "plan.json", "attempts.jsonl"):
        if (root / name).exists():
            shutil.copy2(root / name, dest / name)
    budget = json.loads((root / "budget.json").read_text())
    commit = budget.get("plan", {}).get("commit")
    if commit and earlier.get("plan", {}).get("commit") == commit:  # calls made on a machine that kept nothing
        parts = budget.get("parts", [])  # (its runs are lost unless committed) stay on record, oldest first
        known = {(p.get("started"), p.get("command")) for p in parts}
        lost = [{**p, "note": p.get("note", LOST)} for p in earlier.get("parts", [])
                if (p.get("started"), p.get("command")) not in known]
        budget["parts"] = sorted(lost + parts, key=lambda p: p.get("started", ""))
        budget["started"] = budget["parts"][0].get("started", budget.get("started"))
        (dest / "budget.json").write_text(json.dumps(budget, indent=1))
    folders = {p.parent for name in ("config.yaml", "summary.json", STAMP) for p in root.glob(f"*/*/{name}")}
    ignored = sorted(str(f.relative_to(root)) for f in folders if stamped_by(f) != commit)
    (dest / "not_counted.json").write_text(json.dumps(ignored, indent=1))  # the page names them
    for stamp in root.rglob(STAMP):
        if stamped_by(stamp.parent) != commit:
            continue
        copy_run_files(stamp.parent, dest / stamp.parent.relative_to(root))
    return dest


def copy_run_files(folder: Path, target: Path) -> None:
    """The files of a run the page reads (its stamp, config, metrics and summary; never a checkpoint)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in (STAMP, "config.yaml", "metrics.jsonl", "summary.json"):
        if (folder / name).exists():
            shutil.copy2(folder / name, target / name)


def restore_record(record: Path, root: Path, commit: str) -> list[str]:
    """The reverse of export_record, so a plan's budget can run in parts on machines that keep nothing but git:
    every run the committed record holds as complete under `commit` and `root` lacks comes back (its files, not a
    checkpoint: it is finished), with the record's budget history and attempts. Returns the restored runs."""
    budget = record / "budget.json"
    if not budget.exists() or json.loads(budget.read_text()).get("plan", {}).get("commit") != commit:
        return []  # another plan's (or no) record: nothing of it counts here
    root.mkdir(parents=True, exist_ok=True)
    for name in ("budget.json", "plan.json"):
        if not (root / name).exists() and (record / name).exists():
            shutil.copy2(record / name, root / name)
    here = root / "attempts.jsonl"
    mine = here.read_text().splitlines() if here.exists() else []
    theirs = (record / "attempts.jsonl").read_text().splitlines() if (record / "attempts.jsonl").exists() else []
    if theirs:  # both machines' attempts, each once: the page pairs side-by-side arms from them
        here.write_text("".join(f"{line}\n" for line in dict.fromkeys(theirs + mine)))
    restored = []
    for summary in sorted(record.glob("*/*/summary.json")):
        folder, target = summary.parent, root / summary.parent.relative_to(record)
        if is_complete(target) or stamped_by(folder) != commit or not is_complete(folder):
            continue
        copy_run_files(folder, target)
        restored.append(str(target.relative_to(root)))
    return restored


def first_start(part: Part) -> str | None:
    """When the part's first run started: its stamp (written just before the process starts), its attempt, or the
    start of a call whose runs a wiped machine lost (the budget history keeps it)."""
    times = [json.loads(p.read_text()).get("stamped") for p in part.root.glob(f"*/*/{STAMP}")]
    path = part.root / "attempts.jsonl"
    times += [f"{datetime.fromtimestamp(json.loads(line)['start'], UTC):%Y-%m-%d %H:%M:%S} UTC"
              for line in (path.read_text().splitlines() if path.exists() else [])]
    times += [c.get("started") for c in part.record.get("parts", [])]
    return min((t for t in times if t), default=None)


def machines(runs: list[Run], fallback: str) -> str:
    """The machines the runs recorded (summary.json's "machine", with how many runs each); `fallback` when none
    did (runs made before runs recorded it)."""
    counts = Counter(r.summary.get("machine") for r in runs)
    recorded = sorted((m, n) for m, n in counts.items() if m)
    if not recorded:
        return fallback
    return "; ".join(f"{m} ({n} run(s))" for m, n in recorded) + (
        f"; not recorded by {counts[None]} run(s) made before runs recorded it" if counts[None] else "")


def utc_seconds(stamp: str) -> float:
    """A budget record's time ('2026-12-02 01:55:17 UTC') as epoch seconds."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC).timestamp()


def call_spans(part: Part) -> list[tuple[dict, str, float | None]]:
    """Each call that ran under the budget, its wall clock in words and its hours (None when its end is unknown).
    A call stopped with its machine (a session's end, a kill) records no end of its own: the end of the last run
    attempt that started within it stands in, said as such."""
    calls = [c for c in (part.record.get("parts") or [part.record]) if "started" in c]
    path = part.root / "attempts.jsonl"
    attempts = [json.loads(line) for line in (path.read_text().splitlines() if path.exists() else [])]
    starts = [utc_seconds(c["started"]) for c in calls] + [float("inf")]
    spans = []
    for call, begin, until in zip(calls, starts, starts[1:], strict=False):
        ends = [a["end"] for a in attempts if begin - 1 <= a["start"] < until and a.get("end")]
        if call.get("finished"):
            end, span = utc_seconds(call["finished"]), f"from {call['started']} to {call['finished']}"
        elif ends:
            end = max(ends)
            span = (f"from {call['started']} to {datetime.fromtimestamp(end, UTC):%Y-%m-%d %H:%M:%S} UTC (the end of "
                    "its last run: the call was stopped before it recorded its own)")
        else:
            end, span = None, f"from {call['started']}, end unknown (no end recorded, no run of it finished here)"
        spans.append((call, span, None if end is None else (end - begin) / 3600))
    return spans


def budget_lines(part: Part, runs: list[Run], machine: str) -> list[str]:
    """The part's plan, budget, sweeps, machines and cost. `machine`: said when no run recorded its own."""
    b = part.budget
    cost = sum(r.summary.get("wall_time_s", 0.0) for r in runs) * b.threads / 3600
    calls = call_spans(part)
    known = [hours for _, _, hours in calls if hours is not None]
    span = "-" if not calls else calls[0][1] if len(calls) == 1 else "; ".join(
        f"{span} ({', '.join(c.get('sweeps', []))}: `{c.get('command', '?')}`"
        + (f"; on {c['machine']}" if c.get("machine") else "") + (f"; {c['note']}" if c.get("note") else "") + ")"
        for c, span, _ in calls)
    share = "the" if len(known) == len(calls) else f"the {len(known)} of"
    clock = (f"{sum(known):.2f} hours of wall clock over {share} {len(calls)} call(s) whose end is known: " if calls
             else "wall clock ")
    where = ("as SLURM jobs through the project's launcher (`hydra/launcher=slurm_cpu`)" if b.launcher == "slurm"
             else "as local processes (`--launcher local`, one `masksub_exp.train` per run)")
    seeds = b.seed_values()
    plan = part.plan
    registered = (f"- Plan: `{plan['path']}`, registered at commit {plan['commit'][:8]} ({plan['committed_at']}); "
                  f"first run started {first_start(part) or '(none yet)'}; only runs stamped with that commit count"
                  if plan else "- Plan: none registered before these runs (exploratory: the budget was committed "
                  "after the runs, so nothing here was pre-registered)")
    return [registered,
            f"- Budget: seeds {', '.join(map(str, seeds))} (one pair per seed: same seed, same data order, both "
            f"arms); Fashion-MNIST {b.epochs} epoch(s) on {b.train_limit or 'all 60,000'} training images (batch "
            "256, the demo recipe: AdamW 2e-3, cosine, label smoothing 0.1, shift + flip), test on all 10,000 after "
            "every epoch"
            + (f"; the little-data ViT {b.small_epochs} epoch(s) on {b.small_train_limit} images"
               if "vit_small_data" in part.sweeps else "")
            + (f"; MiniLM {b.text_epochs} epoch(s) on {b.text_train_limit or 'all'} tweets"
               if "bert_minilm" in part.sweeps else "")
            + (f"; every run capped at {b.max_steps} steps" if b.max_steps else "")
            + (f"; every run with `{b.extra}`" if b.extra else ""),
            f"- Sweeps: {', '.join(part.sweeps)}",
            f"- Ran {where}, {b.parallel} at a time, {b.threads} CPU thread(s) each, on {machines(runs, machine)}",
            f"- Cost: {cost:.2f} hours of run wall time in all (sum over counted runs x threads); {clock}{span}",
            ""]


def render(part: Part, out: Path, rel: str, title: str) -> tuple[list[str], list[str]]:
    """The part's verdict lines and its sections (images under out/rel)."""
    runs, excluded = part.runs()
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.folder.parent.name, []).append(r)
    images = out / rel
    images.mkdir(parents=True, exist_ok=True)
    planned = set(part.sweeps)
    keys = [k for k in MAIN_KEYS if k in planned]
    seeds = part.budget.seed_values()
    verdicts: list[str] = []
    body = section_unfinished(part.root, runs)
    listed = part.root / "not_counted.json"
    names = [f"{r.folder.parent.name}/{r.folder.name}" for r in excluded] + (
        json.loads(listed.read_text()) if listed.exists() else [])
    if names:
        body += ["Not counted (made before or outside this plan, no stamp of its commit): "
                 + ", ".join(f"`{n}`" for n in sorted(set(names))), ""]
    body += section_main(groups, keys, seeds, verdicts, part.claims(), registered=bool(part.plan))
    if "vit_ratio" in planned:
        body += section_ratio(groups, images, rel)
    if "vit_variants" in planned:
        body += section_variants(groups)
    if "vit_small_data" in planned:
        body += section_small_data(groups, part.budget)
    if "bert_minilm" in planned:
        body += section_bert(groups, part.budget)
    curves = [k for k in MODELS if k in planned]
    body += [*section_loss(groups, images, rel, curves), *section_wall_clock(part.root, groups, curves)]
    body = [f"#{line}" if line.startswith("## ") else line for line in body]  # sections sit under the part's title
    return verdicts, [f"## {title}", "", *body]


def gpu_parts(gpu_root: Path | None) -> list[tuple[Path, str]]:
    """The committed GPU records: the exploratory matrix and, when run, pre-registered confirmation sets."""
    if gpu_root is None or not gpu_root.exists():
        return []
    found = [(gpu_root, "GPU, exploratory: the matrix of benchmarks/gpu_results.sh")] \
        if any(gpu_root.glob("*/*/summary.json")) else []
    confirm = gpu_root.parent / "results_runs"
    for record in sorted(confirm.glob("gpu_*")) if confirm.exists() else []:
        found.append((record, f"GPU, confirmation: plan {record.name}"))
    return found


def write_page(root: Path, out: Path, budget: Budget, command: str, gpu_root: Path | None = None) -> Path:
    """Read the part under `root` (and the GPU records), write OUT/results.md and its PNGs; README's block too."""
    if not root.exists() or not (root / "budget.json").exists() and not any(root.rglob("summary.json")):
        raise SystemExit(f"error: no finished runs under {root}: run the command without --report-only first")
    cpu = Part.load(root, budget)
    verdicts, body = render(cpu, out, "results", "CPU part")
    written_on = (f"machines these runs did not record (made before runs recorded theirs; the calls below name theirs "
                  f"where recorded); this page was written on {cpu_machine()}")
    summary = ["## Summary", "", "CPU part:", "", *budget_lines(cpu, cpu.runs()[0], written_on),
               *[f"- {v}" for v in verdicts], ""]
    for index, (gpu_path, title) in enumerate(gpu_parts(gpu_root)):
        gpu = Part.load(gpu_path)
        gpu_verdicts, gpu_body = render(gpu, out, "results/gpu" + ("" if index == 0 else str(index)), title)
        summary += [f"{title} (runs committed under `{gpu_path.relative_to(gpu_path.parents[1])}`):", "",
                    *budget_lines(gpu, gpu.runs()[0], gpu.record.get("machine", "a GPU")),
                    *[f"- {v}" for v in gpu_verdicts], ""]
        body += gpu_body
    plan = cpu.plan
    lines = ["# MaskSub results", "",
             f"Written by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (code commit {git_commit()}"
             + (f"; plan commit {plan['commit'][:8]}" if plan else "") + "). Do not edit: rerun the command. "
             "Every number comes from the run folders.", "", *summary, RULE, "",
             "These are small-budget checks on Fashion-MNIST, not the paper's ImageNet setting: a regulariser that "
             "pays off over 300-800 epochs need not show in tens of epochs.", ""]
    page = out / "results.md"
    page.write_text("\n".join(lines + body))
    return page


def readme_block(page: Path) -> str:
    """README's evidence paragraph, generated from the page's summary (so README cannot claim more)."""
    text = page.read_text()
    summary = text[text.index("## Summary"):]
    summary = summary[:summary.index(RULE)]
    keep = [line for line in summary.splitlines()[2:] if line.startswith(("- Fashion", "- MiniLM", "CPU part",
                                                                          "GPU", "- Plan"))]
    return "\n".join([README_BEGIN, "From [docs/results.md](docs/results.md), generated (do not edit):", "",
                      *keep, "", "Verdicts follow the page's paired rule (a 95 % paired t interval, Holm across "
                      "comparisons; \"inconclusive\" when the interval spans 0).", README_END])


def readme_with_block(readme: str, block: str) -> str:
    start, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    return readme[:start] + block + readme[end:]
