"""``augdiff run``: every stage of an experiment, resumable, ending in ``report.md``.

An experiment config (``configs/<experiment>.py``) names its stages in ``config.stages``, in
this order (any subset that satisfies the dependencies below):

=================  ==========================================================================
stage              what it does (library call)
=================  ==========================================================================
prepare            opens the real train / test splits and the configured subset
                   (:func:`augdiff.data.sources.open_real_source`); writes ``subset.json``
train_generator    trains an EDM generator on the real subset (:func:`augdiff.edm.train.train`)
generate           fills the synthetic store: samples the EDM checkpoint
                   (:func:`augdiff.edm.sampling.sample_to_store`), or runs a generation method
                   (``augdiff generate``'s ``METHODS``), or adopts an existing store
train_real         a classifier on the real subset only, once per seed in ``config.seeds``
train_synthetic    ... on the synthetic store only (share ρ = 1)
train_mixed        ... on real + synthetic with the ``config.mixed`` schedule
                   (:func:`augdiff.train.classifier.train_and_evaluate` each)
evaluate           FID / KID / PRDC / replication of the store against the real test split
                   (:func:`augdiff.metrics.evaluate.evaluate_store`)
pca                2-D PCA of real vs synthetic features (:mod:`augdiff.analysis.pca`)
report             ``report.md`` with tables, sample grids and the resolved config
                   (:func:`augdiff.report.write_report`)
=================  ==========================================================================

Sub-workdirs and sub-configs
----------------------------
Stage ``s`` works in ``<workdir>/<s>/`` (training stages in ``<workdir>/<s>/seed_<k>/``). Its
config is *derived* from the experiment config, never written by hand:

1. load the stage's own command config, named by spec (``generator.config``,
   ``classifier.config``, ``evaluate.config``; e.g. ``configs/casd_cifar10.py:classcond``);
2. copy the experiment's shared fields into it: every key of ``data`` that the sub-config
   also has, ``mesh``, ``seed`` (a training seed for ``train_*``), and set ``workdir``;
3. apply the section's ``overrides`` (a nested ConfigDict; an unknown key is an error naming
   it, because sub-configs are locked);
4. set the wiring fields from earlier stages' outputs: ``sample.store`` / ``num_samples``
   (generate), ``synthetic.path`` and ``synthetic.schedule`` (``train_synthetic``: ρ = 1;
   ``train_mixed``: ``config.mixed``, where ``rho = "union"`` means the share
   ``n_syn / (n_real + n_syn)`` of training on the union; with ``config.mixed.online`` the
   synthetic rows are sampled during training instead, :func:`mixed_online`),
   ``steps_per_epoch`` (one pass over
   the data the stage trains on: real, synthetic or their union, unless the overrides set
   it), and for ``evaluate`` the store and, with the ``classifier`` extractor, the checkpoint
   of ``train_real``'s first seed with that classifier's architecture.

Each derived config is saved as ``<stage dir>/stage_config.json``.

Bookkeeping
-----------
``<workdir>/stages.json`` (written atomically, temp file + rename) records every stage:
``status`` (``running`` or ``done``), start / finish times, wall seconds, a fingerprint of
its derived config(s), its ``outputs`` and, for per-seed stages, the finished ``units``. A
``done`` stage is skipped ("skipping <stage>: done") when the run is started again; a stage
that was killed midway is started again and resumes through its own resume (EDM and
classifier training restore their latest orbax checkpoint, generation skips the store keys
already written). A stage whose derived config changed since it ran is an error naming the
fields; ``--config.rerun=stage[,stage]`` starts those stages (and every later one) over.
Adding seeds to ``config.seeds`` trains only the new seeds.

Multi-process runs: every process runs every stage (the library functions split the work);
process 0 alone writes ``stages.json`` and the report, so the workdir must be on a file
system all processes share.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import importlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from augdiff.config import (
    ConfigError,
    config_diff,
    derive,
    load_config,
    merge_overrides,
    parse_list,
    resolve_path,
    set_field,
    to_dict,
)

STAGES = (
    "prepare",
    "train_generator",
    "generate",
    "train_real",
    "train_synthetic",
    "train_mixed",
    "evaluate",
    "pca",
    "report",
)
TRAIN_STAGES = {"train_real": "real", "train_synthetic": "synthetic", "train_mixed": "mixed"}
GENERATOR_KINDS = ("edm", "method", "store")
STAGES_FILE = "stages.json"
FORMAT = "augdiff-stages/1"

# Keys of derived configs that do not change results (left out of fingerprints).
_VOLATILE = ("progress", "log_every_steps", "num_workers")



# --------------------------------------------------------------------------------------------
# Paths and config helpers












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




def stage_list(config: ml_collections.ConfigDict) -> list[str]:
    return parse_list(config.stages)


def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
    seeds = config.get("seeds", None)
    seeds = [int(s) for s in parse_list(seeds)] if seeds is not None else [int(config.seed)]
    if not seeds:
        raise ConfigError("config.seeds is empty: give at least one training seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"config.seeds has duplicates: {seeds}")
    return seeds


def validate_stages(config: ml_collections.ConfigDict) -> list[str]:
    """Check ``config.stages`` (known names, canonical order, dependencies); return it."""
    stages = stage_list(config)
    if not stages:
        raise ConfigError("config.stages is empty")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"config.stages: unknown stage(s) {unknown}; known: {list(STAGES)}")
    if len(set(stages)) != len(stages):
        raise ConfigError(f"config.stages lists a stage twice: {stages}")
    order = [STAGES.index(s) for s in stages]
    if order != sorted(order):
        raise ConfigError(f"config.stages must follow the order {list(STAGES)}; got {stages}")
    has = set(stages)
    gen = config.get("generator", None)
    kind = gen.get("kind", "edm") if gen is not None else None
    if gen is not None and kind not in GENERATOR_KINDS:
        raise ConfigError(f"generator.kind must be one of {GENERATOR_KINDS}, got {kind!r}")
    if "train_generator" in has and kind != "edm":
        raise ConfigError(f"stage train_generator trains an EDM model; generator.kind is {kind!r}")
    if "train_generator" in has and gen.get("checkpoint", ""):
        raise ConfigError("generator.checkpoint (user weights) and the train_generator stage "
                          "exclude each other: drop one")
    if "generate" in has:
        if gen is None:
            raise ConfigError("stage generate needs a config.generator section")
        if kind == "edm" and "train_generator" not in has and not gen.get("checkpoint", ""):
            raise ConfigError("stage generate samples an EDM checkpoint: list train_generator "
                              "before it or set generator.checkpoint=<train-diffusion workdir>")
        if kind == "store" and not gen.get("store", ""):
            raise ConfigError("generator.kind='store' needs generator.store=<store dir>")
    needs_store = has & {"train_synthetic", "train_mixed", "evaluate", "pca"}
    if mixed_online(config) is not None:  # train_mixed samples the generator itself
        needs_store -= {"train_mixed"}
        named = (str(config.mixed.online.get("checkpoint", "") or "")
                 or (str(gen.get("checkpoint", "") or "") if kind == "edm" else ""))
        if "train_mixed" in has and not named and "train_generator" not in has:
            raise ConfigError("mixed.online samples an EDM checkpoint: set "
                              "mixed.online.checkpoint, generator.checkpoint, or list the "
                              "train_generator stage")
    if needs_store and "generate" not in has:
        raise ConfigError(f"stage(s) {sorted(needs_store)} need the synthetic store: list the "
                          "generate stage")
    if has & set(TRAIN_STAGES):
        seeds_of(config)
        if "classifier" not in config:
            raise ConfigError("training stages need a config.classifier section")
    if has & {"evaluate", "pca"}:
        ev = config.get("evaluate", None)
        if ev is None:
            raise ConfigError("stages evaluate / pca need a config.evaluate section")
        sub = load_config(str(ev.config))
        merge_overrides(sub, ev.get("overrides", None) or {}, "evaluate.overrides")
        ex = sub.extractor
        if (ex.name == "classifier" and not ex.checkpoint and not ex.random_init
                and "train_real" not in has):
            raise ConfigError("the classifier feature extractor is trained by train_real: list "
                              "it, or set evaluate.overrides.extractor.checkpoint")
    return stages


def stage_dir(config: ml_collections.ConfigDict, stage: str) -> str:
    return os.path.join(os.path.abspath(str(config.workdir)), stage)


# --------------------------------------------------------------------------------------------
# Derived configs (pure functions of the experiment config and earlier outputs)


def generator_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The EDM train / sample config: ``generator.config`` + shared fields + overrides.

    Its workdir is ``<workdir>/train_generator`` (or the user's ``generator.checkpoint``
    run); samples go to ``<workdir>/generate/store``.
    """
    g = config.generator
    user = resolve_path(str(g.get("checkpoint", "") or ""))
    workdir = user or stage_dir(config, "train_generator")
    sub = derive(config, str(g.config), g.get("overrides", None), workdir=workdir,
                 where="generator.overrides")
    if "num_samples" in sub:
        sub.num_samples = int(g.num_samples)
    if "sample" in sub and "store" in sub.sample:
        sub.sample.store = os.path.join(stage_dir(config, "generate"), "store")
    return sub


def method_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``augdiff generate`` config of ``generator.kind = 'method'`` (workdir = generate)."""
    g = config.generator
    gen_dir = stage_dir(config, "generate")
    sub = derive(config, str(g.config), g.get("overrides", None), workdir=gen_dir,
                 where="generator.overrides")
    for key in ("store_dir", "store"):
        if key in sub and isinstance(sub[key], str):
            sub[key] = os.path.join(gen_dir, "store")
    return sub


def mixed_schedule(config: ml_collections.ConfigDict, n_real: int, n_syn: int) -> dict[str, Any]:
    """``config.mixed.schedule`` with ``rho = 'union'`` resolved to the ratio
    ``"n_real:n_syn"`` (the share ``n_syn / (n_real + n_syn)`` of training on the union)."""
    sched = to_dict(config.mixed.schedule) if "mixed" in config else {"kind": "constant",
                                                                      "rho": "union"}
    if str(sched.get("rho", "")) == "union":
        sched["rho"] = f"{int(n_real)}:{int(n_syn)}"
    return sched


def mixed_online(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """``config.mixed.online`` (the ``synthetic.online`` fields of :mod:`augdiff.data.online`)
    when its ``kind`` is not ``none``, with ``checkpoint`` defaulting to the experiment's EDM
    generator (``generator.checkpoint``, else ``<workdir>/train_generator``); else None."""
    mixed = config.get("mixed", None)
    on = mixed.get("online", None) if mixed is not None else None
    if on is None or str(on.get("kind", "none") or "none") == "none":
        return None
    out = to_dict(on)
    if not str(out.get("checkpoint", "") or ""):
        gen = config.get("generator", None)
        if gen is not None and str(gen.get("kind", "edm")) == "edm":
            user = resolve_path(str(gen.get("checkpoint", "") or ""))
            out["checkpoint"] = user or stage_dir(config, "train_generator")
        else:
            out["checkpoint"] = ""
    else:
        out["checkpoint"] = resolve_path(str(out["checkpoint"]))
    return out


def classifier_config(
    config: ml_collections.ConfigDict,
    kind: str,
    seed: int,
    *,
    num_real: int,
    num_synthetic: int = 0,
    store: str = "",
) -> ml_collections.ConfigDict:
    """The ``augdiff train`` config of training stage ``kind`` (real | synthetic | mixed) at
    ``seed`` (module docstring, step 4)."""
    if kind not in TRAIN_STAGES.values():
        raise ValueError(f"classifier_config: kind must be real, synthetic or mixed, got {kind!r}")
    c = config.classifier
    stage = f"train_{kind}"
    sub = derive(config, str(c.config), c.get("overrides", None),
                 workdir=os.path.join(stage_dir(config, stage), f"seed_{seed}"), seed=seed,
                 where="classifier.overrides")
    bs = int(sub.batch_size)
    fixed_steps = int(sub.get("steps_per_epoch", 0) or 0)
    if kind == "real":
        sub.synthetic.path = ""
        n = num_real
    elif kind == "mixed" and mixed_online(config) is not None:
        # The synthetic share of every batch sampled during training (augdiff.data.online)
        # instead of read from the store; an epoch is one pass over the real images.
        sub.synthetic.path = ""
        merge_overrides(sub.synthetic.online, mixed_online(config), "mixed.online")
        n = num_real
    else:
        if not store:
            raise ConfigError(f"{stage}: no synthetic store (run the generate stage)")
        sub.synthetic.path = store
        if kind == "synthetic":
            merge_overrides(sub.synthetic.schedule, {"kind": "constant", "rho": "1.0"}, stage)
            n = num_synthetic
        else:
            merge_overrides(sub.synthetic.schedule,
                            mixed_schedule(config, num_real, num_synthetic), "mixed.schedule")
            n = num_real + num_synthetic
    # One definition of an epoch, shared with ``augdiff train``.
    from augdiff.train.classifier import epoch_steps

    sub.steps_per_epoch = epoch_steps(n, 0, bs, fixed=fixed_steps)
    return sub


def evaluate_config(
    config: ml_collections.ConfigDict, *, store: str, extractor_checkpoint: str = ""
) -> ml_collections.ConfigDict:
    """The ``augdiff evaluate`` config: the store, and for the ``classifier`` extractor the
    architecture of ``classifier.config`` and the checkpoint of ``train_real``'s first seed."""
    e = config.evaluate
    sub = derive(config, str(e.config), e.get("overrides", None),
                 workdir=stage_dir(config, "evaluate"), where="evaluate.overrides")
    sub.evaluate.store = store
    ex = sub.extractor
    if ex.name == "classifier" and not ex.checkpoint and not ex.random_init:
        if not extractor_checkpoint:
            raise ConfigError("evaluate: the classifier extractor needs train_real's checkpoint")
        ex.checkpoint = extractor_checkpoint
        if "classifier" in config:
            cls = derive(config, str(config.classifier.config),
                         config.classifier.get("overrides", None), workdir="", where="classifier")
            ex.classifier = str(cls.model.name)
            ex.width = int(cls.model.width)
            ex.stem = str(cls.model.get("stem", "") or "")
    if "image_size" in sub.data:
        ex.image_size = int(sub.data.image_size)
    return sub


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def _save_stage_config(sub: ml_collections.ConfigDict, path: str) -> dict[str, Any]:
    d = to_dict(sub)
    _write_json(path, d)
    return d


# --------------------------------------------------------------------------------------------
# Bookkeeping


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
            _write_json(self.path, self.data)

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
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Stages. Each is ``fn(config, outputs, units) -> outputs``: ``outputs`` maps earlier stages to
# their outputs, ``units`` is the per-seed record (``units.done(seed, out)``).


class Units:
    """Finished sub-units (seeds) of the running stage, persisted as each one finishes."""

    def __init__(self, book: StageBook, stage: str, log: Callable[[str], None]):
        self.book, self.stage, self.log = book, stage, log

    def get(self, unit: str) -> dict[str, Any] | None:
        return (self.book.get(self.stage) or {}).get("units", {}).get(unit)

    def done(self, unit: str, outputs: dict[str, Any]) -> None:
        self.book.unit_done(self.stage, unit, outputs)


def _is_main() -> bool:
    import jax

    return jax.process_index() == 0


def stage_prepare(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
                  units: Units) -> dict[str, Any]:
    """Open the real train subset and test split; write ``prepare/subset.json``."""
    from augdiff.data.sources import open_real_source

    data = config.data
    train = open_real_source(data, str(data.get("train_split", "train")), subset=True)
    test = open_real_source(data, str(data.get("test_split", "test")), subset=False)
    counts = np.bincount(np.asarray(train.labels), minlength=train.num_classes)
    out = {
        "description": getattr(train, "description", str(data.get("path", ""))),
        "class_names": list(train.class_names),
        "num_classes": int(train.num_classes),
        "num_train": int(len(train)),
        "num_test": int(len(test)),
        "counts_per_class": {n: int(c) for n, c in zip(train.class_names, counts, strict=True)},
    }
    path = os.path.join(stage_dir(config, "prepare"), "subset.json")
    if _is_main():
        _write_json(path, {**out, "rows": [train.name_of(i) for i in range(len(train))]})
    return {**out, "subset_file": path}


def _store_summary(store: str) -> dict[str, Any]:
    from augdiff.data.store import SyntheticStore

    syn = SyntheticStore(store)
    return {"store": os.path.abspath(store), "num_images": int(len(syn)),
            "method": syn.manifest.get("method"),
            "counts_per_class": syn.manifest.get("counts_per_class", {}),
            "counters": syn.manifest.get("counters", {})}


def stage_train_generator(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
                          units: Units) -> dict[str, Any]:
    """Train (or resume) the EDM generator in ``<workdir>/train_generator``."""
    from augdiff.edm import train as edm_train

    sub = generator_config(config)
    last = edm_train.train(sub)
    bs = int(sub.train.batch_size)
    n_params = edm_parameter_count(sub, int(outputs.get("prepare", {}).get("num_classes", 0)))
    steps = int(last.get("step", 0))
    mode = str(sub.mode)
    syn = ""
    if mode in ("sda", "casd"):
        syn = (f"colour-shifted real images ({sub.synthetic.shift})" if sub.synthetic.shift
               else f"store(s) {sub.synthetic.stores}")
    return {"workdir": str(sub.workdir), "mode": mode,
            "classes": str(sub.data.get("classes", "") or "") or "all",
            "synthetic": syn, "source_label": int(sub.sample.source_label),
            "class_conditional": bool(sub.model.class_conditional),
            "preset": str(sub.model.preset), "num_params": n_params, "steps": steps,
            "images_seen": steps * bs, "final_loss": last.get("loss"),
            "checkpoints": os.path.join(str(sub.workdir), "checkpoints")}


def edm_parameter_count(sub: ml_collections.ConfigDict, num_classes: int) -> int:
    """Parameters of the EDM network ``sub`` describes (shapes only, via ``jax.eval_shape``)."""
    from augdiff.edm.model import parameter_count

    return parameter_count(sub, int(sub.model.get("num_classes", 0) or 0) or num_classes or 1)


def stage_generate(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
                   units: Units) -> dict[str, Any]:
    """Fill ``<workdir>/generate/store`` (EDM sampling, a generation method, or a given store)."""
    g = config.generator
    kind = str(g.kind)
    if kind == "edm":
        from augdiff.edm.sampling import sample_to_store

        sub = generator_config(config)
        summary = sample_to_store(sub)
        store = summary["store"]
        extra = {"checkpoint_step": int(summary["checkpoint_step"]),
                 "sampler": str(sub.sample.sampler), "sampler_steps": int(sub.sample.num_steps)}
    elif kind == "method":
        from augdiff.commands.generate import METHODS

        sub = method_config(config)
        method = sub.get("method", None)
        if method not in METHODS:
            raise ConfigError(f"generator.config {g.config!r}: method must be one of "
                              f"{sorted(METHODS)}, got {method!r}")
        try:
            module = importlib.import_module(METHODS[method])
        except ModuleNotFoundError as e:
            raise ConfigError(f"generation method {method!r} is not available: {e}") from e
        summary = module.generate(sub)
        store = summary.get("store") or os.path.join(stage_dir(config, "generate"), "store")
        extra = {"summary": summary}
    else:
        store = resolve_path(str(g.store), must_exist=True)
        extra = {}
    return {**_store_summary(store), "kind": kind, **extra}


def _train_stage(kind: str) -> Callable[..., dict[str, Any]]:
    def run(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
            units: Units) -> dict[str, Any]:
        from augdiff.train.classifier import train_and_evaluate

        per_seed: dict[str, Any] = {}
        for seed in seeds_of(config):
            key = f"seed_{seed}"
            done = units.get(key)
            if done is not None:
                units.log(f"skipping train_{kind} {key}: done")
                per_seed[key] = done
                continue
            sub = _classifier_config_for(config, kind, seed, outputs)
            _save_stage_config(sub, os.path.join(str(sub.workdir), "stage_config.json"))
            result = train_and_evaluate(sub)
            unit = {"seed": seed, "workdir": str(sub.workdir),
                    "metrics": os.path.join(str(sub.workdir), "metrics.json"),
                    "checkpoints": os.path.join(str(sub.workdir), "checkpoints"),
                    "test_top1": float(result["test_top1"]),
                    "test_top5": float(result["test_top5"]),
                    "train_loss": float(result["train_loss"]),
                    "epochs": len(result.get("epochs", [])),
                    "steps_per_epoch": int(result.get("steps_per_epoch", 0)),
                    "synthetic_share": float(result.get("synthetic_share", 0.0))}
            units.done(key, unit)
            per_seed[key] = unit
        return {"kind": kind, "seeds": per_seed, **seed_statistics(per_seed)}

    run.__name__ = f"stage_train_{kind}"
    run.__doc__ = f"Train the ``{kind}`` classifier once per seed in ``config.seeds``."
    return run


def seed_statistics(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for one seed) of top-1 / top-5:
    ``s = sqrt(Σ (a_i − ā)² / (n − 1))``."""
    out: dict[str, Any] = {"num_seeds": len(per_seed)}
    for m in ("test_top1", "test_top5"):
        a = np.asarray([float(u[m]) for u in per_seed.values()], np.float64)
        out[f"{m}_mean"] = float(a.mean())
        out[f"{m}_std"] = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return out


def _num_synthetic(outputs: Mapping[str, Any]) -> tuple[int, str]:
    gen = outputs.get("generate", {})
    return int(gen.get("num_images", 0)), str(gen.get("store", ""))


def _classifier_config_for(config: ml_collections.ConfigDict, kind: str, seed: int,
                           outputs: Mapping[str, Any]) -> ml_collections.ConfigDict:
    n_syn, store = _num_synthetic(outputs)
    n_real = int(outputs.get("prepare", {}).get("num_train", 0))
    if not n_real:
        from augdiff.data.sources import open_real_source

        n_real = len(open_real_source(config.data, str(config.data.get("train_split", "train"))))
    return classifier_config(config, kind, seed, num_real=n_real, num_synthetic=n_syn,
                             store=store if kind != "real" else "")


def _extractor_checkpoint(config: ml_collections.ConfigDict, outputs: Mapping[str, Any]) -> str:
    tr = outputs.get("train_real")
    if not tr:
        return ""
    first = f"seed_{seeds_of(config)[0]}"
    return str(tr["seeds"][first]["checkpoints"])


def stage_evaluate(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
                   units: Units) -> dict[str, Any]:
    """Fidelity / diversity / replication of the store against the real test split."""
    from augdiff.metrics.evaluate import evaluate_store

    sub = _evaluate_config_for(config, outputs)
    _save_stage_config(sub, os.path.join(stage_dir(config, "evaluate"), "stage_config.json"))
    r = evaluate_store(sub)
    out = {"metrics": os.path.join(str(sub.workdir), "metrics.json"),
           "extractor": r["extractor"], "feature_dim": r["feature_dim"],
           "fid": r["fid"]["value"], "kid_mean": r["kid"]["mean"], "kid_std": r["kid"]["std"],
           "num_real": r["real"]["num_images"], "real_split": r["real"]["split"],
           "num_synthetic": r["synthetic"]["num_images"]}
    for m in ("precision", "recall", "density", "coverage"):
        out[m] = r[m]["value"]
        out["prdc_k"] = r[m]["k"]
    if r.get("replication"):
        out["replication"] = dict(r["replication"])
    for k in ("controls", "discriminates", "warning", "accuracy"):  # self-calibration
        if k in r:
            out[k] = r[k]
    return out


def _evaluate_config_for(config: ml_collections.ConfigDict,
                         outputs: Mapping[str, Any]) -> ml_collections.ConfigDict:
    _, store = _num_synthetic(outputs)
    return evaluate_config(config, store=store,
                           extractor_checkpoint=_extractor_checkpoint(config, outputs))


def stage_pca(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
              units: Units) -> dict[str, Any]:
    """2-D PCA of the evaluation extractor's features of real vs synthetic images."""
    from augdiff import distributed
    from augdiff.analysis.pca import plot_embedding_pca
    from augdiff.data.sources import open_real_source
    from augdiff.data.store import SyntheticStore
    from augdiff.metrics.evaluate import load_images, select_rows
    from augdiff.metrics.features import get_extractor

    sub = _evaluate_config_for(config, outputs)
    n = int(config.get("pca", {}).get("max_images", 500))
    real = open_real_source(sub.data, str(sub.evaluate.real_split), subset=False)
    syn = SyntheticStore(sub.evaluate.store)
    seed = int(config.seed)
    real_img, _ = load_images(real, select_rows(real.labels, None, n, seed))
    syn_img, _ = load_images(syn, select_rows(syn.labels, None, n, seed + 1))
    extractor = get_extractor(sub.extractor, num_classes=real.num_classes,
                              mesh=distributed.mesh_from_config(sub))
    path = os.path.join(stage_dir(config, "pca"), "pca.png")
    result = plot_embedding_pca(
        {"real": extractor(real_img), "synthetic": extractor(syn_img)}, path,
        normalize=bool(config.get("pca", {}).get("normalize", True)),
        title=f"PCA of {extractor.name} features")
    return {"plot": path, "extractor": extractor.name, "num_real": len(real_img),
            "num_synthetic": len(syn_img),
            "explained_variance_ratio": [float(v) for v in result.explained_variance_ratio]}


def stage_report(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
                 units: Units) -> dict[str, Any]:
    """Write ``<workdir>/report.md`` (see :func:`augdiff.report.write_report`)."""
    from augdiff.report import write_report

    return write_report(config, outputs)


STAGE_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "prepare": stage_prepare,
    "train_generator": stage_train_generator,
    "generate": stage_generate,
    "train_real": _train_stage("real"),
    "train_synthetic": _train_stage("synthetic"),
    "train_mixed": _train_stage("mixed"),
    "evaluate": stage_evaluate,
    "pca": stage_pca,
    "report": stage_report,
}

# Stages cheap enough to redo silently when their inputs change.
_CHEAP = ("prepare", "report")


def stage_inputs(stage: str, config: ml_collections.ConfigDict,
                 outputs: Mapping[str, Any]) -> Any:
    """What a stage's result depends on: its derived config(s) (seed-free for training stages,
    whose seeds are tracked as units), for the fingerprint in ``stages.json``."""
    if stage == "prepare":
        return to_dict(config.data)
    if stage == "train_generator":  # sampling fields do not change the trained network
        d = to_dict(generator_config(config))
        d.pop("sample", None)
        d.pop("num_samples", None)
        return d
    if stage == "generate":
        kind = str(config.generator.kind)
        if kind == "edm":
            return {"kind": kind, "config": to_dict(generator_config(config))}
        if kind == "method":
            return {"kind": kind, "config": to_dict(method_config(config))}
        return {"kind": kind, "store": resolve_path(str(config.generator.store))}
    if stage in TRAIN_STAGES:
        seed = seeds_of(config)[0]
        d = to_dict(_classifier_config_for(config, TRAIN_STAGES[stage], seed, outputs))
        d.pop("seed", None)
        d.pop("workdir", None)
        return d
    if stage in ("evaluate", "pca"):
        d = to_dict(_evaluate_config_for(config, outputs))
        if stage == "pca":
            d["pca"] = to_dict(config.pca) if "pca" in config else {}
        return d
    return {"report": to_dict(config.report) if "report" in config else {},
            "outputs": {k: v for k, v in outputs.items() if k != "report"}}


# --------------------------------------------------------------------------------------------
# The driver


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``workdir`` and ``data.path`` made absolute."""
    cfg = copy.deepcopy(config)
    if not str(cfg.get("workdir", "") or ""):
        raise ConfigError("config.workdir must be set (--config.workdir=DIR)")
    with cfg.unlocked():
        cfg.workdir = os.path.abspath(str(cfg.workdir))
        if "data" in cfg and str(cfg.data.get("path", "") or ""):
            cfg.data.path = resolve_path(str(cfg.data.path))
    return cfg


def run_experiment(
    config: ml_collections.ConfigDict,
    *,
    stage_functions: Mapping[str, Callable[..., dict[str, Any]]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run the stages of ``config`` that are not done yet; returns every stage's outputs.

    ``stage_functions`` replaces entries of :data:`STAGE_FUNCTIONS` (tests count calls).
    Seed 004's Table 2 (``config.experiment = 'casd_mismatch'``) runs its own resumable steps
    (:func:`augdiff.edm.mismatch.run_mismatch`).
    """
    if str(config.get("experiment", "")) == "casd_mismatch":
        from augdiff.edm.mismatch import run_mismatch

        return {"casd_mismatch": run_mismatch(resolve_config(config), log=log)}
    if str(config.get("experiment", "")) == "rows":
        return {"rows": run_rows(resolve_config(config), log=log)}
    config = resolve_config(config)
    stages = validate_stages(config)
    fns = {**STAGE_FUNCTIONS, **(stage_functions or {})}
    workdir = str(config.workdir)
    main = _is_main()
    os.makedirs(workdir, exist_ok=True)
    book = StageBook(workdir, writer=main)
    resolved = to_dict(config)
    cfg_path = os.path.join(workdir, "config.json")
    if main and (not os.path.exists(cfg_path) or _read_json(cfg_path) != resolved):
        _write_json(cfg_path, resolved)

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
        fields = (changed_fields(rec.get("inputs", {}), _json_roundtrip(inputs))
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
        book.start(stage, fp, _json_roundtrip(inputs))
        t0 = time.time()
        out = fns[stage](config, outputs, Units(book, stage, log))
        outputs[stage] = _json_roundtrip(out)
        book.finish(stage, outputs[stage], time.time() - t0)
        ran_any = True
        log(f"finished {stage} in {time.time() - t0:.1f} s")
    return outputs


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


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))




# --------------------------------------------------------------------------------------------
# Table experiments: every row of a paper's table as a sub-experiment

ANALYSES = {
    "fig3": "augdiff.analysis.fig3:run_fig3",
    "shb_measure": "augdiff.analysis.shb_measure:run_shb_measure",
}
"""Table-level analyses (``config.analyses``): ``name -> module:function``, each called as
``fn(config, rows, log)`` with ``rows`` = ``{row: {"workdir", "outputs"}}``; the result is
kept in ``<workdir>/analyses/<name>.json`` (done once; delete it to redo)."""


def row_config(config: ml_collections.ConfigDict, row: str,
               done: Mapping[str, str]) -> ml_collections.ConfigDict:
    """The experiment config of ``row`` in a table experiment (``config.experiment='rows'``):
    ``config.row_config`` with ``{row}`` filled in, workdir ``<workdir>/<row>``, the table's
    ``data`` / ``seeds`` / ``mesh`` copied in, and every ``config.links`` entry
    ``field=src_row:relpath`` set to ``<workdir>/<src_row>/<relpath>`` (rows other than
    ``src_row``, which must have run before: ``done`` maps finished rows to workdirs)."""
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
    ``train_real``, else ``train_synthetic``."""
    for stage in ("train_mixed", "train_real", "train_synthetic"):
        if stage in outputs:
            o = outputs[stage]
            return {"test_top1": o["test_top1_mean"], "test_top5": o["test_top5_mean"],
                    "test_top1_std": o.get("test_top1_std", 0.0), "stage": stage,
                    "num_seeds": o.get("num_seeds", 1)}
    return {}


def run_rows(config: ml_collections.ConfigDict, *,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every row of ``config.rows`` (each an ``augdiff run`` of its own in
    ``<workdir>/<row>``, resumed through its ``stages.json``), the ``config.analyses``, then
    write ``<workdir>/report.md`` (:func:`augdiff.analysis.tables.rows_report`).

    ``config.aliases`` names rows reported with another row's result (same definition, not
    trained twice); ``config.rerun_rows`` starts rows over (their workdirs are removed).
    """
    from augdiff.analysis.tables import rows_report

    workdir = str(config.workdir)
    os.makedirs(workdir, exist_ok=True)
    rows = parse_list(config.rows)
    if not rows:
        raise ConfigError("config.rows is empty")
    for row in parse_list(config.get("rerun_rows", "")):
        if row not in rows:
            raise ConfigError(f"config.rerun_rows: {row!r} is not among config.rows")
        if _is_main():
            log(f"rerun: starting row {row} over")
            shutil.rmtree(os.path.join(workdir, row), ignore_errors=True)
    done: dict[str, str] = {}
    info: dict[str, Any] = {}
    for row in rows:
        sub = row_config(config, row, done)
        log(f"== row {row} ({sub.name})")
        t0 = time.time()
        outputs = run_experiment(sub, log=lambda m, r=row: log(f"[{r}] {m}"))
        book = StageBook(str(sub.workdir), writer=False)
        seconds = sum(float(v.get("seconds", 0.0)) for v in book.stages.values())
        info[row] = {"workdir": str(sub.workdir), "outputs": outputs,
                     "result": row_result(outputs), "seconds": round(seconds, 1),
                     "this_call_s": round(time.time() - t0, 1)}
        done[row] = str(sub.workdir)
        if _is_main():
            _write_json(os.path.join(workdir, "rows.json"),
                        {r: {k: v for k, v in i.items() if k != "outputs"}
                         for r, i in info.items()})
    for alias, target in (config.get("aliases", None) or {}).items():
        if target in info:
            info[alias] = {**info[target], "alias_of": target}
    analyses: dict[str, Any] = {}
    for name in parse_list(config.get("analyses", "")):
        if name not in ANALYSES:
            raise ConfigError(f"config.analyses: unknown analysis {name!r}; known: "
                              f"{sorted(ANALYSES)}")
        path = os.path.join(workdir, "analyses", f"{name}.json")
        if os.path.exists(path):
            log(f"skipping analysis {name}: done")
            analyses[name] = _read_json(path)
            continue
        log(f"running analysis {name}")
        mod, _, fn = ANALYSES[name].partition(":")
        t0 = time.time()
        out = getattr(importlib.import_module(mod), fn)(config, info, log)
        out = {**_json_roundtrip(out), "seconds": round(time.time() - t0, 1)}
        if _is_main():
            _write_json(path, out)
        analyses[name] = out
    report = rows_report(config, info, analyses) if _is_main() else ""
    return {"rows": {r: {k: v for k, v in i.items() if k != "outputs"} for r, i in info.items()},
            "analyses": analyses, "report": report}
