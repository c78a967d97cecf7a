"""Result tables in a paper's layout, augdiff's numbers beside the paper's.

:func:`paper_table` writes seed 000 Tables 1-2 as Markdown: ``Method | Sch. | Ratio | Lsf |
Top-1 paper | Top-1 augdiff | Top-5 paper | Top-5 augdiff`` (the paper's columns, each metric
twice), one line per row in the order given; a row augdiff has not run shows ``—``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

PaperRow = tuple[str, str, str, str, float | None, float | None]


def _pct(v: float | None, scale: float) -> str:
    return "—" if v is None else f"{float(v) * scale:.2f}"


def paper_table(
    rows: Sequence[str],
    paper: Mapping[str, PaperRow],
    results: Mapping[str, Mapping[str, float]],
    *,
    result_scale: float = 100.0,
) -> str:
    """A Markdown table of ``rows``: the paper's ``(Method, Sch., Ratio, Lsf, Top-1, Top-5)``
    from ``paper`` beside augdiff's ``results[row]['test_top1' / 'test_top5']`` (fractions,
    multiplied by ``result_scale``)."""
    head = ("| Method | Sch. | Ratio | Lsf | Top-1 paper | Top-1 augdiff | Top-5 paper "
            "| Top-5 augdiff | row |")
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        if row not in paper:
            raise KeyError(f"paper_table: row {row!r} has no entry in the paper's table")
        method, sch, ratio, lsf, t1, t5 = paper[row]
        r = results.get(row, {})
        lines.append(
            f"| {method} | {sch} | {ratio} | {lsf} | {_pct(t1, 1.0)} | "
            f"{_pct(r.get('test_top1'), result_scale)} | {_pct(t5, 1.0)} | "
            f"{_pct(r.get('test_top5'), result_scale)} | `{row}` |"
        )
    return "\n".join(lines) + "\n"


def collect_metrics(root: str, rows: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{row: metrics}`` from ``<root>/<row>/metrics.json`` of finished ``augdiff train`` runs
    (rows without a final ``test_top1`` are left out)."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        path = os.path.join(root, row, "metrics.json")
        try:
            with open(path) as f:
                m = json.load(f)
        except (OSError, ValueError):
            continue
        if "test_top1" in m:
            out[row] = m
    return out
