"""Run fingerprints survive the layout change: a workdir started before it resumes after it.

``fixtures/fingerprints.json`` was written by the code before the package was re-laid
(configs inside the package, ``augdiff.runner`` split into ``augdiff.pipeline``): for every
variant of every experiment config and of the quickstart, the fingerprint of the resolved
experiment config and ``fingerprint(stage_inputs(stage, config, outputs))`` of each of its
stages (for a table experiment, of each row's stages), with fixed stand-in outputs of the
earlier stages. Paths are written relative to the folder that holds the package, so the
snapshot is the same on every machine.

The table experiments' own configs gained the paper's numbers as config fields
(``paper`` for seed 000's tables, ``table2.paper_fid`` for seed 004's Table 2, formerly
module constants read by re-executing the config file); those fields are removed before the
experiment config's own fingerprint is compared (no stage of any run depends on them); so
is ``variant`` (the config's variant, which the report's title names). The quickstart's
``config`` and ``report`` entries were rewritten when its report title stopped being a fixed
string (the report stage is redone whenever its inputs change, so a resumed run loses
nothing). The ``generate`` entries of seeds 001 and 003 were rewritten when their model block
gained ``variant`` and ``config`` (weights variants, single-file checkpoints): a store written
before then has no generating-config fingerprint and is regenerated in any case. Seed 000's
and 004's entries changed with their protocols (equal epoch budgets, first-n subsets;
the ``_reduced`` Table 2 variants again when they gained three seeds). The Diffusion
Inversion analog (``exp_seed003_edm_analog``) was added after the layout change, with its own
entries.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import pytest

from augdiff.config import PACKAGE_PARENT, load_config, parse_list, to_dict
from augdiff.pipeline.book import fingerprint
from augdiff.pipeline.rows import row_config
from augdiff.pipeline.wiring import resolve_config, seeds_of, stage_inputs, stage_list

SNAPSHOT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "fingerprints.json"
WORKDIR = "/fingerprint-run"
ADDED_FIELDS = (("paper",), ("table2", "paper_fid"), ("variant",))


def normalise(obj: Any) -> Any:
    """``obj`` as JSON with the package's folder and its parent written as placeholders."""
    text = json.dumps(obj, sort_keys=True, default=str)
    parent = os.path.dirname(PACKAGE_PARENT)
    text = text.replace(PACKAGE_PARENT, "<repo>").replace(parent, "<parent>")
    return json.loads(text)


def stand_in_outputs(config) -> dict[str, Any]:
    wd = str(config.workdir)
    seeds = seeds_of(config)
    return {
        "prepare": {"num_train": 1000, "num_classes": 10},
        "generate": {"num_images": 500, "store": os.path.join(wd, "generate", "store")},
        "train_real": {"seeds": {f"seed_{s}": {"checkpoints": os.path.join(
            wd, "train_real", f"seed_{s}", "checkpoints")} for s in seeds}},
    }


def stage_fingerprints(config) -> dict[str, str]:
    outputs = stand_in_outputs(config)
    return {stage: fingerprint(normalise(stage_inputs(stage, config, outputs)))
            for stage in stage_list(config)}


def config_fingerprint(config) -> str:
    d = to_dict(config)
    for path in ADDED_FIELDS:
        node = d
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return fingerprint(normalise(d))


def snapshot(spec: str) -> dict[str, Any]:
    cfg = load_config(spec)
    with cfg.unlocked():
        cfg.workdir = WORKDIR
    cfg = resolve_config(cfg)
    rec: dict[str, Any] = {"config": config_fingerprint(cfg)}
    kind = str(cfg.get("experiment", ""))
    if kind == "rows":
        done: dict[str, str] = {}
        for row in parse_list(cfg.rows):
            sub = resolve_config(row_config(cfg, row, done))
            rec[f"row:{row}"] = {"config": config_fingerprint(sub), **stage_fingerprints(sub)}
            done[row] = str(sub.workdir)
    elif kind == "casd_mismatch":
        t = cfg.table2
        rec["edm_config"] = fingerprint(normalise(to_dict(load_config(str(t.edm_config)))))
        rec["classifier_config"] = fingerprint(normalise(to_dict(load_config(
            str(t.classifier_config)))))
    else:
        rec.update(stage_fingerprints(cfg))
    return rec


EXPECTED = json.loads(SNAPSHOT.read_text())


def test_the_snapshot_covers_every_experiment_config():
    shipped = {p.name for p in (pathlib.Path(PACKAGE_PARENT) / "augdiff" / "configs").glob(
        "exp_*.py")} | {"quickstart.py"}
    covered = {spec.partition(":")[0].rpartition("/")[2] for spec in EXPECTED}
    assert shipped <= covered, shipped - covered
    assert len(EXPECTED) == 53


@pytest.mark.parametrize("spec", sorted(EXPECTED))
def test_fingerprints_equal_before_and_after_the_layout_change(spec):
    assert snapshot(spec) == EXPECTED[spec]
