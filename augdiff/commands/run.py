r"""``augdiff run``: every stage of an experiment, resumable, ending in ``workdir/report.md``.

    augdiff run --config configs/quickstart.py[:variant] [--config.workdir=DIR] \
        [--config.rerun=stage,...]

Started again on the same workdir it skips the finished stages ("skipping <stage>: done") and
resumes a stage that was killed midway (see :mod:`augdiff.pipeline.loop`).
"""

from __future__ import annotations

import os
import sys

import jax
import ml_collections

from augdiff.config import ConfigError
from augdiff.data.store import StoreError
from augdiff.files import locked, workdir_of
from augdiff.pipeline.run import run_experiment


@locked(workdir_of)
def main(config: ml_collections.ConfigDict) -> int:
    def log(msg: str) -> None:
        if jax.process_index() == 0:
            print(f"augdiff run: {msg}", flush=True)

    try:
        outputs = run_experiment(config, log=log)
    except (ConfigError, FileNotFoundError, StoreError, ValueError) as e:
        print(f"augdiff run: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    report = outputs.get("report", {}).get("report")
    if report:
        log(f"report: {os.path.relpath(report)}")
    return 0
