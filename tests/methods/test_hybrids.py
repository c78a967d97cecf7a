"""DiffuseMix hybrids, masks, mask policies and fractal blending (issue 5, Must-show 1-2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augdiff.methods import hybrids as H

SIZES = [(32, 32), (16, 24), (15, 9)]


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("orientation", ["vertical", "horizontal"])
@pytest.mark.parametrize("ramp", [0.0, 2.0, 4.0, 3.0])
def test_concat_replaces_exactly_half(height, width, orientation, ramp):
    m = np.asarray(H.concat_mask(height, width, orientation=orientation, ramp=ramp))
    n = height * width
    # The generated image gets exactly half of the pixel mass ...
    assert np.isclose((1.0 - m).sum(), n / 2, atol=1e-4)
    # ... and, away from the ramp, exactly as many pixels are original as generated.
    assert (m == 1).sum() == (m == 0).sum()
    # Every soft pixel lies within ramp/2 of the seam (pixel centre i + 1/2 vs L/2).
    length = height if orientation == "vertical" else width
    line = m[:, 0] if orientation == "vertical" else m[0, :]
    centres = np.arange(length) + 0.5
    soft = (line > 0) & (line < 1)
    assert np.all(np.abs(centres[soft] - length / 2) <= max(ramp / 2, 0.5))
    # Original first (top / left), generated last, monotone across the seam.
    assert line[0] == 1 and line[-1] == 0 and np.all(np.diff(line) <= 0)
    # Constant along the other axis.
    assert np.all(m == (line[:, None] if orientation == "vertical" else line[None, :]))
    if ramp == 0 and length % 2 == 0:
        assert set(np.unique(m)) == {0.0, 1.0}


def test_seam_profile_closed_form():
    # L = 8, r = 2: centres 0.5..7.5, seam 4 -> clip(1/2 - (u - 4)/2) = [1,1,1,.75,.25,0,0,0].
    np.testing.assert_allclose(
        H.seam_profile(8, 2.0), [1, 1, 1, 0.75, 0.25, 0, 0, 0], atol=1e-7
    )
    # Odd length, hard cut: the centre row is shared 1/2 - 1/2.
    np.testing.assert_allclose(H.seam_profile(5, 0.0), [1, 1, 0.5, 0, 0])


@pytest.mark.parametrize("height,width", [(32, 32), (17, 10), (8, 30)])
def test_random_rectangles_cover_half_the_area(height, width):
    keys = jax.random.split(jax.random.key(0), 400)
    rects = jax.vmap(lambda k: H.half_rectangle(k, height, width))(keys)
    y0, x0, h, w = (np.asarray(a) for a in rects)
    masks = np.asarray(jax.vmap(lambda k: H.random_half_mask(k, height, width))(keys))
    area = masks.sum(axis=(1, 2))
    np.testing.assert_array_equal(area, h * w)
    # Half the area exactly, or within one row / column of the rectangle (here: half of one).
    err = np.abs(area - height * width / 2)
    assert np.all(err <= np.maximum(h, w) / 2 + 1e-9)
    # A single axis-aligned rectangle that fits in the image.
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    np.testing.assert_array_equal(masks, rows[:, :, None] & cols[:, None, :])
    assert np.all((y0 >= 0) & (y0 + h <= height) & (x0 >= 0) & (x0 + w <= width))
    np.testing.assert_array_equal(rows.sum(1), h)
    np.testing.assert_array_equal(cols.sum(1), w)
    # Both shapes (tall and wide) occur on a square image; corners vary along both axes.
    if height == width:
        assert (h > w).any() and (w > h).any()
    full_h = h == height
    if full_h.any():
        assert np.all(y0[full_h] == 0)
    assert len(np.unique(x0)) > 1 and len(np.unique(y0)) > 1


def test_random_rectangle_placement_is_uniform():
    # 32x32: with h = 32 the width is 16 and x0 is uniform on {0..16}; chi-square over 17 cells.
    keys = jax.random.split(jax.random.key(1), 6000)
    rects = jax.vmap(lambda k: H.half_rectangle(k, 32, 32))(keys)
    y0, x0, h, w = (np.asarray(a) for a in rects)
    sel = (h == 32) & (w == 16)
    counts = np.bincount(x0[sel], minlength=17)
    assert counts.shape == (17,) and counts.min() > 0
    expected = sel.sum() / 17
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 45.0  # chi-square(16) 99.95th percentile is about 42.5


def test_mask_policies_online_vs_offline():
    key = jax.random.key(7)
    pairs = jnp.arange(16)

    def masks(kind, policy, epoch):
        ks = H.pair_keys(key, pairs, policy=policy, epoch=epoch)
        return np.asarray(H.hybrid_masks(ks, 32, 32, kind=kind, orientation="random"))

    for kind in ("random", "concat"):
        off0, off1 = masks(kind, "offline", 0), masks(kind, "offline", 5)
        np.testing.assert_array_equal(off0, off1)  # fixed forever for the pair
        on0, on1 = masks(kind, "online", 0), masks(kind, "online", 1)
        np.testing.assert_array_equal(on0, masks(kind, "online", 0))  # reproducible
        # Every batch mask gives the generated image half the area (±half a row/column).
        assert np.all(np.abs((1 - on1).sum(axis=(1, 2, 3)) - 512) <= 16)
        changed = np.any(on0 != on1, axis=(1, 2, 3))
        # Redrawn per epoch: random rectangles almost surely differ for every pair; concat
        # orientations flip for about half of the pairs.
        assert changed.mean() >= (0.9 if kind == "random" else 0.2)
    # The same pair id gives the same key irrespective of its position in the batch.
    a = H.pair_keys(key, jnp.array([3, 9]), policy="online", epoch=2)
    b = H.pair_keys(key, jnp.array([9, 3]), policy="online", epoch=2)
    np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b)[::-1])
    with pytest.raises(ValueError, match="epoch"):
        H.pair_keys(key, pairs, policy="online")
    with pytest.raises(ValueError, match="policy"):
        H.pair_keys(key, pairs, policy="sometimes")


def test_compose_takes_original_where_mask_is_one():
    o = jnp.full((2, 8, 8, 3), 0.7)
    g = jnp.full((2, 8, 8, 3), -0.3)
    m = H.hybrid_masks(jax.random.split(jax.random.key(0), 2), 8, 8, kind="concat", ramp=2.0)
    out = np.asarray(H.compose(m, o, g))
    m3 = np.broadcast_to(np.asarray(m), out.shape)
    np.testing.assert_allclose(out, m3 * 0.7 + (1 - m3) * -0.3, atol=1e-6)
    np.testing.assert_allclose(out.mean(), (0.7 - 0.3) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        H.compose(m, o, g[:, :4])


@pytest.fixture(scope="module")
def batch():
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    o = jax.random.uniform(k1, (12, 16, 16, 3), minval=-1, maxval=1)
    g = jax.random.uniform(k2, (12, 16, 16, 3), minval=-1, maxval=1)
    bank = jax.random.uniform(k3, (5, 16, 16, 3), minval=-1, maxval=1)
    return o, g, bank, jnp.arange(100, 112)


def test_fractal_lambda_interval_and_label_scaling(batch):
    o, g, bank, ids = batch
    alpha, beta = 0.1, 0.35
    keys = H.pair_keys(jax.random.key(0), jnp.arange(5000), policy="offline")
    lam = np.asarray(H.draw_lambda(keys, (alpha, beta)))
    assert np.all((lam >= alpha) & (lam <= beta))
    assert abs(lam.mean() - (alpha + beta) / 2) < 0.01 and lam.std() > 0.05
    np.testing.assert_array_equal(np.asarray(H.draw_lambda(keys[:3], 0.2)), np.float32(0.2))

    spec = H.DiffuseMixSpec(mask="random", lam=(alpha, beta), label_scaling=True)
    key = jax.random.key(11)
    x, w = H.diffusemix(key, o, g, ids, bank, spec=spec)
    # Recompute every piece from the public building blocks: closed form C = (1-λ)H + λF.
    pk = H.pair_keys(key, ids, policy="offline")
    lam = H.draw_lambda(pk, (alpha, beta))
    m = H.hybrid_masks(pk, 16, 16, kind="random")
    f = H.pick_fractals(pk, bank, 16, 16)
    hyb = np.asarray(m) * np.asarray(o) + (1 - np.asarray(m)) * np.asarray(g)
    lam_np = np.asarray(lam)[:, None, None, None]
    np.testing.assert_allclose(x, (1 - lam_np) * hyb + lam_np * np.asarray(f), atol=1e-5)
    # Scaled targets equal 1 - λ (the BCE target of the true class).
    np.testing.assert_allclose(w, 1 - np.asarray(lam), atol=1e-7)
    assert np.all((np.asarray(w) >= 1 - beta - 1e-6) & (np.asarray(w) <= 1 - alpha + 1e-6))
    # Each fractal is one of the bank's images.
    fb = np.asarray(f).reshape(12, 1, -1)
    assert np.all(np.min(np.abs(fb - np.asarray(bank).reshape(1, 5, -1)).max(-1), axis=1) == 0)

    _, w_plain = H.diffusemix(key, o, g, ids, bank, spec=H.DiffuseMixSpec(lam=0.2))
    np.testing.assert_array_equal(w_plain, 1.0)
    _, w_fixed = H.diffusemix(key, o, g, ids, bank, spec=H.DiffuseMixSpec(label_scaling=True))
    np.testing.assert_allclose(w_fixed, 0.8, atol=1e-7)


def test_diffusemix_online_changes_with_epoch_offline_does_not(batch):
    o, g, bank, ids = batch
    key = jax.random.key(5)
    off = H.DiffuseMixSpec(mask="random", policy="offline", lam=(0.0, 0.4))
    on = H.DiffuseMixSpec(mask="random", policy="online", lam=(0.0, 0.4))
    np.testing.assert_array_equal(
        H.diffusemix(key, o, g, ids, bank, spec=off, epoch=0)[0],
        H.diffusemix(key, o, g, ids, bank, spec=off, epoch=3)[0],
    )
    a = np.asarray(H.diffusemix(key, o, g, ids, bank, spec=on, epoch=0)[0])
    b = np.asarray(H.diffusemix(key, o, g, ids, bank, spec=on, epoch=1)[0])
    assert np.all(np.any(a != b, axis=(1, 2, 3)))
    # Without fractals the hybrid is exactly half original, half generated (pixel mass).
    nofrac = H.DiffuseMixSpec(mask="concat", orientation="random", fractal=False)
    ones, zeros = jnp.ones_like(o), jnp.zeros_like(g)
    hyb, w = H.diffusemix(key, ones, zeros, ids, spec=nofrac)
    np.testing.assert_allclose(np.asarray(hyb).mean(axis=(1, 2, 3)), 0.5, atol=1e-6)
    np.testing.assert_array_equal(w, 1.0)


def test_spec_validation_and_config():
    with pytest.raises(ValueError, match="mask"):
        H.DiffuseMixSpec(mask="diagonal")
    with pytest.raises(ValueError, match="lam"):
        H.DiffuseMixSpec(lam=(0.5, 0.2))
    with pytest.raises(ValueError, match="label_scaling"):
        H.DiffuseMixSpec(fractal=False, label_scaling=True)
    cfg = {"mask": "random", "policy": "online", "lam_min": 0.1, "lam_max": 0.3}
    spec = H.spec_from_config(cfg)
    assert spec == H.DiffuseMixSpec(mask="random", policy="online", lam=(0.1, 0.3))
    with pytest.raises(ValueError, match="unknown"):
        H.spec_from_config({"mask": "random", "lamda": 0.2})
    o = jnp.zeros((2, 8, 8, 3))
    with pytest.raises(ValueError, match="fractal bank"):
        H.diffusemix(jax.random.key(0), o, o, jnp.arange(2), spec=H.DiffuseMixSpec())
    with pytest.raises(ValueError, match="pair_ids"):
        H.diffusemix(jax.random.key(0), o, o, jnp.arange(3), spec=H.DiffuseMixSpec(fractal=False))


def test_to_uint8_round_trip():
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    x = u.astype(np.float32) / 127.5 - 1.0
    np.testing.assert_array_equal(H.to_uint8(x), u)
    np.testing.assert_array_equal(H.to_uint8(u / 255.0, (0.0, 1.0)), u)


def _store_bytes(root):
    import pathlib

    # the shards and sidecars (not the manifests, which record versions, nor the writer's lock
    # file, which records its pid and start time)
    files = sorted(p for p in pathlib.Path(root).iterdir()
                   if not p.name.startswith(("manifest", ".writer-p")))
    return {p.name: p.read_bytes() for p in files}


def test_write_hybrids_offline_store_is_reproducible(tmp_path):
    from augdiff.data.store import StoreWriter, SyntheticStore

    rng = np.random.default_rng(0)
    n = 10
    orig = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    gen = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, n)
    ids = np.arange(100, 100 + n)
    bank = jax.random.uniform(jax.random.key(9), (3, 8, 8, 3), minval=-1, maxval=1)
    spec = H.DiffuseMixSpec(mask="random", lam=(0.1, 0.3), label_scaling=True)
    key = jax.random.key(4)
    kw = dict(key=key, spec=spec, fractals=bank, batch_size=4, progress=False)

    for name in ("a", "a2"):
        with StoreWriter(tmp_path / name, method="diffusemix-hybrid", shard_size=4) as w:
            assert H.write_hybrids(w, orig, gen, labels, ids, **kw) == n
    # The same key and pairs give the same store, byte for byte.
    shards = _store_bytes(tmp_path / "a")
    assert len(shards) >= 3 and shards == _store_bytes(tmp_path / "a2")
    # A run killed after 6 pairs and resumed writes the same bytes as the uninterrupted one.
    with StoreWriter(tmp_path / "b", method="diffusemix-hybrid", shard_size=3) as w:
        H.write_hybrids(w, orig[:6], gen[:6], labels[:6], ids[:6], **kw)
    with StoreWriter(tmp_path / "b", method="diffusemix-hybrid", shard_size=3) as w:
        assert H.write_hybrids(w, orig, gen, labels, ids, **kw) == n - 6
    a, b = SyntheticStore(tmp_path / "a"), SyntheticStore(tmp_path / "b")
    rows_a = {a.provenance(i)["pair_id"]: a[i] for i in range(len(a))}
    rows_b = {b.provenance(i)["pair_id"]: b[i] for i in range(len(b))}
    assert sorted(rows_a) == sorted(rows_b) == list(ids)
    expect, w_expect = H.diffusemix(
        key, H.to_float(orig), H.to_float(gen), jnp.asarray(ids), bank, spec=spec
    )
    expect = H.to_uint8(expect)
    for j, pid in enumerate(ids):
        np.testing.assert_array_equal(rows_a[pid]["image"], rows_b[pid]["image"])
        np.testing.assert_array_equal(rows_a[pid]["image"], expect[j])
        assert rows_a[pid]["label"] == labels[j]
        # The record's weight is the scaled target 1 - λ.
        np.testing.assert_allclose(rows_a[pid]["weight"], w_expect[j], rtol=1e-6)
    with pytest.raises(ValueError, match="offline"):
        H.write_hybrids(None, orig, gen, labels, ids, key=key,
                        spec=H.DiffuseMixSpec(policy="online"), fractals=bank)


def test_fractal_bank_blend_stays_in_range(batch):
    o, g, _, ids = batch
    bank = H.fractal_bank(jax.random.key(2), 2, 8)  # resized to the images' 16x16 on use
    assert bank.shape == (2, 8, 8, 3)
    assert float(bank.min()) >= -1.0 and float(bank.max()) <= 1.0
    x, _ = H.diffusemix(jax.random.key(0), o, g, ids, bank, spec=H.DiffuseMixSpec(lam=(0.0, 1.0)))
    # Hybrid and blend are convex combinations, so [-1, 1] inputs stay in [-1, 1].
    assert float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 1e-6
