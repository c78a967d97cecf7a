"""Paired comparisons over seeds: closed-form t intervals, scipy's paired t-test, verdicts."""

from __future__ import annotations

import math

import pytest

from augdiff.analysis import compare

# t_{0.975, 2} in closed form: Student's t with 2 degrees of freedom has
# F(t) = 1/2 + t / (2 sqrt(2 + t²)), so F(t) = 0.975 gives t² = 2·0.95² / (1 − 0.95²).
T2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))


def _arms(a, b):
    return ({f"seed_{i}": v for i, v in enumerate(a)}, {f"seed_{i}": v for i, v in enumerate(b)})


def test_t_interval_on_three_paired_values_closed_form():
    # d = a − b = (1, 2, 3): mean 2, s_d = 1, half-width t_{.975,2} / sqrt(3)
    a, b = _arms([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    c = compare.paired_comparison(a, b, a_label="mixed", b_label="real")
    assert c.n == 3 and c.df == 2 and c.diffs == (1.0, 2.0, 3.0)
    assert c.mean == pytest.approx(2.0) and c.std == pytest.approx(1.0)
    assert c.t_quantile == pytest.approx(T2, rel=1e-9)
    assert c.low == pytest.approx(2.0 - T2 / math.sqrt(3))
    assert c.high == pytest.approx(2.0 + T2 / math.sqrt(3))
    assert c.low < 0 < c.high and c.verdict == "within noise"
    # (2, 3, 4): the same width, now clear of 0 -> the first arm is better
    a, b = _arms([12.0, 13.0, 14.0], [10.0, 10.0, 10.0])
    c = compare.paired_comparison(a, b, a_label="mixed", b_label="real")
    assert c.low == pytest.approx(3.0 - T2 / math.sqrt(3)) and c.verdict == "mixed better"
    c = compare.paired_comparison(b, a, a_label="real", b_label="mixed")
    assert c.high < 0 and c.verdict == "mixed better"
    # lower is better (e.g. FID): the same interval names the other arm
    c = compare.paired_comparison(a, b, a_label="A", b_label="B", higher_is_better=False)
    assert c.verdict == "B better"


def test_agrees_with_scipy_paired_t_test():
    stats = pytest.importorskip("scipy.stats")
    a = [0.612, 0.598, 0.631, 0.604, 0.620]
    b = [0.601, 0.603, 0.615, 0.590, 0.611]
    c = compare.paired_comparison(*_arms(a, b))
    ref = stats.ttest_rel(a, b)
    assert c.t_statistic == pytest.approx(float(ref.statistic), rel=1e-9)
    assert c.df == 4
    # The 95 % interval excludes 0 exactly when the two-sided p-value is below 0.05.
    assert (c.verdict != "within noise") == (float(ref.pvalue) < 0.05)
    lo, hi = ref.confidence_interval(0.95)
    assert (c.low, c.high) == pytest.approx((float(lo), float(hi)), rel=1e-9)


def test_unpaired_seeds_are_dropped_and_one_seed_has_no_interval():
    c = compare.paired_comparison({"seed_0": 0.5, "seed_1": 0.6, "seed_2": 0.7},
                                  {"seed_1": 0.55, "seed_2": 0.6, "seed_9": 0.1})
    assert c.seeds == ("seed_1", "seed_2") and c.diffs == pytest.approx((0.05, 0.1))
    one = compare.paired_comparison({"seed_0": 0.5}, {"seed_0": 0.4}, a_label="A", b_label="B")
    assert one.verdict == "1 seed: no interval" and one.low is None and one.std is None
    assert one.mean == pytest.approx(0.1)
    assert compare.describe(one) == "A vs B: +10.00 points (1 seed): 1 seed: no interval"
    with pytest.raises(ValueError, match="share no seed"):
        compare.paired_comparison({"seed_0": 0.5}, {"seed_1": 0.4})


def test_overlapping_seeds_read_within_noise():
    # mixed beats real by +0.47 points on average with 2 seeds, inside one std: not a finding
    a, b = _arms([0.6020, 0.5990], [0.5950, 0.5966])
    c = compare.paired_comparison(a, b, a_label="mixed", b_label="real")
    assert c.mean == pytest.approx(0.0047)
    assert c.verdict == "within noise"
    assert compare.finding_verdict(c, a_above_b=True) == "within noise"
    line = compare.describe(c)
    assert line.startswith("mixed vs real: +0.47 points (95 % interval ")
    assert line.endswith("paired over 2 seeds): within noise")


def test_finding_verdicts():
    up = compare.paired_comparison(*_arms([12.0, 13.0, 14.0], [10.0, 10.0, 10.0]))
    assert compare.finding_verdict(up, a_above_b=True) == "reproduced"
    assert compare.finding_verdict(up, a_above_b=False) == "contradicted"


def test_seed_summary_closed_form():
    s = compare.seed_summary([0.5, 0.6, 0.7])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert compare.seed_summary([0.3]) == {"n": 1, "mean": 0.3, "std": None}


def test_t_table_without_scipy(monkeypatch):
    monkeypatch.setattr(compare, "_scipy_stats", None)
    assert compare.t_quantile(2) == pytest.approx(T2, abs=5e-5)
    assert compare.t_quantile(1) == pytest.approx(math.tan(math.pi * 0.475), abs=5e-5)  # Cauchy
    assert compare.t_quantile(35) == compare.T_975[30]  # conservative: next smaller df
    assert compare.t_quantile(10_000) == compare.T_975[120]
    with pytest.raises(ValueError, match="needs scipy"):
        compare.t_quantile(3, 0.9)
