"""Result tables in a paper's layout, augdiff's numbers beside the paper's.

:func:`paper_table` writes seed 000 Tables 1-2 as Markdown: ``Method | Sch. | Ratio | Lsf |
Top-1 paper | Top-1 augdiff | Top-5 paper | Top-5 augdiff`` (the paper's columns, each metric
twice), one line per row in the order given; a row augdiff has not run shows ``—``. The paper's
numbers and findings are fields of the table experiment's config (``config.paper``); with
several seeds augdiff's Top-1 reads ``mean ± std (n = k)``.
:func:`rows_report` is the report of a table experiment (:mod:`augdiff.pipeline.rows`): the
table, each finding's paired difference over seeds with its 95 % interval and a verdict on
the paper's claim (*reproduced*, *contradicted*, *within noise*;
:func:`finding_comparisons`), and ``results.json`` / ``results.csv`` with every number.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from augdiff.analysis.compare import describe, finding_verdict, paired_comparison
from augdiff.files import atomic_write, write_json
from augdiff.pipeline.report import RESULTS_FORMAT, write_csv

PaperRow = tuple[str, str, str, str, float | None, float | None]


def _pct(v: float | None, scale: float) -> str:
    return "—" if v is None else f"{float(v) * scale:.2f}"


def paper_table(
    rows: Sequence[str],
    paper: Mapping[str, PaperRow],
    results: Mapping[str, Mapping[str, float]],
    *,
    result_scale: float = 100.0,
    columns: Sequence[str] = ("Method", "Sch.", "Ratio", "Lsf"),
) -> str:
    """A Markdown table of ``rows``: the paper's ``(Method, Sch., Ratio, Lsf, Top-1, Top-5)``
    from ``paper`` beside augdiff's ``results[row]['test_top1' / 'test_top5']`` (fractions,
    multiplied by ``result_scale``). ``columns`` names the four descriptive columns (seed
    000's by default)."""
    if len(columns) != 4:
        raise ValueError(f"paper_table: columns must name 4 columns, got {list(columns)}")
    head = ("| " + " | ".join(columns) + " | Top-1 paper | Top-1 augdiff | Top-5 paper "
            "| Top-5 augdiff | row |")
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        if row not in paper:
            raise KeyError(f"paper_table: row {row!r} has no entry in the paper's table")
        method, sch, ratio, lsf, t1, t5 = paper[row]
        r = results.get(row, {})
        top1 = _pct(r.get("test_top1"), result_scale)
        n = int(r.get("num_seeds", 1) or 1)
        if n > 1 and r.get("test_top1_std") is not None:
            top1 += f" ± {_pct(r['test_top1_std'], result_scale)} (n = {n})"
        lines.append(
            f"| {method} | {sch} | {ratio} | {lsf} | {_pct(t1, 1.0)} | "
            f"{top1} | {_pct(t5, 1.0)} | "
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


def finding_comparisons(
    findings: Sequence[tuple[str, str, bool]], results: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Each finding ``(text, "a<b", paper_says)`` read against the seeds: the paired
    difference ``b − a`` of Top-1 over the seeds both rows ran, its 95 % t interval
    (:func:`augdiff.analysis.compare.paired_comparison`) and the verdict on the paper's claim
    (``b`` above ``a`` when ``paper_says``, else not): *reproduced*, *contradicted*, *within
    noise* or "1 seed: no interval"; ``None`` fields when a row has no per-seed result."""
    out = []
    for text, expr, paper in findings:
        a, _, b = expr.partition("<")
        sa, sb = (results.get(r, {}).get("seeds") or {} for r in (a, b))
        rec: dict[str, Any] = {"finding": text, "rows": [a, b], "paper": bool(paper),
                               "comparison": None, "verdict": None, "text": None}
        if sa and sb and set(sa) & set(sb):
            comp = paired_comparison(sb, sa, a_label=b, b_label=a)
            rec.update(comparison=comp.to_dict(), text=describe(comp),
                       verdict=finding_verdict(comp, a_above_b=bool(paper)))
        out.append(rec)
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
             paper_table(rows, paper, results, columns=tuple(
                 config.paper.get("columns", None) or ("Method", "Sch.", "Ratio", "Lsf"))), ""]
    aliases = {r: i["alias_of"] for r, i in info.items() if i.get("alias_of")}
    if aliases:
        lines += ["Rows reported with another row's result (same definition): " +
                  ", ".join(f"`{a}` = `{b}`" for a, b in aliases.items()), ""]
    lines += ["## Findings (Top-1, paired by seed)", "",
              "Gap: Top-1 of row b minus row a (points), mean over the seeds both rows ran, "
              "with its 95 % Student-t interval. *Reproduced* / *contradicted*: the interval "
              "lies on the paper's / the other side of 0; *within noise*: it contains 0.", "",
              "| finding | paper | gap (points, b − a) | 95 % interval | seeds | verdict |",
              "|---|---|---|---|---|---|"]
    yn = {True: "yes", False: "no", None: "—"}
    findings = [(str(t), str(e), bool(p)) for t, e, p in config.paper.get("findings", ())]
    verdicts = finding_comparisons(findings, results)
    for d, v in zip(finding_directions(findings, results), verdicts, strict=True):
        a, b = d["rows"]
        gap = "—" if d["gap"] is None else f"{d['gap']:+.2f}"
        c = v["comparison"]
        ci = ("—" if c is None or c["low"] is None
              else f"{100 * c['low']:+.2f} to {100 * c['high']:+.2f}")
        lines.append(f"| {d['finding']} (`{a}` < `{b}`) | {yn[d['paper']]} | {gap} | {ci} | "
                     f"{c['n'] if c else '—'} | **{v['verdict'] or 'no result'}** |")
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
    lines += ["Every number above, with each row's per-seed Top-1 and the findings' "
              "intervals: [`results.json`](results.json), [`results.csv`](results.csv).", ""]
    write_rows_results(str(config.workdir), title, info, verdicts)
    path = os.path.join(str(config.workdir), "report.md")
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def write_rows_results(workdir: str, title: str, info: Mapping[str, Mapping[str, Any]],
                       findings: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """``results.json`` / ``results.csv`` of a table experiment: every row's result (seed
    means and per-seed Top-1, fractions) and every finding's comparison and verdict."""
    rows = {r: {**i.get("result", {}), "alias_of": i.get("alias_of"),
                "seconds": i.get("seconds")} for r, i in info.items()}
    results = {"format": RESULTS_FORMAT, "title": title, "rows": rows,
               "findings": list(findings),
               "units": "accuracies and differences are fractions in [0, 1]"}
    csv_rows: list[dict[str, Any]] = []
    for r, res in rows.items():
        for key, v in (res.get("seeds") or {}).items():
            csv_rows.append({"section": "seed", "name": r, "seed": key, "metric": "test_top1",
                             "value": v})
        for m in ("test_top1", "test_top5", "test_top1_std"):
            if m in res:
                csv_rows.append({"section": "row", "name": r, "metric": m, "value": res[m],
                                 "n": res.get("num_seeds")})
    for f in findings:
        c = f["comparison"] or {}
        csv_rows.append({"section": "finding", "name": f["finding"],
                         "metric": f"test_top1[{f['rows'][1]}] - test_top1[{f['rows'][0]}]",
                         "value": c.get("mean"), "n": c.get("n"), "low": c.get("low"),
                         "high": c.get("high"), "verdict": f["verdict"]})
    jpath, cpath = os.path.join(workdir, "results.json"), os.path.join(workdir, "results.csv")
    write_json(jpath, results)
    write_csv(cpath, csv_rows)
    return jpath, cpath


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
            n = int(r[key].get("num_seeds", 1))
            spread = f" ± {r[key]['fid_std']:.2f}" if n > 1 else ""
            cells.append(f"{r[key]['fid']:.2f}{spread} ({out['paper'][m][c]:.2f})")
        lines.append(f"| {m.upper()} | " + " | ".join(cells) + " |")
    seeds = out.get("seeds") or []
    if len(seeds) > 1:
        lines += ["", f"augdiff: mean ± sample std over seeds {', '.join(map(str, seeds))} "
                  "(DM / SDA / CASD trained and sampled per seed; each case's synthetic source, "
                  "its generator, trained once)."]
    if out.get("findings"):
        lines += ["", "Seed 004's claims, paired by seed (difference: the other model's FID "
                  "minus CASD's, with its 95 % Student-t interval):", "",
                  "| case | claim | difference | verdict |", "|---|---|---|---|"]
        lines += [f"| {f['case']} | {f['claim']} | {f['text']} | **{f['verdict']}** |"
                  for f in out["findings"]]
    lines += ["", "Fig. 3: share of samples the real-data classifier puts in ship+truck "
              "(absent from D_r) / plane+car:", "",
              "| Run | ship+truck | plane+car | n |", "|---|---|---|---|",
              f"| real reference | {out['real_hist']['ship'] + out['real_hist']['truck']:.3f} | "
              f"{out['real_hist']['airplane'] + out['real_hist']['automobile']:.3f} | |"]
    for k, v in r.items():
        lines.append(f"| {k} | {v['ship_truck']:.3f} | {v['plane_car']:.3f} | {v['n']} |")
    lines += ["", f"Wall time: {out['wall_s'] / 60:.1f} min.", ""]
    return "\n".join(lines)
