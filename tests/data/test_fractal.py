"""IFS fractal internals (``augdiff.data.fractal``): contractive random maps, the chaos game
on an IFS with a known attractor (the Sierpinski gasket), and the splat renderer.

Barnsley's chaos game: for contractive affine maps f_k(p) = A_k p + b_k picked with
probabilities p_k, the iterates converge to the attractor at the rate of the contraction. For
f_k(p) = (p + v_k)/2 with v the corners (0,0), (1,0), (0,1), the attractor is the Sierpinski
gasket, whose level-d approximation is the union of the 3^d lower-left triangles
{x ≥ i/2^d, y ≥ j/2^d, x + y ≤ (i + j + 1)/2^d} with ``i & j == 0``; every one of them carries
attractor mass 3^-d.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from augdiff.data.fractal import MAX_MAPS, chaos_game, render, sample_ifs


def test_sample_ifs_maps_are_contractive_with_det_weighted_probabilities():
    active_counts = set()
    for s in range(64):
        ifs = jax.device_get(sample_ifs(jax.random.key(s), MAX_MAPS))
        a, logp = np.asarray(ifs["A"], np.float64), np.asarray(ifs["logp"], np.float64)
        assert a.shape == (MAX_MAPS, 2, 2) and ifs["b"].shape == (MAX_MAPS, 2)
        # every map contracts: largest singular value < 1 (so the attractor exists)
        assert np.linalg.svd(a, compute_uv=False).max() < 1.0
        active = np.isfinite(logp)
        k = int(active.sum())
        assert 2 <= k <= MAX_MAPS and active[:k].all()  # the first k maps are used
        active_counts.add(k)
        # probabilities ∝ |det A_k| over the active maps (Barnsley's area rule)
        p = np.exp(logp[active] - logp[active].max())
        det = np.abs(np.linalg.det(a[active]))
        np.testing.assert_allclose(p / p.sum(), det / det.sum(), rtol=1e-4)
        col = np.asarray(ifs["colour"])
        assert col.shape == (MAX_MAPS, 3) and (col > 0).all() and (col <= 1).all()
    assert active_counts == set(range(2, MAX_MAPS + 1))


def _sierpinski():
    v = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    return {"A": jnp.asarray(np.broadcast_to(0.5 * np.eye(2, dtype=np.float32), (3, 2, 2))),
            "b": jnp.asarray(v / 2), "logp": jnp.log(jnp.full(3, 1 / 3)),
            "colour": jnp.eye(3)}


def _level_cells(points: np.ndarray, d: int, tol: float = 1e-5) -> np.ndarray:
    """Index i·2^d + j of a level-d gasket triangle containing each point (within tol), or -1."""
    n = 2**d
    out = np.full(len(points), -1)
    for dx in (-tol, tol):
        for dy in (-tol, tol):
            i = np.floor((points[:, 0] + dx) * n).astype(int)
            j = np.floor((points[:, 1] + dy) * n).astype(int)
            inside = ((i >= 0) & (j >= 0) & (i < n) & (j < n) & ((i & j) == 0)
                      & (points.sum(1) <= (i + j + 1) / n + 2 * tol))
            out = np.where((out < 0) & inside, i * n + j, out)
    return out


def test_chaos_game_stays_on_and_covers_the_sierpinski_gasket():
    pts, cols = chaos_game(jax.random.key(0), _sierpinski(), num_chains=128, steps=88,
                           burn_in=24)
    pts, cols = np.asarray(pts, np.float64), np.asarray(cols)
    assert pts.shape == (128 * 64, 2) and cols.shape == (128 * 64, 3)
    # on the attractor: inside a level-10 triangle (after 24 halvings the start is forgotten)
    assert (_level_cells(pts, 10) >= 0).all()
    # covering it: every one of the 3^5 level-5 triangles is visited
    hit = np.unique(_level_cells(pts, 5))
    assert len(hit) == 3**5
    # colours are the running average 0.5 (c + colour_k): all three maps are used, none dominates
    share = cols.mean(0) / cols.mean(0).sum()
    np.testing.assert_allclose(share, 1 / 3, atol=0.03)


def test_render_splats_log_density_times_mean_colour():
    # three points at (0,0) (colours red, red, blue) and one at (1,1) (green); no margin
    pts = jnp.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    cols = jnp.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    img = np.asarray(render(pts, cols, 4, margin=0.0))
    want = np.zeros((4, 4, 3))
    want[3, 0] = np.array([2 / 3, 0, 1 / 3]) * 1.0  # bottom-left (y up), density 3 = max
    want[0, 3] = np.array([0, 1, 0]) * np.log1p(1) / np.log1p(3)  # top-right, density 1
    np.testing.assert_allclose(img, want, atol=1e-5)
    # the Sierpinski attractor: every level-4 gasket pixel is lit, the pixels wholly outside
    # the gasket (beyond the hypotenuse, or inside the central hole) stay dark
    pts, cols = chaos_game(jax.random.key(1), _sierpinski(), 64, 88, 24)
    img = np.asarray(render(pts, jnp.ones_like(cols), 16, margin=0.0))
    lit = img.max(-1)[::-1].T > 0  # lit[i, j]: x cell i, y cell j (rows are y up)
    i, j = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    assert lit[(i & j) == 0].all()
    outside = (i + j >= 17) | ((i <= 6) & (j <= 6) & (i + j >= 9))
    assert outside.sum() > 100 and not lit[outside].any()
