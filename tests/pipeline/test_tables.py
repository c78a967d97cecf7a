"""A table experiment's report states each finding with its paired interval over seeds and a
verdict on the paper's claim, and writes results.json / results.csv (fake rows, no run)."""

from __future__ import annotations

import csv
import json
import math

import ml_collections
import numpy as np
import pytest

from augdiff.pipeline.tables import rows_report

SEEDS = {"baseline": [0.60, 0.62, 0.58], "vanilla": [0.61, 0.60, 0.60],
         "shb": [0.70, 0.71, 0.73], "random": [0.55]}
# t_{0.975, 2} in closed form (Student's t, 2 degrees of freedom)
T2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))


def _config(workdir):
    c = ml_collections.ConfigDict()
    c.name, c.workdir = "table", str(workdir)
    c.report = ml_collections.ConfigDict({"title": "Seed 000 Tables 1-2 (test)"})
    c.paper = ml_collections.ConfigDict()
    c.paper.table = (("baseline", "Baseline", "Con", "0.0", "1.00", 68.63, 87.92),
                     ("vanilla", "Vanilla", "—", "—", "—", 75.35, 91.66),
                     ("shb", "SHB", "Con", "0.0", "1.00", 69.50, 87.99),
                     ("random", "Random", "Con", "0.0", "1.00", 60.0, 80.0))
    c.paper.findings = (("DC falls below vanilla", "baseline<vanilla", True),
                        ("SHB beats DC", "baseline<shb", True),
                        ("SHB falls below DC", "shb<baseline", True),
                        ("random falls below DC", "random<baseline", True))
    return c


def _info(workdir):
    info = {}
    for row, v in SEEDS.items():
        info[row] = {"workdir": str(workdir / row), "seconds": 1.0, "result": {
            "test_top1": float(np.mean(v)), "test_top5": 0.9, "num_seeds": len(v),
            "test_top1_std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "stage": "train_mixed",
            "seeds": {f"seed_{i}": x for i, x in enumerate(v)}}}
    return info


def test_findings_with_intervals_and_verdicts(tmp_path):
    path = rows_report(_config(tmp_path), _info(tmp_path), {})
    text = open(path).read()
    line = next(ln for ln in text.splitlines() if ln.startswith("| DC falls below vanilla"))
    # b − a = vanilla − baseline = (0.01, −0.02, 0.02): mean 0.0033, interval contains 0
    assert line.endswith("| 3 | **within noise** |")
    line = next(ln for ln in text.splitlines() if ln.startswith("| SHB beats DC"))
    assert line.endswith("| 3 | **reproduced** |")
    line = next(ln for ln in text.splitlines() if ln.startswith("| SHB falls below DC"))
    assert line.endswith("| 3 | **contradicted** |")
    line = next(ln for ln in text.splitlines() if ln.startswith("| random falls below DC"))
    assert line.endswith("| — | 1 | **1 seed: no interval** |")
    assert "| Baseline | Con | 0.0 | 1.00 | 68.63 | 60.00 ± 2.00 (n = 3) |" in text

    res = json.loads((tmp_path / "results.json").read_text())
    assert res["rows"]["shb"]["seeds"] == {"seed_0": 0.70, "seed_1": 0.71, "seed_2": 0.73}
    f = res["findings"][0]
    d = np.subtract(SEEDS["vanilla"], SEEDS["baseline"])
    half = T2 * d.std(ddof=1) / math.sqrt(3)
    c = f["comparison"]
    assert c["mean"] == pytest.approx(d.mean())
    assert (c["low"], c["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert f["verdict"] == "within noise"
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["name"], r["seed"]): float(r["value"]) for r in rows
            if r["section"] == "seed"}[("baseline", "seed_1")] == 0.62
    fr = [r for r in rows if r["section"] == "finding"]
    assert [r["verdict"] for r in fr] == ["within noise", "reproduced", "contradicted",
                                          "1 seed: no interval"]
