"""The bookkeeping of a run: ``<workdir>/stages.json`` and the fingerprints in it.

``stages.json`` (written atomically by process 0 only) records every stage: ``status``
(``running`` or ``done``), start / finish times, wall seconds, attempts, a fingerprint of what
the stage depends on (:func:`augdiff.pipeline.wiring.stage_inputs`), the inputs themselves
(so a change can be named field by field, :func:`changed_fields`), its ``outputs`` and, for
per-seed stages, the finished ``units``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import jax

from augdiff.config import ConfigError, config_diff
from augdiff.files import write_json

STAGES_FILE = "stages.json"


FORMAT = "augdiff-stages/1"


_VOLATILE = ("progress", "log_every_steps", "num_workers")


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` with the volatile keys removed."""

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _VOLATILE}
        if isinstance(x, list | tuple):
            return [strip(v) for v in x]
        return x

    text = json.dumps(strip(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_fields(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted fields whose value differs between a stage's recorded inputs and now.

    Fields only one side has (added to a library config since the stage ran, with their
    default, or no longer part of the stage's inputs) are not changes: a finished stage is not
    invalidated by a newer augdiff.
    """
    def present(d: Any, dotted: str) -> bool:
        for part in dotted.split("."):
            if not isinstance(d, dict) or part not in d:
                return False
            d = d[part]
        return True

    return [f for f in config_diff(recorded, current)
            if present(recorded, f) and present(current, f)]


def json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, other values strings)."""
    return json.loads(json.dumps(obj, default=str))


class StageBook:
    """``<workdir>/stages.json``: status, times, fingerprints, outputs and per-seed units.

    Only process 0 writes; every write is atomic (temp file + ``os.replace``).
    """

    def __init__(self, workdir: str, *, writer: bool = True):
        self.path = os.path.join(workdir, STAGES_FILE)
        self.writer = writer
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.data = json.load(f)
            if self.data.get("format") != FORMAT:
                raise ConfigError(f"{self.path}: not an augdiff stages file")
        else:
            self.data = {"format": FORMAT, "stages": {}}

    @property
    def stages(self) -> dict[str, Any]:
        return self.data["stages"]

    def get(self, stage: str) -> dict[str, Any] | None:
        return self.stages.get(stage)

    def save(self) -> None:
        if self.writer:
            write_json(self.path, self.data)

    def start(self, stage: str, fp: str, inputs: Any) -> None:
        rec = self.stages.get(stage) or {"units": {}}
        rec.update(status="running", fingerprint=fp, inputs=inputs,
                   started_at=_now(), attempts=int(rec.get("attempts", 0)) + 1)
        rec.setdefault("units", {})
        rec.pop("finished_at", None)
        self.stages[stage] = rec
        self.save()

    def unit_done(self, stage: str, unit: str, outputs: dict[str, Any]) -> None:
        self.stages[stage]["units"][unit] = outputs
        self.save()

    def finish(self, stage: str, outputs: dict[str, Any], seconds: float) -> None:
        rec = self.stages[stage]
        rec.update(status="done", outputs=outputs, finished_at=_now(),
                   seconds=round(float(rec.get("seconds", 0.0)) + seconds, 2))
        self.save()

    def forget(self, stage: str) -> None:
        self.stages.pop(stage, None)
        self.save()


def _now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Units:
    """Finished sub-units (seeds) of the running stage, persisted as each one finishes."""

    def __init__(self, book: StageBook, stage: str, log: Callable[[str], None]):
        self.book, self.stage, self.log = book, stage, log

    def get(self, unit: str) -> dict[str, Any] | None:
        return (self.book.get(self.stage) or {}).get("units", {}).get(unit)

    def done(self, unit: str, outputs: dict[str, Any]) -> None:
        self.book.unit_done(self.stage, unit, outputs)


def is_main() -> bool:
    """Whether this is process 0, the one process that writes the bookkeeping and reports."""
    return jax.process_index() == 0

