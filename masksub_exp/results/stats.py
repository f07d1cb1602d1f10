"""The page's analysis rule: paired by seed, a Student t interval on the per-pair deltas, an exact sign-flip
permutation p-value, Holm's correction across one part's comparisons and Bonferroni-widened intervals.

A verdict says "gain" or "worse" only when the Holm-corrected t-test rejects at `alpha` and the widened
interval excludes 0; anything else is "inconclusive", printed with its interval. With no true effect this
calls a difference in about `alpha` of experiments (tests/test_results_stats.py simulates it).
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass

from scipy import stats as scipy_stats

ALPHA = 0.05
RULE = ("Verdict rule (fixed in each plan before its runs): runs are paired by seed (same seed, same data order, "
        "both arms); for each comparison the per-pair deltas (MaskSub - baseline, test top-1 points) give a "
        "Student t test and a 95 % t interval, and an exact sign-flip permutation p-value. Across the comparisons "
        "of one part the t-test p-values are Holm-corrected and the intervals widened to match (Bonferroni, "
        "1 - 0.05/m). A comparison is a **gain** or **worse** only when the corrected test rejects at 0.05 and "
        "the widened interval excludes 0; otherwise it is **inconclusive**, shown with its interval. Only "
        "complete pairs count; an incomplete pair is listed as unfinished. While a plan's pairs are not all complete "
        "the comparison is **interim** (k of n planned pairs): its interval is shown, no verdict is drawn (a verdict "
        "at a look the plan did not schedule would be optional stopping).")


@dataclass(frozen=True)
class Paired:
    """One comparison's paired result."""

    seeds: tuple[int, ...]
    deltas: tuple[float, ...]
    mean: float
    low: float  # the (widened) interval for the mean delta
    high: float
    level: float  # its confidence level, e.g. 0.95, or 0.975 when two comparisons share a part
    p_t: float  # two-sided paired t-test p-value
    p_holm: float  # Holm-corrected across the part
    p_sign: float  # exact two-sided sign-flip permutation p-value
    verdict: str

    def interval(self) -> str:
        return f"[{self.low:+.2f}, {self.high:+.2f}]" if math.isfinite(self.low) else "-"


def t_test(deltas: list[float]) -> tuple[float, float]:
    """(standard error, two-sided p) of the mean delta; a constant non-zero delta has p = 0."""
    n, mean = len(deltas), statistics.mean(deltas)
    se = statistics.stdev(deltas) / math.sqrt(n)
    if se == 0:
        return 0.0, 0.0 if mean != 0 else 1.0
    return se, float(2 * scipy_stats.t.sf(abs(mean / se), df=n - 1))


def sign_flip_p(deltas: list[float]) -> float:
    """Exact two-sided permutation p-value: the share of the 2^n sign patterns whose |mean| reaches the observed
    one (the observed pattern included). With n pairs it cannot go below 2 / 2^n."""
    observed = abs(sum(deltas))
    hits = sum(abs(sum(s * d for s, d in zip(signs, deltas, strict=True))) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=len(deltas)))
    return hits / 2 ** len(deltas)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def analyse(pairs: dict[str, dict[int, tuple[float, float]]], alpha: float = ALPHA,
            planned: dict[str, int] | None = None) -> dict[str, Paired]:
    """`pairs`: comparison -> {seed: (baseline, treatment)} of complete pairs. The comparisons are one family:
    Holm over those with at least two pairs, intervals at 1 - alpha/m. `planned`: comparison -> the pairs a
    registered plan fixed; with fewer complete, the comparison is interim and gets no verdict."""
    testable = [k for k, v in pairs.items() if len(v) >= 2]
    m = max(1, len(testable))
    level = 1 - alpha / m
    raw: dict[str, tuple[float, float]] = {}
    for key in testable:
        seeds = sorted(pairs[key])
        raw[key] = t_test([pairs[key][s][1] - pairs[key][s][0] for s in seeds])
    adjusted = dict(zip(testable, holm([raw[k][1] for k in testable]), strict=True))
    out = {}
    for key, by_seed in pairs.items():
        seeds = tuple(sorted(by_seed))
        deltas = tuple(by_seed[s][1] - by_seed[s][0] for s in seeds)
        if key not in raw:
            mean = deltas[0] if deltas else math.nan
            verdict = "too few pairs (needs 2)" if deltas else "no complete pair"
            if len(deltas) < (planned or {}).get(key, 0):
                verdict = f"interim ({len(deltas)} of {planned[key]} planned pairs): {verdict}"
            out[key] = Paired(seeds, deltas, mean, -math.inf, math.inf, level, math.nan, math.nan, math.nan, verdict)
            continue
        se, p = raw[key]
        mean = statistics.mean(deltas)
        half = float(scipy_stats.t.ppf(1 - (1 - level) / 2, df=len(deltas) - 1)) * se
        low, high = mean - half, mean + half
        rejects = adjusted[key] < alpha
        verdict = ("gain" if rejects and low > 0 else "worse" if rejects and high < 0 else "inconclusive")
        if len(deltas) < (planned or {}).get(key, 0):  # the plan's sample size not reached: interval, no verdict
            verdict = f"interim ({len(deltas)} of {planned[key]} planned pairs): no verdict"
        out[key] = Paired(seeds, deltas, mean, low, high, level, p, adjusted[key], sign_flip_p(list(deltas)), verdict)
    return out


def p_value(p: float) -> str:
    """'0.031', or '< 0.001' where three decimals would print a p-value of 0."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: float) -> str:
    """'= 0.031' or '< 0.001', after a 'p'."""
    return p_value(p) if p < 0.001 else f"= {p_value(p)}"


def describe(result: Paired) -> str:
    """One line: verdict, mean delta, interval, n, p-values."""
    if not math.isfinite(result.p_t):
        return f"{result.verdict}" + (f" ({result.mean:+.2f} points, n = {len(result.deltas)})" if result.deltas
                                      else "")
    word = {"gain": "**gain**", "worse": "**worse**", "inconclusive": "inconclusive"}.get(result.verdict,
                                                                                           result.verdict)
    return (f"{word}: {result.mean:+.2f} points, {100 * result.level:.1f} % interval {result.interval()}, "
            f"n = {len(result.deltas)} pairs, t-test p {p_text(result.p_t)} (Holm {p_text(result.p_holm)}), "
            f"sign-flip p {p_text(result.p_sign)}")
