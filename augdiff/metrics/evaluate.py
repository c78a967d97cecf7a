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
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from augdiff import distributed
from augdiff.metrics.features import Extractor, get_extractor
from augdiff.metrics.fid import fid_from_features, kid
from augdiff.metrics.prdc import prdc
from augdiff.metrics.replication import replication


def resolve_classes(classes: Any, class_names: Sequence[str]) -> list[int] | None:
    """``''``/``None`` → all classes; else a comma-separated string or list of names or ids."""
    if classes is None or classes == "" or classes == ():
        return None
    items = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
    out = []
    for c in items:
        if isinstance(c, int) or (isinstance(c, str) and c.isdigit()):
            i = int(c)
            if not 0 <= i < len(class_names):
                raise ValueError(
                    f"evaluate.classes: class id {i} out of range 0..{len(class_names) - 1}")
            out.append(i)
        elif c in class_names:
            out.append(class_names.index(c))
        else:
            raise ValueError(
                f"evaluate.classes: unknown class {c!r}; known: {', '.join(class_names)}")
    return sorted(set(out))


def select_rows(labels: np.ndarray, classes: list[int] | None, max_n: int, seed: int) -> np.ndarray:
    """Rows whose label is in ``classes`` (all if None); at most ``max_n`` (0 = all), a seeded
    random choice, returned in increasing order."""
    rows = np.arange(len(labels)) if classes is None else np.flatnonzero(np.isin(labels, classes))
    if max_n and len(rows) > max_n:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_n, replace=False))
    return rows


def load_images(source: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 NHWC) and labels of ``rows`` of a random-access record source."""
    from tqdm.auto import tqdm

    images, labels = [], []
    for i in tqdm(rows, desc="load images", leave=False, disable=len(rows) < 1000):
        rec = source[int(i)]
        images.append(np.asarray(rec["image"], np.uint8))
        labels.append(int(rec["label"]))
    if not images:
        raise ValueError("evaluate: no images selected")
    return np.stack(images), np.asarray(labels, np.int32)


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
) -> dict[str, Any]:
    """Every metric of one comparison, each entry tagged ``extractor``."""
    name = extractor.name
    fr = extractor(real_images)
    fs = extractor(synthetic_images)
    out: dict[str, Any] = {"extractor": name, "feature_dim": int(fr.shape[1])}
    out["fid"] = {"value": fid_from_features(fr, fs), "extractor": name}
    out["kid"] = {**kid(fr, fs, key, num_subsets=kid_subsets, subset_size=kid_subset_size),
                  "extractor": name}
    pr = prdc(fr, fs, prdc_k, mesh=mesh)
    for m in ("precision", "recall", "density", "coverage"):
        out[m] = {"value": pr[m], "k": pr["k"], "extractor": name}
    if train_images is not None:
        ft = extractor(train_images) if nn_by == "feature" else None
        rep = replication(synthetic_images, train_images, fs, ft, nn_by=nn_by,
                          threshold=ssim_threshold, mesh=mesh)
        out["replication"] = {
            k: v for k, v in rep.items() if not isinstance(v, np.ndarray)
        } | {"extractor": name if nn_by == "feature" else "pixels", "num_train": len(train_images)}
    return out


def evaluate_store(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Compare ``config.evaluate.store`` with a real split; write ``workdir/metrics.json``."""
    from augdiff.data.sources import open_real_source
    from augdiff.data.store import SyntheticStore

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

    extractor = get_extractor(config.extractor, num_classes=real.num_classes, mesh=mesh)
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
    )
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
        os.makedirs(config.workdir, exist_ok=True)
        path = os.path.join(config.workdir, "metrics.json")
        tmp = path + f".tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One human-readable line per metric, the extractor named on each."""
    ex = result["extractor"]
    lines = [f"FID [{ex}]       {result['fid']['value']:.4f}",
             f"KID [{ex}]       {result['kid']['mean']:.6f} ± {result['kid']['std']:.6f}"]
    for m in ("precision", "recall", "density", "coverage"):
        lines.append(f"{m.capitalize()} [{ex}, k={result[m]['k']}] {result[m]['value']:.4f}")
    rep = result.get("replication")
    if rep:
        lines.append(
            f"Replication [nearest by {rep['extractor']}] SSIM mean {rep['ssim_mean']:.4f}, max "
            f"{rep['ssim_max']:.4f}, near copies (SSIM > {rep['near_copy_threshold']}) "
            f"{100 * rep['near_copy_share']:.2f}%, NN distance mean {rep['nn_distance_mean']:.4f}"
        )
    return lines
