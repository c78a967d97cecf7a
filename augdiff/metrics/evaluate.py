"""``evaluate_store(config)``: fidelity, diversity and replication of a synthetic store against
a real split, every number tagged with the feature extractor that produced it.

Steps: open the real split (``config.evaluate.real_split``) and the synthetic store
(``config.evaluate.store``, optionally restricted to ``config.evaluate.classes``), take at most
``max_real`` / ``max_synthetic`` rows of each (a seeded random choice), extract features with
``config.extractor`` (:mod:`augdiff.metrics.features`), then compute FID and KID
(:mod:`augdiff.metrics.fid`), precision / recall / density / coverage
(:mod:`augdiff.metrics.prdc`) and, when ``config.evaluate.replication`` is on, the
nearest-training-image distances and SSIMs (:mod:`augdiff.metrics.replication`) against the
``train_split``. Writes ``workdir/metrics.json``.

Self-calibration (``config.evaluate.controls``, on by default): the same metrics, under the
same extractor, against the same real reference features and with as many images as the
synthetic sample, for control sets whose answer is known (:func:`control_images`):

- ``floor``: held-out real images (rows of the reference split that are not in the
  reference sample, else of the full training split, :func:`held_out_images`): what a
  perfect generator scores;
- ``noise``: i.i.d. Gaussian pixel noise, ``x = clip(round(127.5 + 64·n))``, ``n ~ N(0, 1)``;
- ``blur``: the floor images blurred by a Gaussian of standard deviation ``size / 8`` pixels;
- ``shuffle``: the floor images cut into a 4 × 4 grid of patches, the patches permuted.

The noise, blur and shuffle rows are ceilings (clearly not the data). When the extractor
cannot tell the noise ceiling from the floor (FID of noise below twice the floor's, or
precision of noise above 0.5, :func:`discrimination`) the result carries a ``warning``
(:data:`NO_DISCRIMINATION`, the one copy of this sentence; reports import it): "this extractor
does not discriminate; the numbers below say nothing about quality".

With a classifier extractor the result also carries ``accuracy``: the share of synthetic
images the extractor's classifier assigns to their stored label ("classifier accuracy on
generated samples"; chance is ``1 / num_classes``), beside its accuracy on the floor images.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from augdiff import distributed
from augdiff.data.selection import load_images, resolve_classes, select_rows
from augdiff.data.sources import open_real_source
from augdiff.data.store import SyntheticStore
from augdiff.files import write_json
from augdiff.metrics.features import Extractor, get_extractor
from augdiff.metrics.fid import fid_from_features, kid
from augdiff.metrics.prdc import prdc
from augdiff.metrics.replication import replication

CONTROLS = ("floor", "noise", "blur", "shuffle")
CONTROL_DESCRIPTIONS = {
    "floor": "held-out real images vs the reference: what a perfect generator scores",
    "noise": "Gaussian pixel noise (ceiling)",
    "blur": "held-out real images blurred, Gaussian σ = size/8 (ceiling)",
    "shuffle": "held-out real images cut into 4×4 patches, shuffled (ceiling)",
}
NO_DISCRIMINATION = ("this extractor does not discriminate; the numbers below say nothing "
                     "about quality")


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of uint8 NHWC images (kernel radius ``ceil(3σ)``, reflected
    borders), rounded back to uint8."""
    r = max(int(np.ceil(3 * sigma)), 1)
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    x = images.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        xp = np.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        x = sum(k[j] * np.take(xp, np.arange(j, j + n), axis=axis) for j in range(2 * r + 1))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def shuffle_patches(images: np.ndarray, grid: int, rng: np.random.Generator) -> np.ndarray:
    """Cut each image into ``grid × grid`` equal patches and permute them (one random
    permutation per image)."""
    b, h, w, c = images.shape
    ph, pw = h // grid, w // grid
    out = images.copy()
    for i in range(b):
        patches = [images[i, y * ph:(y + 1) * ph, x * pw:(x + 1) * pw]
                   for y in range(grid) for x in range(grid)]
        for j, p in enumerate(rng.permutation(len(patches))):
            y, x = divmod(j, grid)
            out[i, y * ph:(y + 1) * ph, x * pw:(x + 1) * pw] = patches[p]
    return out


def control_images(kind: str, held_out: np.ndarray, seed: int) -> np.ndarray:
    """The images of control ``kind`` (one of :data:`CONTROLS`) built from the held-out real
    images ``held_out`` (uint8 NHWC); the result has their shape."""
    rng = np.random.default_rng(seed)
    if kind == "floor":
        return held_out
    if kind == "noise":
        n = rng.standard_normal(held_out.shape)
        return np.clip(np.rint(127.5 + 64.0 * n), 0, 255).astype(np.uint8)
    if kind == "blur":
        return gaussian_blur(held_out, held_out.shape[1] / 8.0)
    if kind == "shuffle":
        return shuffle_patches(held_out, 4, rng)
    raise ValueError(f"unknown control {kind!r}; choose one of {CONTROLS}")


def discrimination(controls: dict[str, Any]) -> dict[str, Any]:
    """Does the extractor separate the noise ceiling from the real floor?

    Fails when ``FID(noise) < 2 · FID(floor)`` or ``precision(noise) > 0.5``; returns
    ``{"discriminates": bool, "reasons": [...], "warning": str}``.
    """
    floor, noise = controls["floor"], controls["noise"]
    reasons = []
    f_floor, f_noise = float(floor["fid"]["value"]), float(noise["fid"]["value"])
    if not f_noise >= 2.0 * f_floor:
        reasons.append(f"FID of noise {f_noise:.4g} is within 2x of real-vs-real {f_floor:.4g}")
    p_noise = float(noise["precision"]["value"])
    if p_noise > 0.5:
        reasons.append(f"precision of noise {p_noise:.3f} > 0.5")
    ok = not reasons
    return {"discriminates": ok, "reasons": reasons,
            "warning": "" if ok else f"{NO_DISCRIMINATION} ({'; '.join(reasons)})"}


def fidelity_from_features(fr: np.ndarray, fs: np.ndarray, name: str, *, key: jax.Array,
                           kid_subsets: int, kid_subset_size: int, prdc_k: int,
                           mesh: Any = None) -> dict[str, Any]:
    """FID, KID and PRDC of features ``fs`` against the reference features ``fr``."""
    out: dict[str, Any] = {"fid": {"value": fid_from_features(fr, fs), "extractor": name}}
    out["kid"] = {**kid(fr, fs, key, num_subsets=kid_subsets, subset_size=kid_subset_size),
                  "extractor": name}
    pr = prdc(fr, fs, prdc_k, mesh=mesh)
    for m in ("precision", "recall", "density", "coverage"):
        out[m] = {"value": pr[m], "k": pr["k"], "extractor": name}
    return out


def compute_controls(extractor: Extractor, real_features: np.ndarray, held_out: np.ndarray,
                     *, key: jax.Array, seed: int, kid_subsets: int, kid_subset_size: int,
                     prdc_k: int, mesh: Any = None) -> dict[str, Any]:
    """The metrics of every control set of :data:`CONTROLS` against ``real_features``."""
    out: dict[str, Any] = {}
    for j, kind in enumerate(CONTROLS):
        images = control_images(kind, held_out, seed + 10 + j)
        fc = extractor(images)
        out[kind] = {**fidelity_from_features(
            real_features, fc, extractor.name, key=jax.random.fold_in(key, j + 1),
            kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, prdc_k=prdc_k,
            mesh=mesh), "num_images": int(len(images)),
            "description": CONTROL_DESCRIPTIONS[kind]}
    return out


def compute_metrics(
    extractor: Extractor,
    real_images: np.ndarray,
    synthetic_images: np.ndarray,
    *,
    key: jax.Array,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    prdc_k: int = 5,
    train_images: np.ndarray | None = None,
    nn_by: str = "feature",
    ssim_threshold: float = 0.5,
    mesh: Any = None,
    held_out: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of one comparison, each entry tagged ``extractor``; with ``held_out``
    real images also the control rows (:func:`compute_controls`) and the discrimination
    verdict (:func:`discrimination`)."""
    name = extractor.name
    fr = extractor(real_images)
    fs = extractor(synthetic_images)
    out: dict[str, Any] = {"extractor": name, "feature_dim": int(fr.shape[1])}
    out.update(fidelity_from_features(fr, fs, name, key=key, kid_subsets=kid_subsets,
                                      kid_subset_size=kid_subset_size, prdc_k=prdc_k,
                                      mesh=mesh))
    if held_out is not None:
        out["controls"] = compute_controls(
            extractor, fr, held_out, key=key, seed=seed, kid_subsets=kid_subsets,
            kid_subset_size=kid_subset_size, prdc_k=prdc_k, mesh=mesh)
        out.update(discrimination(out["controls"]))
    if train_images is not None:
        ft = extractor(train_images) if nn_by == "feature" else None
        rep = replication(synthetic_images, train_images, fs, ft, nn_by=nn_by,
                          threshold=ssim_threshold, mesh=mesh)
        out["replication"] = {
            k: v for k, v in rep.items() if not isinstance(v, np.ndarray)
        } | {"extractor": name if nn_by == "feature" else "pixels", "num_train": len(train_images)}
    return out


def held_out_images(config: ml_collections.ConfigDict, real: Any, real_rows: np.ndarray,
                    classes: list[int] | None, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real images held out from the reference: rows of the reference split not among
    ``real_rows`` when it has enough of them (the usual case: 1,000 of 10,000 test images are
    the reference), else rows of the full training split."""
    labels = np.asarray(real.labels)
    rest = np.setdiff1d(np.arange(len(labels)) if classes is None
                        else np.flatnonzero(np.isin(labels, classes)), real_rows)
    if len(rest) >= n:
        rows = np.sort(np.random.default_rng(seed).choice(rest, size=n, replace=False))
        return load_images(real, rows)
    train = open_real_source(config.data, config.evaluate.get("train_split", "train"),
                             subset=False)
    return load_images(train, select_rows(train.labels, classes, n, seed))


def evaluate_store(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Compare ``config.evaluate.store`` with a real split; write ``workdir/metrics.json``."""
    t0 = time.time()
    ev = config.evaluate
    if not ev.get("store", ""):
        raise ValueError("evaluate.store must name a synthetic store directory "
                         "(--config.evaluate.store=/path/to/store)")
    mesh = distributed.mesh_from_config(config)
    real = open_real_source(config.data, ev.get("real_split", "test"), subset=False)
    store = SyntheticStore(ev.store)
    classes = resolve_classes(ev.get("classes", ""), real.class_names)
    seed = int(config.seed)
    real_rows = select_rows(real.labels, classes, int(ev.get("max_real", 0)), seed)
    syn_rows = select_rows(store.labels, classes, int(ev.get("max_synthetic", 0)), seed + 1)
    if len(syn_rows) == 0:
        raise ValueError(f"evaluate: store {ev.store!r} has no images of classes {classes}")
    real_images, _ = load_images(real, real_rows)
    syn_images, _ = load_images(store, syn_rows)
    if real_images.shape[1:] != syn_images.shape[1:]:
        raise ValueError(f"evaluate: real images {real_images.shape[1:]} and synthetic images "
                         f"{syn_images.shape[1:]} differ in size; set data.image_size to match")
    train_images = None
    if ev.get("replication", True):
        train = open_real_source(config.data, ev.get("train_split", "train"))
        train_rows = select_rows(train.labels, classes, int(ev.get("max_train", 0)), seed + 2)
        train_images, _ = load_images(train, train_rows)

    held_out = None
    held_labels = None
    if ev.get("controls", True):
        held_out, held_labels = held_out_images(config, real, real_rows, classes,
                                                len(syn_rows), seed + 3)

    extractor = get_extractor(config.extractor, num_classes=real.num_classes, mesh=mesh,
                              data=config.data)
    metrics = compute_metrics(
        extractor, real_images, syn_images,
        key=jax.random.key(seed),
        kid_subsets=int(ev.get("kid_subsets", 100)),
        kid_subset_size=int(ev.get("kid_subset_size", 1000)),
        prdc_k=int(ev.get("prdc_k", 5)),
        train_images=train_images,
        nn_by=ev.get("nn_by", "feature"),
        ssim_threshold=float(ev.get("ssim_threshold", 0.5)),
        mesh=mesh,
        held_out=held_out,
        seed=seed,
    )
    if extractor.classify is not None and not config.extractor.get("random_init", False):
        metrics["accuracy"] = classifier_accuracy(
            extractor, syn_images, np.asarray(store.labels)[syn_rows], held_out, held_labels,
            num_classes=real.num_classes)
    result = {
        **metrics,
        "real": {"split": ev.get("real_split", "test"), "num_images": int(len(real_rows)),
                 "description": getattr(real, "description", "")},
        "synthetic": {"store": os.path.abspath(ev.store), "num_images": int(len(syn_rows)),
                      "method": store.manifest.get("method")},
        "classes": None if classes is None else [real.class_names[c] for c in classes],
        "seconds": round(time.time() - t0, 2),
    }
    if jax.process_index() == 0:
        write_json(os.path.join(config.workdir, "metrics.json"), result)
    return result


def classifier_accuracy(extractor: Extractor, synthetic: np.ndarray, labels: np.ndarray,
                        real: np.ndarray | None, real_labels: np.ndarray | None, *,
                        num_classes: int) -> dict[str, Any]:
    """"Classifier accuracy on generated samples": the share of ``synthetic`` images whose
    predicted class (the extractor's classifier) equals their stored label, beside the same
    share on held-out ``real`` images and chance ``1 / num_classes``."""
    pred = extractor.classify(synthetic)
    out = {"synthetic": float(np.mean(pred == np.asarray(labels))),
           "chance": 1.0 / max(int(num_classes), 1), "classifier": extractor.name,
           "num_synthetic": int(len(synthetic)),
           "per_class": {int(c): float(np.mean(pred[labels == c] == c))
                         for c in np.unique(labels)}}
    if real is not None:
        out["real"] = float(np.mean(extractor.classify(real) == np.asarray(real_labels)))
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One human-readable line per metric, the extractor named on each."""
    ex = result["extractor"]
    lines = [f"FID [{ex}]       {result['fid']['value']:.4f}",
             f"KID [{ex}]       {result['kid']['mean']:.6f} ± {result['kid']['std']:.6f}"]
    for m in ("precision", "recall", "density", "coverage"):
        lines.append(f"{m.capitalize()} [{ex}, k={result[m]['k']}] {result[m]['value']:.4f}")
    if result.get("warning"):
        lines.insert(0, f"WARNING: {result['warning']}")
    for kind, c in (result.get("controls") or {}).items():
        lines.append(f"control {kind:8s} [{ex}] FID {c['fid']['value']:.4f}, precision "
                     f"{c['precision']['value']:.4f}, recall {c['recall']['value']:.4f}  "
                     f"({c['description']})")
    acc = result.get("accuracy")
    if acc:
        lines.append(f"classifier accuracy on generated samples [{acc['classifier']}] "
                     f"{100 * acc['synthetic']:.2f}% (held-out real "
                     f"{100 * acc.get('real', float('nan')):.2f}%, chance "
                     f"{100 * acc['chance']:.1f}%)")
    rep = result.get("replication")
    if rep:
        lines.append(
            f"Replication [nearest by {rep['extractor']}] SSIM mean {rep['ssim_mean']:.4f}, max "
            f"{rep['ssim_max']:.4f}, near copies (SSIM > {rep['near_copy_threshold']}) "
            f"{100 * rep['near_copy_share']:.2f}%, NN distance mean {rep['nn_distance_mean']:.4f}"
        )
    return lines
