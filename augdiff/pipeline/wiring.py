"""How an experiment's stages are wired: each stage's config derived from the experiment config.

Stage ``s`` works in ``<workdir>/<s>/`` (training stages in ``<workdir>/<s>/seed_<k>/``). Its
config is *derived* from the experiment config, never written by hand:

1. load the stage's own command config, named by spec (``generator.config``,
   ``classifier.config``, ``evaluate.config``; e.g. ``configs/casd_cifar10.py:classcond``);
2. copy the experiment's shared fields into it: every key of ``data`` that the sub-config
   also has, ``mesh``, ``seed`` (a training seed for ``train_*``), and set ``workdir``;
3. apply the section's ``overrides`` (a nested ConfigDict; an unknown key is an error naming
   it, because sub-configs are locked) — steps 1-3 are :func:`augdiff.config.derive`;
4. set the wiring fields from earlier stages' outputs: ``sample.store`` / ``num_samples``
   (generate), ``synthetic.path`` and ``synthetic.schedule`` (``train_synthetic``: ρ = 1;
   ``train_mixed``: ``config.mixed``, where ``rho = "union"`` means the share
   ``n_syn / (n_real + n_syn)`` of training on the union; with ``config.mixed.online`` the
   synthetic rows are sampled during training instead, :func:`mixed_online`),
   ``steps_per_epoch`` (one pass over the data the stage trains on: real, synthetic or their
   union; ``mixed.epoch_budget = 'real'`` gives a mixed stage the real set's size instead,
   :mod:`augdiff.data.budget`; unless the overrides set it), and for ``evaluate`` the store
   and, with the ``classifier`` extractor, the checkpoint of ``train_real``'s first seed with that
   classifier's architecture.

Every function here is pure (configs and earlier outputs in, a config out); :func:`stage_inputs`
is what a stage's fingerprint in ``stages.json`` is computed from.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from augdiff.config import (
    ConfigError,
    derive,
    load_config,
    merge_overrides,
    parse_list,
    resolve_path,
    to_dict,
)
from augdiff.data.budget import epoch_images
from augdiff.data.sources import open_real_source
from augdiff.train.classifier import epoch_steps

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
        # The synthetic share of every batch sampled during training (augdiff.methods.online)
        # instead of read from the store; an epoch has as many images as the real set (at
        # share ρ only (1 − ρ)·N of them real: about half a pass over the real images at 0.5).
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
            # the epoch budget (augdiff.data.budget): union by default, N real for seed 000
            n = epoch_images(str(config.mixed.get("epoch_budget", "union")) if "mixed" in config
                             else "union", num_real, num_synthetic)
    # One definition of an epoch, shared with ``augdiff train``.
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


def num_synthetic(outputs: Mapping[str, Any]) -> tuple[int, str]:
    gen = outputs.get("generate", {})
    return int(gen.get("num_images", 0)), str(gen.get("store", ""))


def classifier_config_for(config: ml_collections.ConfigDict, kind: str, seed: int,
                           outputs: Mapping[str, Any]) -> ml_collections.ConfigDict:
    n_syn, store = num_synthetic(outputs)
    n_real = int(outputs.get("prepare", {}).get("num_train", 0))
    if not n_real:
        n_real = len(open_real_source(config.data, str(config.data.get("train_split", "train"))))
    return classifier_config(config, kind, seed, num_real=n_real, num_synthetic=n_syn,
                             store=store if kind != "real" else "")


def extractor_checkpoint(config: ml_collections.ConfigDict, outputs: Mapping[str, Any]) -> str:
    tr = outputs.get("train_real")
    if not tr:
        return ""
    first = f"seed_{seeds_of(config)[0]}"
    return str(tr["seeds"][first]["checkpoints"])


def evaluate_config_for(config: ml_collections.ConfigDict,
                         outputs: Mapping[str, Any]) -> ml_collections.ConfigDict:
    _, store = num_synthetic(outputs)
    return evaluate_config(config, store=store,
                           extractor_checkpoint=extractor_checkpoint(config, outputs))


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
        d = to_dict(classifier_config_for(config, TRAIN_STAGES[stage], seed, outputs))
        d.pop("seed", None)
        d.pop("workdir", None)
        return d
    if stage in ("evaluate", "pca"):
        d = to_dict(evaluate_config_for(config, outputs))
        if stage == "pca":
            d["pca"] = to_dict(config.pca) if "pca" in config else {}
        return d
    return {"report": to_dict(config.report) if "report" in config else {},
            "outputs": {k: v for k, v in outputs.items() if k != "report"}}


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
