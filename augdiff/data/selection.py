"""Choosing and reading rows of a random-access source (a real split or a synthetic store).

- :func:`resolve_classes`: a class selection (names or ids) as sorted class ids;
- :func:`select_rows`: the rows of those classes, at most ``max_n`` of them (a seeded choice);
- :func:`load_images`: the images and labels of chosen rows.

The evaluation (:mod:`augdiff.metrics.evaluate`), the texture scales of the reference
extractor (:mod:`augdiff.metrics.features`) and the PCA stage read their images this way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm


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
    images, labels = [], []
    for i in tqdm(rows, desc="load images", leave=False, disable=len(rows) < 1000):
        rec = source[int(i)]
        images.append(np.asarray(rec["image"], np.uint8))
        labels.append(int(rec["label"]))
    if not images:
        raise ValueError("evaluate: no images selected")
    return np.stack(images), np.asarray(labels, np.int32)
