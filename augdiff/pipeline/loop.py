"""The resumable stage loop of ``augdiff run``.

A ``done`` stage is skipped ("skipping <stage>: done") when the run is started again; a stage
that was killed midway is started again and resumes through its own resume (EDM and
classifier training restore their latest orbax checkpoint, generation skips the store keys
already written). A stage whose inputs changed since it ran is an error naming the fields
(the cheap ``prepare`` and ``report`` stages are redone instead);
``--config.rerun=stage[,stage]`` starts those stages (and every later one) over. Adding seeds
to ``config.seeds`` trains only the new seeds.

Multi-process runs: every process runs every stage (the library functions split the work);
process 0 alone writes ``stages.json``, ``config.json`` and the report, so the workdir must be
on a file system all processes share.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from augdiff.config import ConfigError, parse_list, to_dict
from augdiff.files import read_json, write_json
from augdiff.pipeline.book import (
    StageBook,
    Units,
    changed_fields,
    fingerprint,
    is_main,
    json_roundtrip,
)
from augdiff.pipeline.stages import STAGE_FUNCTIONS
from augdiff.pipeline.wiring import (
    TRAIN_STAGES,
    resolve_config,
    seeds_of,
    stage_dir,
    stage_inputs,
    validate_stages,
)

_CHEAP = ("prepare", "report")


def run_stages(
    config: ml_collections.ConfigDict,
    *,
    stage_functions: Mapping[str, Callable[..., dict[str, Any]]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run the stages of ``config`` that are not done yet; returns every stage's outputs.

    ``stage_functions`` replaces entries of :data:`augdiff.pipeline.stages.STAGE_FUNCTIONS`
    (tests count calls).
    """
    config = resolve_config(config)
    stages = validate_stages(config)
    fns = {**STAGE_FUNCTIONS, **(stage_functions or {})}
    workdir = str(config.workdir)
    main = is_main()
    os.makedirs(workdir, exist_ok=True)
    book = StageBook(workdir, writer=main)
    resolved = to_dict(config)
    cfg_path = os.path.join(workdir, "config.json")
    if main and (not os.path.exists(cfg_path) or read_json(cfg_path) != resolved):
        write_json(cfg_path, resolved)

    rerun = parse_list(config.get("rerun", ""))
    bad = [s for s in rerun if s not in stages]
    if bad:
        raise ConfigError(f"config.rerun: {bad} not among config.stages {stages}")
    if rerun:
        first = min(stages.index(s) for s in rerun)
        for s in stages[first:]:
            if book.get(s) is not None or os.path.isdir(stage_dir(config, s)):
                log(f"rerun: starting {s} over")
                book.forget(s)
                if main:  # stage dirs always lie inside the workdir
                    shutil.rmtree(stage_dir(config, s), ignore_errors=True)

    outputs: dict[str, dict[str, Any]] = {}
    ran_any = False
    for stage in stages:
        inputs = stage_inputs(stage, config, outputs)
        fp = fingerprint(inputs)
        rec = book.get(stage)
        fields = (changed_fields(rec.get("inputs", {}), json_roundtrip(inputs))
                  if rec is not None and rec.get("fingerprint") != fp else [])
        if fields:
            if stage in _CHEAP:
                log(f"redoing {stage}: its inputs changed ({', '.join(fields[:6])})")
                rec = None
            else:
                raise ConfigError(
                    f"stage {stage} in {workdir} was run with a different config (fields: "
                    f"{', '.join(fields[:12]) or 'unknown'}); use a new workdir or "
                    f"--config.rerun={stage}")
        complete = rec is not None and rec.get("status") == "done"
        if complete and stage in TRAIN_STAGES:
            missing = [s for s in seeds_of(config) if f"seed_{s}" not in rec.get("units", {})]
            complete = not missing
        if complete and stage == "report" and ran_any:
            complete = False
        if complete:
            log(f"skipping {stage}: done")
            outputs[stage] = rec["outputs"]
            continue
        log(f"{'resuming' if rec is not None else 'running'} {stage}")
        book.start(stage, fp, json_roundtrip(inputs))
        t0 = time.time()
        out = fns[stage](config, outputs, Units(book, stage, log))
        outputs[stage] = json_roundtrip(out)
        book.finish(stage, outputs[stage], time.time() - t0)
        ran_any = True
        log(f"finished {stage} in {time.time() - t0:.1f} s")
    return outputs
