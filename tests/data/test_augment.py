"""On-device augmentation (crop/flip, CutOut, Mixup, CutMix) and the IFS fractal generator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augdiff.data import augment
from augdiff.data.fractal import fractal_images

N, H, W, C = 8, 8, 8, 3


@pytest.fixture(scope="module")
def images() -> jax.Array:
    """Distinct values in (0.1, 1]: no pixel collides with the fill value 0."""
    return jax.random.uniform(jax.random.key(0), (N, H, W, C), minval=0.1, maxval=1.0)


def test_random_crop_flip_is_a_padded_shift_or_its_mirror(images):
    pad, fill = 2, -7.0
    x = np.asarray(images)
    out = np.asarray(augment.random_crop_flip(jax.random.key(1), images, pad=pad, fill=fill))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    seen = set()
    for i in range(N):
        hits = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if np.array_equal(
                out[i],
                padded[i, dy : dy + H, dx : dx + W][:, ::-1] if flip
                else padded[i, dy : dy + H, dx : dx + W],
            )
        ]  # fmt: skip
        assert len(hits) == 1, i
        seen.add(hits[0])
        # modulo padding, the row keeps a sub-multiset of its own pixels
        kept = np.sort(out[i][out[i] != fill])
        assert np.isin(kept, x[i]).all()
    assert len(seen) > 2  # offsets and flips actually vary
    again = augment.random_crop_flip(jax.random.key(1), images, pad=pad, fill=fill)
    np.testing.assert_array_equal(out, again)


def test_cutout_zeroes_size_squared_region(images):
    size = 4
    keys = jax.random.split(jax.random.key(2), 50)
    outs = np.asarray(jax.vmap(lambda k: augment.cutout(k, images, size))(keys))
    zeroed = (outs == 0).all(-1).sum((-1, -2))  # [keys, N] pixels set to 0
    assert (zeroed <= size * size).all() and (zeroed > 0).all()
    assert (zeroed == size * size).mean() > 0.2  # centres inside happen often
    for out, z in zip(outs.reshape(-1, H, W, C), zeroed.reshape(-1), strict=True):
        ys, xs = np.nonzero((out == 0).all(-1))
        assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) == z  # one rectangle
        if z == size * size:
            assert ys.max() - ys.min() + 1 == size and xs.max() - xs.min() + 1 == size
    untouched = (outs != 0).all(-1)
    x = np.broadcast_to(np.asarray(images), outs.shape)
    np.testing.assert_array_equal(outs[untouched], x[untouched])


def _identity_batch():
    x = jnp.broadcast_to(jnp.arange(1.0, N + 1)[:, None, None, None], (N, H, W, C))
    return x, jnp.eye(N)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_distribution_and_consistency(alpha):
    x, y = _identity_batch()
    keys = jax.random.split(jax.random.key(3), 4000)
    xm, ym = jax.vmap(lambda k: augment.mixup(k, x, y, alpha))(keys)
    xm, ym = np.asarray(xm), np.asarray(ym)
    np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)
    # row 0 (label 0, pixel value 1) mixed with partner j: y = λe_0 + (1−λ)e_j
    j = 1 + np.argmax(ym[:, 0, 1:], axis=-1)
    mixed = ym[np.arange(len(j)), 0, j] > 0  # not paired with itself
    lam = ym[:, 0, 0][mixed]
    # the image uses the same λ: x = λ·1 + (1−λ)·(j+1)
    np.testing.assert_allclose(xm[mixed, 0, 0, 0, 0], lam + (1 - lam) * (j[mixed] + 1), rtol=1e-5)
    # Beta(α, α): mean 1/2, variance 1 / (4(2α + 1))
    assert abs(lam.mean() - 0.5) < 0.02
    assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.01


def test_cutmix_area_matches_label_weight():
    x, y = _identity_batch()
    keys = jax.random.split(jax.random.key(4), 1000)
    xm, ym = jax.vmap(lambda k: augment.cutmix(k, x, y, 1.0))(keys)
    src = np.asarray(xm)[..., 0].astype(int) - 1  # [K, N, H, W]: the row each pixel came from
    ym = np.asarray(ym)
    own = np.arange(N)[None, :, None, None]
    from_other = src != own
    frac = from_other.mean((-1, -2))  # realised pasted area, [K, N]
    partner = np.where(from_other, src, -1).max((-1, -2))
    assert (np.where(from_other, src == partner[..., None, None], True)).all()  # one partner
    k_idx, i_idx = np.nonzero(frac > 0)
    # label weights are exactly the realised areas: 1 − λ' for the partner, λ' for itself
    pasted = ym[k_idx, i_idx, partner[k_idx, i_idx]]
    np.testing.assert_allclose(pasted, frac[k_idx, i_idx], atol=1e-6)
    np.testing.assert_allclose(ym[..., np.arange(N), np.arange(N)], 1 - frac, atol=1e-6)
    # the pasted region is one axis-aligned box, the same for the whole batch
    rows, cols = from_other.any(-1), from_other.any(-2)
    box = rows[..., :, None] & cols[..., None, :]
    np.testing.assert_array_equal(box[frac > 0], from_other[frac > 0])
    # E[1 − λ] = 1/2 for Beta(1, 1); the box is floored and clipped at the border, so less
    assert 0.2 < frac.mean() < 0.5


def test_augment_errors(images):
    with pytest.raises(ValueError, match="alpha > 0"):
        augment.mixup(jax.random.key(0), images, jnp.eye(N), 0.0)
    with pytest.raises(ValueError, match="NHWC"):
        augment.cutout(jax.random.key(0), images[0], 2)


def test_normalize_range():
    u8 = jnp.array([0, 128, 255], jnp.uint8)
    np.testing.assert_allclose(augment.normalize(u8), [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-6)
    np.testing.assert_allclose(augment.normalize(u8, zero_centered=False), [0, 128 / 255, 1])


@pytest.mark.slow
def test_fractals_deterministic_in_range_any_size():
    a = fractal_images(jax.random.key(7), 3, 24, num_points=4096)
    b = fractal_images(jax.random.key(7), 3, 24, num_points=4096)
    c = fractal_images(jax.random.key(8), 3, 24, num_points=4096)
    assert a.shape == (3, 24, 24, 3) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    a = np.asarray(a)
    assert a.min() >= 0.0 and a.max() <= 1.0
    lit = (a.max(-1) > 0).mean((1, 2))
    assert ((lit > 0.01) & (lit < 0.9)).all()  # a shape on a black background
    assert np.abs(a[0] - a[1]).mean() > 0.01  # the n fractals differ
    big = np.asarray(fractal_images(jax.random.key(7), 3, 40, num_points=4096))
    assert big.shape == (3, 40, 40, 3) and big.max() > 0.5
