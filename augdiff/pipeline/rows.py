"""Table experiments (``config.experiment = 'rows'``): every row of a paper's table as an
experiment of its own, then the table-level analyses and the table's report.

Row ``r`` is ``config.row_config`` with ``{row}`` filled in, run by the stage loop
(:func:`augdiff.pipeline.loop.run_stages`) in ``<workdir>/<r>`` and resumed through its own
``stages.json``. Analyses (``config.analyses``) are called once each as
``fn(config, rows, log)``, ``rows = {row: {"workdir", "outputs", "result", ...,
"generate_config"}}``; the result is kept in ``<workdir>/analyses/<name>.json`` (delete it to
redo).
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from augdiff.analysis.fig3 import run_fig3
from augdiff.analysis.shb_measure import run_shb_measure
from augdiff.config import ConfigError, load_config, parse_list, set_field
from augdiff.files import read_json, write_json
from augdiff.pipeline.book import StageBook, is_main, json_roundtrip
from augdiff.pipeline.loop import run_stages
from augdiff.pipeline.tables import rows_report
from augdiff.pipeline.wiring import method_config

ANALYSES: dict[str, Callable[..., dict[str, Any]]] = {
    "fig3": run_fig3,
    "shb_measure": run_shb_measure,
}
"""Table-level analyses by name (``config.analyses``)."""

def row_config(config: ml_collections.ConfigDict, row: str,
               done: Mapping[str, str]) -> ml_collections.ConfigDict:
    """The experiment config of ``row`` in a table experiment (``config.experiment='rows'``):
    ``config.row_config`` with ``{row}`` filled in, workdir ``<workdir>/<row>``, the table's
    ``data`` / ``seeds`` / ``mesh`` copied in, and every ``config.links`` entry
    ``field=src_row:relpath`` set to ``<workdir>/<src_row>/<relpath>`` (rows other than
    ``src_row``, which must have run before: ``done`` maps finished rows to workdirs). An
    entry ``a|b>field=src_row:relpath`` applies to rows ``a`` and ``b`` only."""
    sub = load_config(str(config.row_config).format(row=row))
    with sub.unlocked():
        sub.workdir = os.path.join(str(config.workdir), row)
    for key in config.data.keys():
        if key in sub.data:
            set_field(sub, f"data.{key}", copy.deepcopy(config.data[key]))
    for key in ("seeds", "seed"):
        if key in config and key in sub:
            sub[key] = copy.deepcopy(config[key])
    if "mesh" in config and "mesh" in sub:
        for key in config.mesh.keys():
            if key in sub.mesh:
                set_field(sub, f"mesh.{key}", config.mesh[key])
    for link in parse_list(config.get("links", "")):
        targets, restricted, link = link.rpartition(">")
        if restricted and row not in [t.strip() for t in targets.split("|")]:
            continue
        field, _, target = link.partition("=")
        src, _, rel = target.partition(":")
        if not field or not src or not rel:
            raise ConfigError(f"config.links: {link!r} must read field=row:relative/path")
        if src == row:
            continue
        if src not in done:
            raise ConfigError(f"config.links: row {row!r} needs row {src!r} first; list it "
                              "earlier in config.rows")
        set_field(sub, field.strip(), os.path.join(done[src], rel))
    return sub


def row_result(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Top-1 / top-5 (seed means, fractions) of a row: its ``train_mixed`` stage, else
    ``train_real``, else ``train_synthetic``; ``seeds`` holds each seed's top-1 (the paired
    comparisons of the findings read them)."""
    for stage in ("train_mixed", "train_real", "train_synthetic"):
        if stage in outputs:
            o = outputs[stage]
            return {"test_top1": o["test_top1_mean"], "test_top5": o["test_top5_mean"],
                    "test_top1_std": o.get("test_top1_std", 0.0), "stage": stage,
                    "num_seeds": o.get("num_seeds", 1),
                    "seeds": {k: float(u["test_top1"]) for k, u in o.get("seeds", {}).items()}}
    return {}


def run_rows(config: ml_collections.ConfigDict, *,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every row of ``config.rows`` (each an ``augdiff run`` of its own in
    ``<workdir>/<row>``, resumed through its ``stages.json``), the ``config.analyses``, then
    write ``<workdir>/report.md`` (:func:`augdiff.pipeline.tables.rows_report`).

    ``config.aliases`` names rows reported with another row's result (same definition, not
    trained twice); ``config.rerun_rows`` starts rows over (their workdirs are removed).
    """
    workdir = str(config.workdir)
    os.makedirs(workdir, exist_ok=True)
    rows = parse_list(config.rows)
    if not rows:
        raise ConfigError("config.rows is empty")
    for row in parse_list(config.get("rerun_rows", "")):
        if row not in rows:
            raise ConfigError(f"config.rerun_rows: {row!r} is not among config.rows")
        if is_main():
            log(f"rerun: starting row {row} over")
            shutil.rmtree(os.path.join(workdir, row), ignore_errors=True)
    done: dict[str, str] = {}
    info: dict[str, Any] = {}
    for row in rows:
        sub = row_config(config, row, done)
        log(f"== row {row} ({sub.name})")
        t0 = time.time()
        outputs = run_stages(sub, log=lambda m, r=row: log(f"[{r}] {m}"))
        book = StageBook(str(sub.workdir), writer=False)
        seconds = sum(float(v.get("seconds", 0.0)) for v in book.stages.values())
        info[row] = {"workdir": str(sub.workdir), "outputs": outputs,
                     "result": row_result(outputs), "seconds": round(seconds, 1),
                     "this_call_s": round(time.time() - t0, 1)}
        done[row] = str(sub.workdir)
        if is_main():
            write_json(os.path.join(workdir, "rows.json"),
                        {r: {k: v for k, v in i.items() if k != "outputs"}
                         for r, i in info.items()})
    for alias, target in (config.get("aliases", None) or {}).items():
        if target in info:
            info[alias] = {**info[target], "alias_of": target}
    # The analyses read each row's stores with the generation config that made them.
    analysis_rows = {r: {**i, "generate_config": _generate_config(i["workdir"])}
                     for r, i in info.items()}
    analyses: dict[str, Any] = {}
    for name in parse_list(config.get("analyses", "")):
        if name not in ANALYSES:
            raise ConfigError(f"config.analyses: unknown analysis {name!r}; known: "
                              f"{sorted(ANALYSES)}")
        path = os.path.join(workdir, "analyses", f"{name}.json")
        if os.path.exists(path):
            log(f"skipping analysis {name}: done")
            analyses[name] = read_json(path)
            continue
        log(f"running analysis {name}")
        t0 = time.time()
        out = ANALYSES[name](config, analysis_rows, log)
        out = {**json_roundtrip(out), "seconds": round(time.time() - t0, 1)}
        if is_main():
            write_json(path, out)
        analyses[name] = out
    report = rows_report(config, info, analyses) if is_main() else ""
    return {"rows": {r: {k: v for k, v in i.items() if k != "outputs"} for r, i in info.items()},
            "analyses": analyses, "report": report}



def _generate_config(row_workdir: str) -> ml_collections.ConfigDict | None:
    """The derived generation config of a row whose generator is a method, rebuilt from the
    row's resolved experiment config (``<row>/config.json``); None for other rows."""
    path = os.path.join(row_workdir, "config.json")
    if not os.path.exists(path):
        return None
    cfg = ml_collections.ConfigDict(read_json(path))
    gen = cfg.get("generator", None)
    if gen is None or str(gen.get("kind", "")) != "method":
        return None
    return method_config(cfg)
