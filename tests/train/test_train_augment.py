"""Training-time augmentation (``augdiff.train.classifier.augment_batch``): CutMix alone, Mixup
alone, and the per-batch Mixup-or-CutMix choice when both are enabled (timm's rule).

Rows are constant images with distinct values, so every output pixel names the row it came
from: a CutMix row must take its pixels from at most two rows, the foreign ones filling one
axis-aligned box, and its soft label must be exactly the pixel shares (Yun et al. 2019, eq. 1
with λ the realised area); a Mixup row is the constant λ v_b + (1 − λ) v_j with the same λ in
its label (Zhang et al. 2018).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from augdiff.train.classifier import augment_batch

N, H, W = 6, 12, 10
VALUES = np.linspace(-0.75, 0.75, N).astype(np.float32)  # row b is the constant VALUES[b]


def _batch():
    x = jnp.asarray(np.broadcast_to(VALUES[:, None, None, None], (N, H, W, 3)).copy())
    y = jnp.eye(N, dtype=jnp.float32)  # row b has class b
    return x, y


def _kind(xo: np.ndarray, yo: np.ndarray) -> str:
    """'cutmix', 'mixup' or 'either' (the row is unchanged: partner = itself or an empty box)
    for one output row, asserting the defining property of that kind."""
    assert np.allclose(xo, xo[..., :1])  # the same on every channel
    flat = xo[..., 0].ravel()
    if np.isclose(yo.max(), 1.0):
        np.testing.assert_allclose(flat, VALUES[np.argmax(yo)], atol=1e-6)
        return "either"
    src = np.abs(flat[:, None] - VALUES[None, :]).argmin(1)
    if np.allclose(flat, VALUES[src], atol=1e-6) and len(np.unique(src)) == 2:
        share = np.bincount(src, minlength=N) / flat.size
        np.testing.assert_allclose(yo, share, atol=1e-6)  # labels = realised pixel shares
        grid = src.reshape(H, W)
        boxed = []
        for owner in np.unique(src):
            rows, cols = np.nonzero(grid == owner)
            boxed.append(bool((grid[rows.min():rows.max() + 1,
                                    cols.min():cols.max() + 1] == owner).all()))
        assert any(boxed), "the pasted pixels do not form an axis-aligned box"
        return "cutmix"
    # mixup: a constant image, the label's convex combination of two rows
    assert np.allclose(flat, flat[0], atol=1e-6), "neither a box paste nor a global mix"
    assert np.count_nonzero(yo > 1e-7) == 2 and np.isclose(yo.sum(), 1.0)
    np.testing.assert_allclose(flat[0], yo @ VALUES, atol=1e-5)
    return "mixup"


def _kinds(aug: dict, seeds) -> list[list[str]]:
    x, y = _batch()
    out = []
    for s in seeds:
        xo, yo = augment_batch(jax.random.key(s), x, y, aug)
        xo, yo = np.asarray(xo), np.asarray(yo)
        out.append([_kind(xo[b], yo[b]) for b in range(N)])
    return out


def test_cutmix_alone_pastes_one_box_with_area_weighted_labels():
    aug = {"crop_flip": False, "cutmix_alpha": 1.0}
    kinds = [k for row in _kinds(aug, range(12)) for k in row]
    assert set(kinds) <= {"cutmix", "either"} and kinds.count("cutmix") >= N * 6


def test_mixup_alone():
    kinds = [k for row in _kinds({"crop_flip": False, "mixup_alpha": 0.4}, range(4)) for k in row]
    assert set(kinds) <= {"mixup", "either"} and kinds.count("mixup") >= N * 2


def test_both_enabled_pick_one_per_batch_about_half_the_time():
    kinds = _kinds({"crop_flip": False, "mixup_alpha": 0.4, "cutmix_alpha": 1.0}, range(40))
    per_batch = [set(row) - {"either"} for row in kinds]
    assert all(len(s) <= 1 for s in per_batch), "one of Mixup/CutMix per batch, not per row"
    n_cut, n_mix = (sum(s == {k} for s in per_batch) for k in ("cutmix", "mixup"))
    assert n_cut + n_mix >= 36 and 10 <= n_cut <= 30, (n_cut, n_mix)  # Bernoulli(1/2)
