"""The page's analysis rule (masksub_exp/results/stats.py): calibrated on simulated experiments, exact where exact."""

from __future__ import annotations

import math

import numpy as np
import pytest

from masksub_exp.results.stats import analyse, describe, holm, sign_flip_p, t_test


def simulated_calls(effect: float, experiments: int = 2000, pairs: int = 5, seed: int = 0) -> float:
    """Share of simulated experiments (`pairs` seed pairs each, pair std 1) where the rule says gain or worse."""
    rng = np.random.default_rng(seed)
    calls = 0
    for _ in range(experiments):
        base = rng.normal(80.0, 1.0, pairs)  # seeds differ a lot between each other...
        treat = base + effect + rng.normal(0.0, 1.0, pairs)  # ...the pair's delta has std 1 around the effect
        result = analyse({"c": dict(enumerate(zip(base.tolist(), treat.tolist(), strict=True)))})["c"]
        calls += result.verdict in ("gain", "worse")
    return calls / experiments


def test_with_no_effect_the_rule_calls_a_difference_in_about_5_percent_of_experiments() -> None:
    rate = simulated_calls(effect=0.0)
    assert 0.03 <= rate <= 0.07, rate


def test_an_effect_of_two_pair_std_is_found_in_most_experiments() -> None:
    rate = simulated_calls(effect=2.0)
    assert rate >= 0.8, rate


def test_the_verdict_needs_the_interval_to_exclude_zero_and_names_the_direction() -> None:
    up = analyse({"up": {s: (80.0, 81.0 + 0.1 * s) for s in range(6)}})["up"]
    assert up.verdict == "gain" and up.low > 0 and up.p_holm < 0.05
    down = analyse({"down": {s: (80.0, 79.0 - 0.1 * s) for s in range(6)}})["down"]
    assert down.verdict == "worse" and down.high < 0
    noisy = analyse({"noisy": {0: (80.0, 83.0), 1: (80.0, 77.5), 2: (80.0, 81.0)}})["noisy"]
    assert noisy.verdict == "inconclusive" and noisy.low < 0 < noisy.high


def test_sign_flip_p_is_exact() -> None:
    assert sign_flip_p([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32)  # all positive: the floor with 5 pairs
    assert sign_flip_p([0.5] * 6) == pytest.approx(2 / 64)  # 6 pairs can reach below 1/16
    assert sign_flip_p([1.0, -1.0]) == 1.0


def test_holm_adjusts_step_down_and_stays_monotone() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_intervals_widen_with_the_number_of_comparisons_and_holm_applies() -> None:
    pairs = {s: (80.0, 80.6 + 0.3 * (s % 3)) for s in range(6)}
    alone = analyse({"a": pairs})["a"]
    family = analyse({"a": pairs, "b": {s: (80.0, 80.0 + (-1) ** s) for s in range(6)}})
    assert family["a"].level == pytest.approx(0.975) and alone.level == pytest.approx(0.95)
    assert family["a"].high - family["a"].low > alone.high - alone.low
    assert family["a"].p_holm >= family["a"].p_t


def test_too_few_pairs_and_constant_deltas() -> None:
    one = analyse({"x": {0: (80.0, 81.0)}})["x"]
    assert one.verdict.startswith("too few pairs") and math.isnan(one.p_t)
    assert analyse({"x": {}})["x"].verdict == "no complete pair"
    assert t_test([0.5, 0.5, 0.5]) == (0.0, 0.0) and t_test([0.0, 0.0]) == (0.0, 1.0)


def test_a_plan_with_pairs_still_missing_is_interim_with_no_verdict() -> None:
    """A look before the plan's sample size is reached draws no verdict (optional stopping), whatever p says."""
    strong = {s: (80.0, 81.0 + 0.1 * s) for s in range(6)}
    early = analyse({"c": {s: strong[s] for s in (0, 1)}}, planned={"c": 6})["c"]
    assert early.verdict == "interim (2 of 6 planned pairs): no verdict" and early.low > 0  # the interval is shown
    assert describe(early).startswith("interim (2 of 6 planned pairs): no verdict: +1.05 points")
    single = analyse({"c": {0: strong[0]}}, planned={"c": 6})["c"]
    assert single.verdict == "interim (1 of 6 planned pairs): too few pairs (needs 2)"
    assert analyse({"c": strong}, planned={"c": 6})["c"].verdict == "gain"  # all planned pairs: the rule decides


def test_wall_clock_pairs_only_arms_that_shared_most_of_their_time() -> None:
    from masksub_exp.results.page import overlap_share

    assert overlap_share([(0, 34)], [(0, 50)]) == pytest.approx(0.68)  # a pair started together, idle machine
    assert overlap_share([(0, 49)], [(0, 117)]) < 0.5  # MaskSub ran on alone under another load for 68 minutes
    assert overlap_share([(0, 34)], [(40, 90)]) == 0.0  # ran apart
    assert overlap_share([(0, 10), (20, 40)], [(0, 40)]) == pytest.approx(0.75)  # a resumed arm: both attempts


@pytest.mark.fast  # the inner loop: `make test-fast`
def test_a_p_value_below_a_thousandth_is_never_printed_as_zero() -> None:
    from masksub_exp.results.stats import p_text, p_value

    assert (p_value(0.0004), p_text(0.0004)) == ("< 0.001", "< 0.001")
    assert (p_value(0.03125), p_text(0.03125)) == ("0.031", "= 0.031")
    line = describe(analyse({"x": {s: (87.0, 87.85 + 0.01 * (s % 3)) for s in range(6)}})["x"])
    assert "t-test p < 0.001 (Holm < 0.001)" in line and "sign-flip p = 0.031" in line and "0.000" not in line
