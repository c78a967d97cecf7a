"""Deterministic training subsets: N images per class, and long-tailed (LT) profiles.

Long-tailed subsets follow the exponential profile of CIFAR-10/100-LT (Cao et al., 2019,
"LDAM") and ImageNet-LT (Liu et al., 2019): with ``C`` classes, head size ``n_max`` and
imbalance factor ``IF = n_max / n_min``,

    n_c = ⌊ n_max · IF^(−c / (C − 1)) ⌋,        c = 0, …, C − 1,

so class 0 keeps ``n_max`` images and class ``C − 1`` keeps ``n_max / IF``.

Every function is a pure function of the label array and an integer seed; the chosen rows
are returned sorted, so a subset is the same whatever order the classes were listed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def long_tailed_counts(n_max: int, num_classes: int, imbalance_factor: float) -> np.ndarray:
    """Per-class counts ``n_c = ⌊n_max · IF^(−c/(C−1))⌋`` (at least 1 image per class)."""
    if n_max <= 0:
        raise ValueError(f"long-tailed counts: n_max must be > 0, got {n_max}")
    if num_classes <= 0:
        raise ValueError(f"long-tailed counts: num_classes must be > 0, got {num_classes}")
    if imbalance_factor < 1.0:
        raise ValueError(f"imbalance_factor must be >= 1 (n_max / n_min), got {imbalance_factor}")
    if num_classes == 1:
        return np.array([n_max], np.int64)
    c = np.arange(num_classes, dtype=np.float64)
    counts = np.floor(n_max * imbalance_factor ** (-c / (num_classes - 1)) + 1e-9)
    return np.maximum(counts, 1).astype(np.int64)


def _class_rows(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    labels = np.asarray(labels)
    return [np.flatnonzero(labels == c) for c in range(num_classes)]


def shortfalls(labels: np.ndarray, counts: np.ndarray,
               class_names: Sequence[str] | None = None) -> list[str]:
    """One line per class with fewer images than ``counts`` asks for (naming the class and
    the flags that fix it); empty when every class has enough."""
    out = []
    for c, rows in enumerate(_class_rows(labels, len(counts))):
        n = int(counts[c])
        if n > len(rows):
            name = f"{class_names[c]!r} ({c})" if class_names is not None else str(c)
            out.append(f"subset: class {name} has {len(rows)} images, {n} requested; lower "
                       "data.per_class, or set data.per_class=0 to use every image")
    return out


def subset_by_counts(labels: np.ndarray, counts: np.ndarray, seed: int,
                     class_names: Sequence[str] | None = None) -> np.ndarray:
    """Sorted row indices holding ``counts[c]`` rows of class ``c``, chosen uniformly from ``seed``.

    Class ``c`` draws from its own stream ``default_rng([seed, c])``, so the rows picked for a
    class do not depend on the other classes' counts. A class with too few images is a
    ``ValueError`` naming it (``class_names``) and ``data.per_class=0``.
    """
    counts = np.asarray(counts, np.int64)
    short = shortfalls(labels, counts, class_names)
    if short:
        raise ValueError(short[0] + (f" (and {len(short) - 1} more classes)"
                                     if len(short) > 1 else ""))
    out = []
    for c, rows in enumerate(_class_rows(labels, len(counts))):
        n = int(counts[c])
        perm = np.random.default_rng([int(seed), c]).permutation(len(rows))
        out.append(rows[perm[:n]])
    return np.sort(np.concatenate(out)) if out else np.zeros((0,), np.int64)


def per_class_subset(
    labels: np.ndarray, per_class: int, seed: int, num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """``per_class`` rows of every class (few-shot / low-data regimes)."""
    if per_class <= 0:
        raise ValueError(f"per_class must be > 0, got {per_class}")
    num_classes = int(np.max(labels)) + 1 if num_classes is None else num_classes
    return subset_by_counts(labels, np.full(num_classes, per_class), seed, class_names)


def long_tailed_subset(
    labels: np.ndarray,
    imbalance_factor: float,
    seed: int,
    n_max: int | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Rows following the exponential LT profile; ``n_max`` defaults to the smallest class size."""
    num_classes = int(np.max(labels)) + 1 if num_classes is None else num_classes
    sizes = np.array([len(r) for r in _class_rows(labels, num_classes)])
    n_max = int(sizes.min()) if n_max is None or n_max <= 0 else int(n_max)
    return subset_by_counts(labels, long_tailed_counts(n_max, num_classes, imbalance_factor), seed,
                            class_names)


def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` rows of every class, in the source's order (seed 004 App. A.1: "we use
    the first n samples", rather than a seeded random draw); sorted row indices."""
    labels = np.asarray(labels)
    keep = [np.flatnonzero(labels == c)[:n] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros((0,), np.int64)


def select_subset(
    labels: np.ndarray,
    *,
    per_class: int = 0,
    imbalance_factor: float = 1.0,
    seed: int = 0,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    first: int = 0,
) -> np.ndarray | None:
    """The rows a data config asks for, or ``None`` for "all rows".

    ``per_class > 0`` alone: N per class. ``imbalance_factor > 1``: long-tailed with
    ``n_max = per_class`` (or the smallest class size when ``per_class == 0``). ``first > 0``:
    the first ``first`` rows of each class (:func:`first_per_class`), not a random draw.
    """
    if first:
        if per_class or (imbalance_factor is not None and imbalance_factor > 1.0):
            raise ValueError("set data.per_class / data.imbalance_factor (a seeded random "
                             "subset) or data.first_per_class (the first n), not both")
        return first_per_class(labels, int(first))
    if imbalance_factor is None or imbalance_factor <= 1.0:
        if imbalance_factor is not None and imbalance_factor < 1.0:
            raise ValueError(f"imbalance_factor must be >= 1, got {imbalance_factor}")
        if not per_class:
            return None
        return per_class_subset(labels, per_class, seed, num_classes, class_names)
    return long_tailed_subset(labels, imbalance_factor, seed, per_class or None, num_classes,
                              class_names)


def requested_counts(labels: np.ndarray, *, per_class: int = 0, imbalance_factor: float = 1.0,
                     num_classes: int) -> np.ndarray | None:
    """What :func:`select_subset` would ask of each class (None: all rows)."""
    if imbalance_factor is None or imbalance_factor <= 1.0:
        return np.full(num_classes, per_class, np.int64) if per_class else None
    sizes = np.array([len(r) for r in _class_rows(labels, num_classes)])
    n_max = int(per_class) if per_class and per_class > 0 else int(sizes.min())
    return long_tailed_counts(max(n_max, 1), num_classes, imbalance_factor)
