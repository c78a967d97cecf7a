"""Result tables in a paper's layout, augdiff's numbers beside the paper's.

:func:`paper_table` writes seed 000 Tables 1-2 as Markdown: ``Method | Sch. | Ratio | Lsf |
Top-1 paper | Top-1 augdiff | Top-5 paper | Top-5 augdiff`` (the paper's columns, each metric
twice), one line per row in the order given; a row augdiff has not run shows ``—``. The paper's
numbers and findings are fields of the table experiment's config (``config.paper``).
:func:`rows_report` is the report of a table experiment (:mod:`augdiff.pipeline.rows`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from augdiff.files import atomic_write

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


def paper_rows(config: Any) -> dict[str, PaperRow]:
    """``config.paper.table`` (rows ``(row, Method, Sch., Ratio, Lsf, Top-1, Top-5)``, the
    paper's numbers as config fields) as ``{row: (Method, Sch., Ratio, Lsf, Top-1, Top-5)}`` in
    the paper's order."""
    return {str(r[0]): tuple(r[1:]) for r in config.paper.table}


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
    paper = paper_rows(config)
    rows = [r for r in paper if r in info] or list(info)
    results = {r: i["result"] for r, i in info.items() if i.get("result")}
    title = str(config.get("report", {}).get("title", "") or config.get("name", ""))
    lines = [f"# {title}", "", "## Table (augdiff beside the paper)", "",
             paper_table(rows, paper, results), ""]
    aliases = {r: i["alias_of"] for r, i in info.items() if i.get("alias_of")}
    if aliases:
        lines += ["Rows reported with another row's result (same definition): " +
                  ", ".join(f"`{a}` = `{b}`" for a, b in aliases.items()), ""]
    lines += ["## Findings (Top-1; one seed per row unless stated)", "",
              "| finding | paper | augdiff | gap (points, b − a) | agrees |",
              "|---|---|---|---|---|"]
    yn = {True: "yes", False: "no", None: "—"}
    findings = [(str(t), str(e), bool(p)) for t, e, p in config.paper.get("findings", ())]
    for d in finding_directions(findings, results):
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
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def table2_report(out: dict[str, Any]) -> str:
    """``report.md`` of seed 004's Table 2 experiment (:mod:`augdiff.pipeline.mismatch`):
    Table 2, augdiff's FID beside the paper's (``out['paper']``, from ``table2.paper_fid``),
    and the Fig. 3 shares, as markdown."""
    cases, r = out["cases"], out["results"]
    lines = ["# Seed 004 Table 2: synthetic support mismatch", "",
             f"FID reference: {out['fid_reference']}; features: {out['extractor']}; "
             f"classifier test top-1 {out['classifier_test_top1']:.3f}.", "",
             "| Method | " + " | ".join(f"{c} augdiff (paper)" for c in cases) + " |",
             "|---|" + "---|" * len(cases)]
    for m in ("dm", "sda", "casd"):
        cells = []
        for c in cases:
            key = "dm" if m == "dm" else f"{m}_{c}"
            cells.append(f"{r[key]['fid']:.2f} ({out['paper'][m][c]:.2f})")
        lines.append(f"| {m.upper()} | " + " | ".join(cells) + " |")
    lines += ["", "Fig. 3: share of samples the real-data classifier puts in ship+truck "
              "(absent from D_r) / plane+car:", "",
              "| Run | ship+truck | plane+car | n |", "|---|---|---|---|",
              f"| real reference | {out['real_hist']['ship'] + out['real_hist']['truck']:.3f} | "
              f"{out['real_hist']['airplane'] + out['real_hist']['automobile']:.3f} | |"]
    for k, v in r.items():
        lines.append(f"| {k} | {v['ship_truck']:.3f} | {v['plane_car']:.3f} | {v['n']} |")
    lines += ["", f"Wall time: {out['wall_s'] / 60:.1f} min.", ""]
    return "\n".join(lines)
