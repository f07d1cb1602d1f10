"""docs/results.md as a whole: a CPU part from the local budget's runs, and a GPU part from the committed runs
of `benchmarks/gpu_results.sh` (docs/results_gpu/), each with its own budget, machine and verdicts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import torch

from ..tools.report import Run, find_runs
from .page import (
    MAIN_KEYS,
    Budget,
    section_bert,
    section_fmnist,
    section_loss,
    section_plateau,
    section_ratio,
    section_small_data,
    section_unfinished,
    section_variants,
    section_wall_clock,
)

RULE = ("Verdict rule: a delta counts as a gain (or a loss) only when it exceeds the larger of the two "
        "sides' seed standard deviations; otherwise the page says \"no measurable effect\".")


def cpu_machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor())
    return f"{os.cpu_count()} CPU cores ({model}), torch {torch.__version__}, CPU only"


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


@dataclass
class Part:
    """One budget's runs: what was planned, how it ran, and on what."""

    root: Path
    budget: Budget
    sweeps: list[str]
    record: dict

    @classmethod
    def load(cls, root: Path, budget: Budget | None = None) -> Part:
        record = json.loads((root / "budget.json").read_text()) if (root / "budget.json").exists() else {}
        if budget is None:  # a committed part (the GPU's): its budget comes with its runs
            known = {f.name for f in fields(Budget)}
            budget = Budget(**{k: v for k, v in record.get("budget", {}).items() if k in known})
        sweeps = record.get("sweeps") or sorted(d.name for d in root.iterdir() if d.is_dir())
        return cls(root, budget, sweeps, record)


def budget_lines(part: Part, runs: list[Run], machine: str) -> list[str]:
    b = part.budget
    cost = sum(r.summary.get("wall_time_s", 0.0) for r in runs) * b.threads / 3600
    calls = part.record.get("parts") or [part.record]
    spans = [f"from {c['started']} to {c.get('finished') or '(no end recorded)'}" for c in calls if "started" in c]
    span = "-" if not spans else spans[0] if len(calls) == 1 else "; ".join(
        f"{span} ({', '.join(c.get('sweeps', []))}: `{c.get('command', '?')}`)"
        for span, c in zip(spans, calls, strict=False))
    where = ("as SLURM jobs through the project's launcher (`hydra/launcher=slurm_cpu`)" if b.launcher == "slurm"
             else "as local processes (`--launcher local`, one `masksub_exp.train` per run)")
    return [f"- Budget, fixed before the runs (`budget.json` is written before the first run starts): {b.seeds} "
            f"seed(s) per setting (seeds 0..{b.seeds - 1}, the same for both arms); Fashion-MNIST {b.epochs} "
            f"epoch(s) on {b.train_limit or 'all 60,000'} training images (batch 256, the demo recipe: AdamW "
            "2e-3, cosine, label smoothing 0.1, shift + flip), test on all 10,000 after every epoch"
            + (f"; the little-data ViT {b.small_epochs} epoch(s) on {b.small_train_limit} images"
               if "vit_small_data" in part.sweeps else "")
            + (f"; MiniLM {b.text_epochs} epoch(s) on {b.text_train_limit or 'all'} tweets"
               if "bert_minilm" in part.sweeps else "")
            + (f"; every run capped at {b.max_steps} steps" if b.max_steps else "")
            + (f"; every run with `{b.extra}`" if b.extra else ""),
            f"- Sweeps: {', '.join(part.sweeps)}",
            f"- Ran {where}, {b.parallel} at a time, {b.threads} CPU thread(s) each, on {machine}",
            f"- Cost: {cost:.2f} hours of run wall time in all (sum over runs x threads); wall clock {span}", ""]


def render(part: Part, out: Path, rel: str, title: str) -> tuple[list[str], list[str]]:
    """The part's verdict lines and its sections (images under out/rel)."""
    groups = {d.name: find_runs([d]) for d in sorted(part.root.iterdir()) if d.is_dir()}
    runs = [r for rs in groups.values() for r in rs]
    images = out / rel
    images.mkdir(parents=True, exist_ok=True)
    planned = set(part.sweeps)
    keys = [k for k in MAIN_KEYS if k in planned]
    verdicts: list[str] = []
    body = [*section_unfinished(part.root, runs), *section_fmnist(groups, verdicts, keys),
            *section_plateau(groups, keys)]
    if "vit_ratio" in planned:
        body += section_ratio(groups, images, rel)
    if "vit_variants" in planned:
        body += section_variants(groups)
    if "vit_small_data" in planned:
        body += section_small_data(groups, part.budget, verdicts)
    if "bert_minilm" in planned:
        body += section_bert(groups, part.budget, verdicts)
    body += [*section_loss(groups, images, verdicts, rel, keys=sorted(planned)), *section_wall_clock(groups)]
    body = [f"#{line}" if line.startswith("## ") else line for line in body]  # sections sit under the part's title
    return verdicts, [f"## {title}", "", *body]


def write_page(root: Path, out: Path, budget: Budget, command: str, gpu_root: Path | None = None) -> Path:
    """Read every sweep folder under `root` (and the GPU part's), write OUT/results.md and its PNGs."""
    if not root.exists() or not any(root.rglob("summary.json")):
        raise SystemExit(f"error: no finished runs under {root}: run the command without --report-only first")
    cpu = Part.load(root, budget)
    cpu_runs = find_runs([root])
    verdicts, cpu_body = render(cpu, out, "results", "CPU: this machine")
    lines = ["# MaskSub results", "",
             f"Written by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (commit {git_commit()}). Do not "
             "edit: rerun the command. Every number comes from the run folders.", "",
             "## Summary", "", "CPU part:", "", *budget_lines(cpu, cpu_runs, cpu_machine()),
             *[f"- {v}" for v in verdicts], ""]
    gpu_body: list[str] = []
    if gpu_root is not None and gpu_root.exists() and any(gpu_root.rglob("summary.json")):
        gpu = Part.load(gpu_root)
        gpu_verdicts, gpu_body = render(gpu, out, "results/gpu", "GPU: the matrix of benchmarks/gpu_results.sh")
        lines += ["GPU part (runs committed under `docs/results_gpu/`):", "",
                  *budget_lines(gpu, find_runs([gpu_root]), gpu.record.get("machine", "a GPU")),
                  *[f"- {v}" for v in gpu_verdicts], ""]
    lines += [RULE, "", "These are small-budget checks on Fashion-MNIST, not the paper's ImageNet setting: a "
              "regulariser that pays off over 300-800 epochs need not show in tens of epochs.", ""]
    page = out / "results.md"
    page.write_text("\n".join(lines + cpu_body + gpu_body))
    return page
