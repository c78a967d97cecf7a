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


def _table_module(config: Any) -> Any:
    """The config module named by ``config.row_config`` (it holds ``PAPER`` and ``FINDINGS``)."""
    import importlib.util

    from augdiff.config import resolve_path

    path = resolve_path(str(config.row_config).partition(":")[0])
    spec = importlib.util.spec_from_file_location("augdiff_table_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def finding_directions(
    findings: Sequence[tuple[str, str, bool]], results: Mapping[str, Mapping[str, float]]
) -> list[dict[str, Any]]:
    """Each finding ``(text, "a<b", paper_says)``: whether augdiff's Top-1 of row ``a`` is
    below row ``b``'s (``None`` when either row has no result), the gap in points, and
    whether it agrees with the paper."""
    out = []
    for text, expr, paper in findings:
        a, _, b = expr.partition("<")
        ra, rb = results.get(a, {}).get("test_top1"), results.get(b, {}).get("test_top1")
        below = None if ra is None or rb is None else bool(ra < rb)
        out.append(dict(finding=text, rows=(a, b), paper=bool(paper), augdiff=below,
                        gap=None if below is None else 100.0 * (float(rb) - float(ra)),
                        agrees=None if below is None else below == bool(paper)))
    return out


def rows_report(config: Any, info: Mapping[str, Mapping[str, Any]],
                analyses: Mapping[str, Any]) -> str:
    """``<workdir>/report.md`` of a table experiment: the paper-layout table of every row
    (:func:`paper_table`), the direction of each finding (:func:`finding_directions`), wall
    times, and the analyses' figures and numbers. Returns the path."""
    mod = _table_module(config)
    rows = [r for r in getattr(mod, "ROWS", ()) if r in info] or list(info)
    results = {r: i["result"] for r, i in info.items() if i.get("result")}
    title = str(config.get("report", {}).get("title", "") or config.get("name", ""))
    lines = [f"# {title}", "", "## Table (augdiff beside the paper)", "",
             paper_table(rows, mod.PAPER, results), ""]
    aliases = {r: i["alias_of"] for r, i in info.items() if i.get("alias_of")}
    if aliases:
        lines += ["Rows reported with another row's result (same definition): " +
                  ", ".join(f"`{a}` = `{b}`" for a, b in aliases.items()), ""]
    lines += ["## Findings (Top-1; one seed per row unless stated)", "",
              "| finding | paper | augdiff | gap (points, b − a) | agrees |",
              "|---|---|---|---|---|"]
    yn = {True: "yes", False: "no", None: "—"}
    for d in finding_directions(getattr(mod, "FINDINGS", ()), results):
        a, b = d["rows"]
        gap = "—" if d["gap"] is None else f"{d['gap']:+.2f}"
        lines.append(f"| {d['finding']} (`{a}` < `{b}`) | {yn[d['paper']]} | {yn[d['augdiff']]} "
                     f"| {gap} | {yn[d['agrees']]} |")
    lines += ["", "## Rows", "", "| row | stage | seeds | wall s | workdir |",
              "|---|---|---|---|---|"]
    for r in rows:
        i = info[r]
        res = i.get("result", {})
        rel = os.path.relpath(i["workdir"], str(config.workdir))
        lines.append(f"| `{r}` | {res.get('stage', '—')} | {res.get('num_seeds', '—')} | "
                     f"{i.get('seconds', 0):.0f} | `{rel}` |")
    total = sum(float(i.get("seconds", 0)) for r, i in info.items() if not i.get("alias_of"))
    lines += ["", f"Total wall time of the rows' stages: {total:.0f} s.", ""]
    for name, out in analyses.items():
        lines += [f"## Analysis: {name}", ""]
        for line in out.get("report_lines", []):
            lines.append(line)
        lines.append("")
    path = os.path.join(str(config.workdir), "report.md")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
