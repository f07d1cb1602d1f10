"""The results page's two plots: top-1 against the masking ratio, and main-branch loss curves."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from ..tools.report import Run, pyplot

MAIN_MASK = "mask r=0.5"


def ratio_curve(runs: list[Run], path: Path) -> Path:
    """Top-1 (mean +- std over seeds) against r, with the baseline's mean +- std as a band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    by_ratio: dict[float, list[float]] = {}
    for r in runs:
        if r.summary["masksub_mode"] == "mask" and "top1" in r.summary:
            by_ratio.setdefault(r.summary["masksub_ratio"], []).append(r.summary["top1"])
    ratios = sorted(by_ratio)
    if ratios:
        means = [statistics.mean(by_ratio[x]) for x in ratios]
        stds = [statistics.stdev(by_ratio[x]) if len(by_ratio[x]) > 1 else 0.0 for x in ratios]
        ax.errorbar(ratios, means, yerr=stds, fmt="o-", capsize=4, label="MaskSub")
    base = [r.summary["top1"] for r in runs if r.variant == "baseline" and "top1" in r.summary]
    if base:
        mean, std = statistics.mean(base), statistics.stdev(base) if len(base) > 1 else 0.0
        ax.axhline(mean, color="k", ls="--", lw=1, label="baseline (no sub-branch)")
        ax.axhspan(mean - std, mean + std, color="k", alpha=0.1)
    ax.set(xlabel="masking ratio r", ylabel="test top-1 (%)", title="ViT on Fashion-MNIST")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class LossCurve:
    image: Path
    steps: int  # logged steps both arms share
    lower_share: float  # share of them where MaskSub's seed-mean main loss is below the baseline's
    lower_first: float  # the same over the first quarter of those steps
    lower_last: float  # and over the last quarter
    final: tuple[float, float]  # (baseline, MaskSub) seed-mean main loss at the last shared step


def mean_curve(runs: list[Run]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps logged by every run, and the mean / min / max main loss over the runs at each."""
    steps = sorted(set.intersection(*[{t["step"] for t in r.train} for r in runs]))
    values = [{t["step"]: t["loss_main"] for t in r.train} for r in runs]
    at = [[v[s] for v in values] for s in steps]
    return steps, [statistics.mean(a) for a in at], [min(a) for a in at], [max(a) for a in at]


def loss_curves(runs: list[Run], label: str, path: Path) -> LossCurve | None:
    """Baseline vs MaskSub r=0.5 main-branch loss against step (seed mean, min-max band), and eval top-1."""
    sides = {"baseline": [r for r in runs if r.variant == "baseline" and r.train],
             "MaskSub r=0.5": [r for r in runs if r.variant == MAIN_MASK and r.train]}
    if not all(sides.values()):
        return None
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    curves = {}
    for colour, (side, members) in zip(("C0", "C1"), sides.items(), strict=True):
        steps, mean, low, high = curves[side] = mean_curve(members)
        ax_loss.plot(steps, mean, color=colour, marker="o" if len(steps) < 10 else None,
                     label=f"{side} (mean of {len(members)})")
        ax_loss.fill_between(steps, low, high, color=colour, alpha=0.2)
        epochs = sorted({e["epoch"] for r in members for e in r.evals})
        acc = [statistics.mean(e["top1"] for r in members for e in r.evals if e["epoch"] == ep) for ep in epochs]
        ax_acc.plot(epochs, acc, "o-", color=colour, label=side)
    ax_loss.set(xlabel="step", ylabel="main-branch training loss", title=f"{label}: training loss (main branch)")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title=f"{label}: test top-1 (seed mean)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return compare_curves(curves["baseline"][:2], curves["MaskSub r=0.5"][:2], path)


def compare_curves(base: tuple[list[int], list[float]], ours: tuple[list[int], list[float]], image: Path) -> LossCurve:
    """Where MaskSub's main loss is below the baseline's: over all shared logged steps, the first and last quarter."""
    (b_steps, b_loss), (o_steps, o_loss) = base, ours
    common = sorted(set(b_steps) & set(o_steps))
    b, o = dict(zip(b_steps, b_loss, strict=True)), dict(zip(o_steps, o_loss, strict=True))
    lower = [o[s] < b[s] for s in common]
    quarter = max(1, len(common) // 4)

    def share(flags: list[bool]) -> float:
        return sum(flags) / len(flags) if flags else 0.0

    return LossCurve(image, len(common), share(lower), share(lower[:quarter]), share(lower[-quarter:]),
                     (b[common[-1]], o[common[-1]]))
