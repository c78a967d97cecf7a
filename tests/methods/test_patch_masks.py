"""gdl_term's random masks (``mask='patches'``) against the definition, written here in numpy.

The definition (gdl_term ``augmentation/fractal_aug.py``, ``Utils.make_mask``, ratio 0.5):
``K ~ U{1..5}`` rectangles; areas ``round(T · Dirichlet(1_K))`` of the target ``T = ⌊A/2⌋``
(the last absorbs the rounding), each clipped to ``[max(1, ⌊0.05 A⌋), ⌊T/2⌋]``; each tries 50
times (aspect ``U[0.5, 2)``, ``h = ⌊√(area/aspect)⌋``, ``w = ⌊aspect · h⌋``, corner uniform)
and keeps the first try that overlaps nothing placed. The mask marks the generated pixels;
augdiff's ``M`` is its complement (1 = original). Compared: the distribution of the number of
rectangles placed and of the covered area, over many draws of each.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from augdiff.config import load_config
from augdiff.methods import hybrids
from augdiff.methods.diffusemix import hybrid_spec
from augdiff.pipeline.wiring import method_config

H = W = 16
N_JAX, N_REF = 600, 2000


def reference_mask(rng: np.random.Generator, height: int, width: int,
                   ratio: float = 0.5) -> tuple[np.ndarray, int]:
    total = width * height
    target = int(total * ratio)
    k = int(rng.integers(1, max(1, 5, int(ratio * 5)) + 1))
    areas = np.round(rng.dirichlet(np.ones(k)) * target).astype(int)
    areas[-1] += target - int(areas.sum())
    mask = np.zeros((height, width))
    placed = 0
    for a in areas:
        if a <= 0:
            continue
        a = int(np.clip(a, max(1, int(0.05 * total)), int(0.5 * target)))
        for _ in range(50):
            aspect = rng.uniform(0.5, 2.0)
            h = int(np.sqrt(a / aspect))
            w = int(aspect * h)
            h, w = max(1, min(h, height)), max(1, min(w, width))
            x = 0 if w == width else int(rng.integers(0, width - w + 1))
            y = 0 if h == height else int(rng.integers(0, height - h + 1))
            if np.all(mask[y:y + h, x:x + w] == 0):
                mask[y:y + h, x:x + w] = 1.0
                placed += 1
                break
    return mask, placed


def _reference(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    out = [reference_mask(rng, H, W) for _ in range(n)]
    return np.asarray([m.mean() for m, _ in out]), np.asarray([p for _, p in out])


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.union1d(a, b)
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def test_patch_masks_match_gdl_terms_area_distribution():
    ref_area, _ = _reference(N_REF)
    keys = jax.random.split(jax.random.PRNGKey(1), N_JAX)
    masks = np.asarray(hybrids.hybrid_masks(keys, H, W, kind="patches"))
    assert masks.shape == (N_JAX, H, W, 1) and set(np.unique(masks)) <= {0.0, 1.0}
    area = 1.0 - masks.reshape(N_JAX, -1).mean(1)  # generated share = gdl_term's mask
    # "about half the image": the definition's mean, not exactly 1/2 (one rectangle: 1/4)
    assert abs(area.mean() - ref_area.mean()) < 0.02, (area.mean(), ref_area.mean())
    assert 0.3 < ref_area.mean() < 0.5
    assert _ks(area, ref_area) < 0.1  # two-sample KS; the 1% critical value is ~0.07
    # the one-rectangle mask of the paper's text is a different distribution (always 1/2)
    one = 1.0 - np.asarray(hybrids.hybrid_masks(keys[:50], H, W, kind="random")).mean((1, 2, 3))
    assert _ks(one, ref_area) > 0.5


@pytest.fixture(scope="module")
def patches():
    keys = jax.random.split(jax.random.PRNGKey(2), N_JAX)
    m, placed = jax.jit(jax.vmap(lambda k: hybrids.random_patches(k, H, W)))(keys)
    return np.asarray(m), np.asarray(placed)


def test_patch_masks_place_one_to_five_rectangles_as_the_definition(patches):
    _, ref_count = _reference(N_REF)
    _, placed = patches
    assert placed.min() >= 1 and placed.max() <= 5
    got = np.bincount(placed, minlength=6)[1:] / N_JAX
    want = np.bincount(ref_count, minlength=6)[1:] / N_REF
    np.testing.assert_allclose(got, want, atol=0.06)
    assert want[0] < 0.35 and want[2:].sum() > 0.4  # several rectangles are the rule


def test_patch_masks_are_redrawn_per_key_and_cover_at_least_one_rectangle(patches):
    m, placed = patches
    assert len({m[i].tobytes() for i in range(N_JAX)}) > 0.95 * N_JAX  # fresh per pair key
    # the generated part covers at least the smallest allowed rectangle, never the image
    gen = 1.0 - m.reshape(N_JAX, -1).mean(1)
    assert np.all(gen >= int(0.05 * H * W) / (H * W) - 1e-6) and np.all(gen < 1.0)
    # at most T plus the clipping of up to 5 small areas up to 0.05 A each
    assert np.all(gen <= 0.5 + 5 * 0.05)
    # one rectangle covers at most T / 2 = A / 4 (the clip), so a mask of more must hold several
    assert np.all(placed[gen > 0.25] >= 2)


def test_the_random_patches_row_generates_with_patch_masks(repo_root):
    """The seed 000 row ``random_patches`` (and its reduced ``cpu-`` form) reaches the
    generator as ``hybrid.mask = 'patches'``; the paper's ``random`` row keeps one rectangle."""
    for variant, mask in (("random_patches", "patches"), ("cpu-random_patches", "patches"),
                          ("random", "random")):
        c = load_config(str(repo_root / f"augdiff/configs/exp_seed000_diffusemix.py:{variant}"))
        c.workdir = "/nonexistent/run"
        spec, _ = hybrid_spec(method_config(c).diffusemix.hybrid)
        assert spec.mask == mask, variant
