"""``augdiff run``: an experiment config in, its outputs and ``report.md`` out.

``config.experiment`` names the kind of experiment (:data:`EXPERIMENTS`):

- ``stages`` (the default): the resumable stages of :mod:`augdiff.pipeline.stages`, wired by
  :mod:`augdiff.pipeline.wiring`, run by :func:`augdiff.pipeline.loop.run_stages`;
- ``rows``: every row of a paper's table as a stage experiment of its own, then the table's
  analyses and report (:func:`augdiff.pipeline.rows.run_rows`);
- ``casd_mismatch``: seed 004's Table 2 (:func:`augdiff.pipeline.mismatch.run_mismatch`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from augdiff.config import ConfigError
from augdiff.pipeline.loop import run_stages
from augdiff.pipeline.mismatch import run_mismatch
from augdiff.pipeline.rows import run_rows
from augdiff.pipeline.wiring import resolve_config

EXPERIMENTS: dict[str, Callable[..., dict[str, Any]]] = {
    "stages": run_stages,
    "rows": run_rows,
    "casd_mismatch": run_mismatch,
}


def run_experiment(
    config: ml_collections.ConfigDict,
    *,
    stage_functions: Mapping[str, Callable[..., dict[str, Any]]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the experiment ``config`` describes, resuming what is done; returns its outputs:
    ``{stage: outputs}`` for a stage experiment, ``{kind: result}`` for the others.

    ``stage_functions`` replaces stage functions of a stage experiment (tests count calls).
    """
    kind = str(config.get("experiment", "") or "stages")
    if kind not in EXPERIMENTS:
        raise ConfigError(f"config.experiment: unknown kind {kind!r}; known: "
                          f"{sorted(EXPERIMENTS)}")
    if kind == "stages":
        return run_stages(config, stage_functions=stage_functions, log=log)
    return {kind: EXPERIMENTS[kind](resolve_config(config), log=log)}
