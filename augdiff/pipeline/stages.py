"""The stages of an experiment, each ``fn(config, outputs, units) -> outputs``.

=================  ==========================================================================
stage              what it does (library call)
=================  ==========================================================================
prepare            opens the real train / test splits and the configured subset
                   (:func:`augdiff.data.sources.open_real_source`); writes ``subset.json``
train_generator    trains an EDM generator on the real subset (:func:`augdiff.edm.train.train`)
generate           fills the synthetic store: samples the EDM checkpoint
                   (:func:`augdiff.edm.sampling.sample_to_store`), or runs a generation method
                   (:data:`augdiff.methods.registry.METHODS`), or adopts an existing store
train_real         a classifier on the real subset only, once per seed in ``config.seeds``
train_synthetic    ... on the synthetic store only (share ρ = 1)
train_mixed        ... on real + synthetic with the ``config.mixed`` schedule
                   (:func:`augdiff.train.classifier.train_and_evaluate` each, handed the online
                   sources of :func:`augdiff.methods.online.build`)
evaluate           FID / KID / PRDC / replication of the store against the real test split
                   (:func:`augdiff.metrics.evaluate.evaluate_store`)
pca                2-D PCA of real vs synthetic features (:mod:`augdiff.analysis.pca`)
report             ``report.md`` with tables, comparisons, curves, sample grids and the
                   resolved config, and ``results.json`` / ``results.csv``
                   (:func:`augdiff.pipeline.report.write_report`)
=================  ==========================================================================

``outputs`` maps earlier stages to their outputs; ``units`` records finished sub-units (seeds)
as each finishes. Each stage's config comes from :mod:`augdiff.pipeline.wiring`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from augdiff import distributed
from augdiff.analysis.pca import plot_embedding_pca
from augdiff.config import ConfigError, resolve_path, to_dict
from augdiff.data.selection import load_images, select_rows
from augdiff.data.sources import open_real_source
from augdiff.data.store import SyntheticStore
from augdiff.edm import train as edm_train
from augdiff.edm.model import parameter_count
from augdiff.edm.sampling import sample_to_store
from augdiff.files import write_json
from augdiff.methods.online import build as build_online
from augdiff.methods.registry import get_method
from augdiff.metrics.evaluate import evaluate_store
from augdiff.metrics.features import get_extractor
from augdiff.pipeline.book import Units, is_main
from augdiff.pipeline.report import write_report
from augdiff.pipeline.wiring import (
    classifier_config_for,
    evaluate_config_for,
    generator_config,
    method_config,
    seeds_of,
    stage_dir,
)
from augdiff.train.classifier import train_and_evaluate


def save_stage_config(sub: ml_collections.ConfigDict, path: str) -> dict[str, Any]:
    """Write a stage's derived config to ``path`` (``<stage dir>/stage_config.json``)."""
    d = to_dict(sub)
    write_json(path, d)
    return d


def stage_prepare(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
                  units: Units) -> dict[str, Any]:
    """Open the real train subset and test split; write ``prepare/subset.json``."""
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
    if is_main():
        write_json(path, {**out, "rows": [train.name_of(i) for i in range(len(train))]})
    return {**out, "subset_file": path}


def _store_summary(store: str) -> dict[str, Any]:
    """What the report and later stages need to know of a synthetic store."""
    syn = SyntheticStore(store)
    model = (syn.manifest.get("config") or {}).get("model")
    return {"store": os.path.abspath(store), "num_images": int(len(syn)),
            "method": syn.manifest.get("method"),
            "model": model if isinstance(model, str) else None,
            "counts_per_class": syn.manifest.get("counts_per_class", {}),
            "counters": syn.manifest.get("counters", {})}


def stage_train_generator(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
                          units: Units) -> dict[str, Any]:
    """Train (or resume) the EDM generator in ``<workdir>/train_generator``."""
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
    return parameter_count(sub, int(sub.model.get("num_classes", 0) or 0) or num_classes or 1)


def stage_generate(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
                   units: Units) -> dict[str, Any]:
    """Fill ``<workdir>/generate/store`` (EDM sampling, a generation method, or a given store)."""
    g = config.generator
    kind = str(g.kind)
    if kind == "edm":
        sub = generator_config(config)
        summary = sample_to_store(sub)
        store = summary["store"]
        extra = {"checkpoint_step": int(summary["checkpoint_step"]),
                 "sampler": str(sub.sample.sampler), "sampler_steps": int(sub.sample.num_steps)}
    elif kind == "method":
        sub = method_config(config)
        try:
            module = get_method(sub.get("method", None))
        except ConfigError as e:
            raise ConfigError(f"generator.config {g.config!r}: {e}") from e
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
        per_seed: dict[str, Any] = {}
        for seed in seeds_of(config):
            key = f"seed_{seed}"
            done = units.get(key)
            if done is not None:
                units.log(f"skipping train_{kind} {key}: done")
                per_seed[key] = done
                continue
            sub = classifier_config_for(config, kind, seed, outputs)
            save_stage_config(sub, os.path.join(str(sub.workdir), "stage_config.json"))
            result = train_and_evaluate(sub, online=build_online)
            unit = {"seed": seed, "workdir": str(sub.workdir),
                    "metrics": os.path.join(str(sub.workdir), "metrics.json"),
                    "checkpoints": os.path.join(str(sub.workdir), "checkpoints"),
                    "test_top1": float(result["test_top1"]),
                    "test_top5": float(result["test_top5"]),
                    "train_loss": float(result["train_loss"]),
                    "epochs": len(result.get("epochs", [])),
                    "steps_per_epoch": int(result.get("steps_per_epoch", 0)),
                    "synthetic_share": float(result.get("synthetic_share", 0.0))}
            for k in ("test_class_top1", "test_class_count", "skipped_images"):
                if result.get(k) is not None:  # per-class accuracy; unreadable images left out
                    unit[k] = result[k]
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


def stage_evaluate(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
                   units: Units) -> dict[str, Any]:
    """Fidelity / diversity / replication of the store against the real test split."""
    sub = evaluate_config_for(config, outputs)
    save_stage_config(sub, os.path.join(stage_dir(config, "evaluate"), "stage_config.json"))
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


def stage_pca(config: ml_collections.ConfigDict, outputs: Mapping[str, Any],
              units: Units) -> dict[str, Any]:
    """2-D PCA of the evaluation extractor's features of real vs synthetic images."""
    sub = evaluate_config_for(config, outputs)
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
    """Write ``<workdir>/report.md`` (see :func:`augdiff.pipeline.report.write_report`)."""
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

