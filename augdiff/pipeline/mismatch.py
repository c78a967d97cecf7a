"""Seed 004 §4.3 / Table 2 / Fig. 3: DM, SDA and CASD when the synthetic support differs.

Real data ``D_r``: the first 8 CIFAR-10 classes (plane … horse), the first ``real_per_class``
(125) images of each (App. A.1), ``n = 1,000``. Synthetic data: ``num_synthetic`` (10,000)
samples of an *unconditional* EDM that augdiff trains on

- case 1: all 10 classes (``supp P_s ⊃ supp P_r``),
- case 2: the last 8 classes (bird … truck; ``⊂``/shifted: plane and car are missing,
  ship/truck added),
- case 3: the middle 6 classes (bird … horse; intersects: plane/car missing),

with ``generator_per_class`` training images per class. Then DM (real only), SDA (the union,
no label) and CASD (the union, source label, sampled at ``y = 0``) are trained with one
recipe, ``num_eval`` samples are drawn from each, and the report gives

- FID of the samples against the 8-class real reference: the training-set images of those
  classes (``fid_reference='train'``, EDM's protocol) or the test split
  (``'test'``), with the features of ``extractor`` (Inception-v3 when its weights are given,
  else the penultimate layer of the CIFAR-10 classifier below; the report says which);
- Fig. 3: the class histogram of the samples under a CIFAR-10 classifier trained on real
  data (all 10 classes), in particular the share landing in ship/truck, which ``D_r`` lacks.

Every step works in its own sub-directory of ``workdir`` and resumes (EDM and classifier
training from their checkpoints, sampling skips stored keys); ``table2.json`` and
``report.md`` (:func:`augdiff.pipeline.tables.table2_report`, the paper's FIDs from
``table2.paper_fid``) are rewritten after DM and after every finished case.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from augdiff.analysis.compare import describe, finding_verdict, paired_comparison
from augdiff.config import ConfigError, load_config, to_dict
from augdiff.data.sources import open_real_source
from augdiff.data.store import SyntheticStore
from augdiff.edm import sampling
from augdiff.edm import train as edm_train
from augdiff.edm.train import ClassSubset
from augdiff.files import atomic_write, write_json
from augdiff.metrics.features import classifier_extractor, get_extractor
from augdiff.metrics.fid import fid_from_features
from augdiff.models.classifiers import abstract_variables, get_classifier
from augdiff.pipeline.tables import table2_report
from augdiff.train.checkpoint import restore_classifier_variables
from augdiff.train.classifier import train_and_evaluate

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
REAL_CLASSES = CIFAR10[:8]
CASES = {"case1": CIFAR10, "case2": CIFAR10[2:], "case3": CIFAR10[2:8]}


def _cases(config: ml_collections.ConfigDict) -> list[str]:
    cases = [c.strip() for c in str(config.table2.cases).split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad or not cases:
        raise ConfigError(f"table2.cases: unknown case(s) {bad}; choose from {sorted(CASES)}")
    return cases


def edm_config(config: ml_collections.ConfigDict, *, mode: str, workdir: str,
               classes: tuple[str, ...], first_per_class: int, num_samples: int,
               stores: list[str] = (), images: int | None = None,
               seed: int | None = None) -> ml_collections.ConfigDict:
    """The EDM sub-config of one training run (``table2.edm_config`` + ``edm_overrides``);
    ``seed`` (default ``config.seed``) seeds its training and sampling."""
    t = config.table2
    c = load_config(str(t.edm_config))
    c.unlock()
    for k, v in t.edm_overrides.items():
        if isinstance(v, ml_collections.ConfigDict):
            for k2, v2 in v.items():
                c[k][k2] = v2
        else:
            c[k] = v
    c.workdir = workdir
    c.seed = int(config.seed if seed is None else seed)
    c.sample.seed = c.seed
    c.mode = mode
    c.data.path = str(config.data.path)
    c.data.image_size = int(config.data.image_size)
    c.data.classes = ",".join(classes)
    c.data.per_class = 0
    c.data.first_per_class = int(first_per_class)
    c.synthetic.stores = ",".join(stores)
    c.synthetic.shift = ""
    c.model.num_sources = len(stores) + 1
    c.num_samples = int(num_samples)
    c.sample.store = os.path.join(workdir, "store")
    c.sample.source_label = 0
    if images:
        c.train.total_images = int(images)
    return c


def _train_and_sample(c: ml_collections.ConfigDict, log: Callable[[str], None]) -> dict:
    t0 = time.time()
    last = edm_train.train(c)
    t1 = time.time()
    done = os.path.isdir(c.sample.store) and len(SyntheticStore(c.sample.store)) >= c.num_samples
    if not done:
        sampling.sample_to_store(c)
    t2 = time.time()
    log(f"{c.workdir}: trained ({t1 - t0:.0f} s), sampled ({t2 - t1:.0f} s)")
    return {"workdir": str(c.workdir), "store": str(c.sample.store), "mode": str(c.mode),
            "steps": int(last.get("step", 0)), "final_loss": last.get("loss"),
            "train_s": t1 - t0, "sample_s": t2 - t1}


def classifier_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The CIFAR-10 classifier (all 10 classes, real data) for Fig. 3 and the features."""
    c = load_config(str(config.table2.classifier_config))
    c.unlock()
    for k, v in config.table2.classifier_overrides.items():
        if isinstance(v, ml_collections.ConfigDict):
            for k2, v2 in v.items():
                c[k][k2] = v2
        else:
            c[k] = v
    c.workdir = os.path.join(str(config.workdir), "classifier")
    c.data.path = str(config.data.path)
    c.data.image_size = int(config.data.image_size)
    c.seed = int(config.seed)
    return c


def _classifier(config: ml_collections.ConfigDict) -> tuple[Any, Any, float]:
    c = classifier_config(config)
    result = train_and_evaluate(c)
    model = get_classifier(str(c.model.name), 10, width=int(c.model.width))
    size = int(config.data.image_size)
    variables = restore_classifier_variables(os.path.join(str(c.workdir), "checkpoints"),
                                             abstract_variables(model, size, 3))
    acc = result.get("test_top1", result.get("final", {}).get("test_top1", float("nan")))
    return model, variables, float(acc) if acc is not None else float("nan")


def class_histogram(model: Any, variables: Any, images: np.ndarray,
                    batch: int = 500) -> np.ndarray:
    """Share of ``images`` (uint8 NHWC) the classifier puts in each of the 10 classes."""
    f = jax.jit(lambda x: jnp.argmax(model.apply(
        {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})},
        x.astype(jnp.float32) / 127.5 - 1.0, train=False), -1))
    preds = np.concatenate([np.asarray(f(images[i:i + batch]))
                            for i in range(0, len(images), batch)])
    return np.bincount(preds, minlength=10) / max(len(preds), 1)


def _images(store: str, n: int | None = None) -> np.ndarray:
    s = SyntheticStore(store)
    k = len(s) if n is None else min(n, len(s))
    return np.stack([np.asarray(s[i]["image"]) for i in range(k)])


def reference_images(config: ml_collections.ConfigDict) -> tuple[np.ndarray, str]:
    """The 8-class real reference of the FID and a description of it."""
    ref = str(config.table2.fid_reference)
    if ref not in ("train", "test"):
        raise ConfigError(f"table2.fid_reference must be train or test, got {ref!r}")
    data = ml_collections.ConfigDict({"path": str(config.data.path),
                                      "image_size": int(config.data.image_size),
                                      "channels": 3, "skip_corrupt": True})
    src = ClassSubset(open_real_source(data, ref, subset=False), list(REAL_CLASSES))
    n = len(src) if not int(config.table2.max_reference) else min(
        len(src), int(config.table2.max_reference))
    rows = np.sort(np.random.default_rng(0).choice(len(src), n, replace=False))
    imgs = np.stack([np.asarray(src[int(i)]["image"]) for i in rows])
    return imgs, f"{ref} split, classes {REAL_CLASSES[0]}..{REAL_CLASSES[-1]}, {n} images"


def run_mismatch(config: ml_collections.ConfigDict,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every step of the Table 2 experiment ``config`` describes; returns the results."""
    t = config.table2
    workdir = os.path.abspath(str(config.workdir))
    os.makedirs(workdir, exist_ok=True)
    t_start = time.time()
    cases = _cases(config)
    # The classifier (Fig. 3, and the FID features when no Inception weights are given)
    # and the real reference come first, so every finished case is scored at once.
    model, variables, acc = _classifier(config)
    if str(config.extractor.get("weights", "")):
        extractor = get_extractor(config.extractor)
    else:
        extractor = classifier_extractor(model, variables, "classifier:cifar10-real-penultimate",
                                         image_size=int(config.data.image_size))
    ref_imgs, ref_desc = reference_images(config)
    ref_feat = np.asarray(extractor.fn(ref_imgs))
    real_hist = class_histogram(model, variables, ref_imgs)
    seeds = seeds_of(config)
    per_seed: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}

    def score(name: str, run: dict[str, Any], seed: int) -> None:
        imgs = _images(run["store"], int(t.num_eval))
        hist = class_histogram(model, variables, imgs)
        per_seed.setdefault(name, {})[f"seed_{seed}"] = {
            "fid": float(fid_from_features(np.asarray(extractor.fn(imgs)), ref_feat)),
            "hist": {n: float(h) for n, h in zip(CIFAR10, hist, strict=True)},
            "ship_truck": float(hist[8] + hist[9]), "plane_car": float(hist[0] + hist[1]),
            "n": int(len(imgs)), **{k: run[k] for k in ("steps", "train_s", "sample_s")},
        }
        results[name] = seed_means(per_seed[name])

    def write(done: list[str]) -> dict[str, Any]:
        out = {"cases": done, "cases_requested": cases, "results": results,
               "seeds": seeds, "findings": table2_findings(results, done),
               "classifier_test_top1": acc, "fid_reference": ref_desc,
               "extractor": extractor.name,
               "real_hist": {n: float(h) for n, h in zip(CIFAR10, real_hist, strict=True)},
               "wall_s": time.time() - t_start, "paper": to_dict(t.paper_fid)}
        write_json(os.path.join(workdir, "table2.json"), out)
        atomic_write(os.path.join(workdir, "report.md"), table2_report(out))
        return out

    def run_dir(name: str, seed: int) -> str:
        return os.path.join(workdir, name if len(seeds) == 1 else f"{name}_seed{seed}")

    # DM per seed; then per case: the unconditional generator (one, seed config.seed: the
    # synthetic source is fixed), SDA and CASD per seed, scored at once.
    for seed in seeds:
        c = edm_config(config, mode="dm", workdir=run_dir("dm", seed), classes=REAL_CLASSES,
                       first_per_class=int(t.real_per_class), num_samples=int(t.num_eval),
                       seed=seed)
        score("dm", _train_and_sample(c, log), seed)
    done: list[str] = []
    out = write(done)
    for case in cases:
        c = edm_config(config, mode="dm", workdir=os.path.join(workdir, f"generator_{case}"),
                       classes=CASES[case], first_per_class=int(t.generator_per_class),
                       num_samples=int(t.num_synthetic), images=int(t.generator_images) or None)
        gen = _train_and_sample(c, log)
        score(f"generator_{case}", gen, int(config.seed))
        for seed in seeds:
            for mode in ("sda", "casd"):
                c = edm_config(config, mode=mode, workdir=run_dir(f"{mode}_{case}", seed),
                               classes=REAL_CLASSES, first_per_class=int(t.real_per_class),
                               num_samples=int(t.num_eval), stores=[gen["store"]], seed=seed)
                score(f"{mode}_{case}", _train_and_sample(c, log), seed)
        done.append(case)
        out = write(done)
        log(table2_report(out))
    return out


def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
    """The seeds DM / SDA / CASD are trained and sampled with (``config.seeds``, else
    ``config.seed`` alone)."""
    seeds = [int(s) for s in (config.get("seeds", None) or (config.seed,))]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"config.seeds has repeated seeds: {seeds}")
    return seeds


def seed_means(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One model's scores over seeds: means of FID, shares and histogram, the FID's sample
    standard deviation (``ddof = 1``; 0 for one seed) and every seed's numbers."""
    vals = list(runs.values())
    fid = np.asarray([v["fid"] for v in vals], np.float64)
    out = {k: float(np.mean([v[k] for v in vals])) for k in ("fid", "ship_truck", "plane_car")}
    out["hist"] = {n: float(np.mean([v["hist"][n] for v in vals])) for n in CIFAR10}
    out["fid_std"] = float(fid.std(ddof=1)) if len(fid) > 1 else 0.0
    out["n"] = int(vals[0]["n"])
    out["num_seeds"] = len(vals)
    out["seeds"] = {k: dict(v) for k, v in runs.items()}
    for k in ("steps", "train_s", "sample_s"):
        out[k] = vals[0][k]
    return out


def table2_findings(results: dict[str, Any], cases: list[str]) -> list[dict[str, Any]]:
    """Seed 004's claims per finished case, paired by seed: CASD's FID below SDA's and below
    DM's (lower is better: the difference read is ``other − CASD``), with the 95 % interval
    and a verdict (:func:`augdiff.analysis.compare.finding_verdict`)."""
    out = []
    for case in cases:
        casd = results.get(f"casd_{case}")
        for other, claim in ((f"sda_{case}", "CASD's FID below SDA's"),
                             ("dm", "CASD's FID below DM's")):
            if casd is None or other not in results:
                continue
            a = {k: v["fid"] for k, v in results[other]["seeds"].items()}
            b = {k: v["fid"] for k, v in casd["seeds"].items()}
            comp = paired_comparison(a, b, a_label=other, b_label=f"casd_{case}", metric="fid",
                                     higher_is_better=False)
            out.append({"case": case, "claim": claim, "rows": [f"casd_{case}", other],
                        "comparison": comp.to_dict(),
                        "text": describe(comp, scale=1.0, unit="FID"),
                        "verdict": finding_verdict(comp, a_above_b=True)})
    return out
