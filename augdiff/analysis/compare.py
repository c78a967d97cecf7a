"""Seed statistics and paired comparisons of two arms, with a verdict in words.

Pure functions (numbers in, numbers and words out), shared by every report that states an
"A vs B": :mod:`augdiff.pipeline.report` (``augdiff run``) and the reproduction tables.

- :func:`seed_summary`: mean, sample standard deviation (``ddof = 1``) and ``n`` of one arm's
  per-seed values.
- :func:`paired_comparison`: the per-seed differences ``d_i = a_i − b_i`` over the seeds both
  arms ran, their mean ``d̄``, standard deviation ``s_d`` and the two-sided Student-t interval
  ``d̄ ± t_{1−α/2, n−1} · s_d / √n`` (the paired t-test's interval; ``scipy.stats.ttest_rel``
  tests the same statistic ``t = d̄ / (s_d / √n)``), with a verdict: "<A> better" or
  "<B> better" when the interval excludes 0, "within noise" when it contains 0, and
  "1 seed: no interval" when only one seed is paired.
- :func:`finding_verdict`: the same interval read against a stated finding ("A above B"):
  *reproduced*, *contradicted* or *within noise*.

The t quantile comes from ``scipy.stats.t.ppf`` when scipy is installed; otherwise, for the
95 % level only, from :data:`T_975`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

try:  # scipy is optional (the test extra); the table below covers the 95 % level without it
    from scipy import stats as _scipy_stats
except ImportError:  # pragma: no cover - exercised only where scipy is absent
    _scipy_stats = None

T_975: dict[int, float] = {
    1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060,
    9: 2.2622, 10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314,
    16: 2.1199, 17: 2.1098, 18: 2.1009, 19: 2.0930, 20: 2.0860, 21: 2.0796, 22: 2.0739,
    23: 2.0687, 24: 2.0639, 25: 2.0595, 26: 2.0555, 27: 2.0518, 28: 2.0484, 29: 2.0452,
    30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799,
}
"""Student-t 0.975 quantiles (two-sided 95 %) by degrees of freedom: ``scipy.stats.t.ppf(0.975,
df)`` rounded to 4 decimals, which agree with the critical-value table of the NIST/SEMATECH
e-Handbook of Statistical Methods (section 1.3.6.7.2) to its 3 decimals. Between listed
``df`` the next smaller one is used (a slightly wider, conservative interval); above 120 the
120 entry."""

ONE_SEED = "1 seed: no interval"
WITHIN_NOISE = "within noise"


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile ``t_{(1+level)/2, df}`` of Student's t.

    From scipy when installed; without scipy only ``level = 0.95`` (:data:`T_975`)."""
    df = int(df)
    if df < 1:
        raise ValueError(f"t_quantile: degrees of freedom must be >= 1, got {df}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"t_quantile: level must lie in (0, 1), got {level}")
    if _scipy_stats is not None:
        return float(_scipy_stats.t.ppf(0.5 + level / 2.0, df))
    if abs(level - 0.95) > 1e-12:
        raise ValueError(f"t_quantile: level {level} needs scipy (only 0.95 is tabulated)")
    return T_975[max(k for k in T_975 if k <= df)]


def seed_summary(values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "mean", "std"}`` of one arm's per-seed values; ``std`` is the sample standard
    deviation (``ddof = 1``), ``None`` for a single seed."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("seed_summary: no values")
    n = len(v)
    mean = math.fsum(v) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A paired comparison of arm ``a`` against arm ``b`` (differences ``a − b``)."""

    a: str
    b: str
    metric: str
    seeds: tuple[str, ...]  # the seeds both arms ran, in order
    diffs: tuple[float, ...]  # a_i − b_i per paired seed
    mean: float  # d̄
    std: float | None  # s_d (ddof = 1); None for one seed
    level: float
    df: int | None
    t_quantile: float | None
    low: float | None  # d̄ − t·s_d/√n
    high: float | None
    t_statistic: float | None  # d̄ / (s_d/√n); None when s_d is 0 or one seed
    higher_is_better: bool
    verdict: str

    @property
    def n(self) -> int:
        return len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``seeds`` and ``diffs`` as lists, ``n`` added)."""
        d = dataclasses.asdict(self)
        d["seeds"], d["diffs"], d["n"] = list(self.seeds), list(self.diffs), self.n
        return d


def interval_verdict(low: float | None, high: float | None, a: str, b: str, *,
                     higher_is_better: bool = True) -> str:
    """"<a> better", "<b> better", "within noise" (the interval of ``a − b`` contains 0), or
    "1 seed: no interval" (``low``/``high`` None)."""
    if low is None or high is None:
        return ONE_SEED
    if low <= 0.0 <= high:
        return WITHIN_NOISE
    a_higher = low > 0.0
    return f"{a if a_higher == higher_is_better else b} better"


def paired_comparison(a: Mapping[str, float], b: Mapping[str, float], *, a_label: str = "A",
                      b_label: str = "B", metric: str = "test_top1", level: float = 0.95,
                      higher_is_better: bool = True) -> Comparison:
    """Compare arms ``a`` and ``b`` (``{seed: value}``) over the seeds both have.

    ``d_i = a_i − b_i``; with ``n ≥ 2`` paired seeds the interval is
    ``d̄ ± t_{(1+level)/2, n−1} · s_d / √n``, and the verdict says which arm is better when
    it excludes 0 (``higher_is_better`` tells which direction is better), else "within
    noise"; one paired seed gives "1 seed: no interval". No common seed is a ``ValueError``.
    """
    seeds = tuple(k for k in a if k in b)
    if not seeds:
        raise ValueError(f"paired_comparison: {a_label!r} and {b_label!r} share no seed "
                         f"({sorted(a)} vs {sorted(b)})")
    diffs = tuple(float(a[k]) - float(b[k]) for k in seeds)
    s = seed_summary(diffs)
    n = s["n"]
    if n < 2:
        return Comparison(a_label, b_label, metric, seeds, diffs, s["mean"], None, level, None,
                          None, None, None, None, higher_is_better, ONE_SEED)
    tq = t_quantile(n - 1, level)
    se = s["std"] / math.sqrt(n)
    low, high = s["mean"] - tq * se, s["mean"] + tq * se
    t_stat = s["mean"] / se if se > 0 else None
    return Comparison(a_label, b_label, metric, seeds, diffs, s["mean"], s["std"], level, n - 1,
                      tq, low, high, t_stat, higher_is_better,
                      interval_verdict(low, high, a_label, b_label,
                                       higher_is_better=higher_is_better))


def finding_verdict(comp: Comparison, *, a_above_b: bool) -> str:
    """A stated finding ("``a`` above ``b``" when ``a_above_b``, else below) read against
    ``comp``'s interval: "reproduced" (the interval excludes 0 on the finding's side),
    "contradicted" (on the other side), "within noise", or "1 seed: no interval"."""
    if comp.low is None or comp.high is None:
        return ONE_SEED
    if comp.low <= 0.0 <= comp.high:
        return WITHIN_NOISE
    return "reproduced" if (comp.low > 0.0) == a_above_b else "contradicted"


def describe(comp: Comparison, *, scale: float = 100.0, unit: str = "points") -> str:
    """One line: ``"A vs B: +0.47 points (95 % interval −1.20 to +2.14; paired over 2 seeds):
    within noise"``; values multiplied by ``scale``."""
    head = f"{comp.a} vs {comp.b}: {scale * comp.mean:+.2f} {unit}"
    if comp.low is None or comp.high is None:
        return f"{head} (1 seed): {comp.verdict}"
    pct = f"{100.0 * comp.level:g} %"
    return (f"{head} ({pct} interval {scale * comp.low:+.2f} to {scale * comp.high:+.2f}; "
            f"paired over {comp.n} seeds): {comp.verdict}")
