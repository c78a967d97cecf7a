"""EDM's augmentation pipe (augdiff.edm.augment) against its definitions (NVlabs/edm
``AugmentPipe`` as configured by its ``train.py --augment=p``; seed 004 Table 9)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augdiff.edm import augment as aug

N = 20_000


@pytest.fixture(scope="module")
def stats():
    cfg = aug.AugmentConfig(p=0.12)
    prm = jax.jit(lambda k: aug.sample_params(k, N, cfg))(jax.random.key(0))
    prm = {k: np.asarray(v) for k, v in prm.items()}
    labels = np.asarray(aug.augment_labels({k: jnp.asarray(v) for k, v in prm.items()},
                                           16, 16, cfg))
    return cfg, prm, labels


def _within(rate, want, n=N):
    return abs(rate - want) < 4 * math.sqrt(want * (1 - want) / n) + 1e-9


def test_rates_follow_the_probability_multipliers(stats):
    cfg, prm, labels = stats
    # xflip multiplier 1e8: every image is eligible, w ~ U{0, 1} -> half are mirrored.
    assert _within(np.mean(prm["xflip"] == 1), 0.5)
    assert _within(np.mean(prm["yflip"] == 1), cfg.p / 2)  # eligible with p, then U{0, 1}
    for k in ("scale", "rotate", "aniso", "tx"):
        assert _within(np.mean(prm[k] != 0), cfg.p), k
    np.testing.assert_array_equal(prm["tx"] != 0, prm["ty"] != 0)  # one gate for (tx, ty)
    assert np.abs(prm["rotate"]).max() <= math.pi
    on = prm["scale"] != 0
    assert abs(np.std(prm["scale"][on]) - 1.0) < 0.1  # w ~ N(0, 1) when applied
    on = prm["tx"] != 0
    assert abs(np.std(prm["tx"][on]) - 1.0) < 0.1
    # where aniso scaling is applied its axis is rotated with probability 1/2
    on = prm["aniso"] != 0
    assert _within(np.mean(prm["aniso_r"][on] != 0), 0.5, on.sum())
    assert np.all(prm["aniso_r"][~on] == 0)


def test_augment_labels_are_edm_definitions(stats):
    _, prm, labels = stats
    assert labels.shape == (N, aug.AUGMENT_DIM) == (N, 9)
    th, a, r = prm["rotate"], prm["aniso"], prm["aniso_r"]
    want = np.stack([prm["xflip"], prm["yflip"], prm["scale"], np.cos(th) - 1, np.sin(th),
                     a * np.cos(r), a * np.sin(r), prm["tx"], prm["ty"]], 1)
    np.testing.assert_allclose(labels, want, rtol=1e-5, atol=1e-6)
    # non-leaky: an example with no op applied has all-zero labels (= sampling time)
    none = (labels[:, 1:] == 0).all(1) & (labels[:, 0] == 0)
    # P(no op) = P(x not flipped) P(y not flipped) (1 − p)^4 (scale, rotate, aniso, shift)
    assert _within(np.mean(none), 0.5 * (1 - 0.06) * (1 - 0.12) ** 4)


def test_integer_translation_range_and_labels():
    cfg = aug.AugmentConfig(p=1.0, xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0,
                            translate_mode="int")
    prm = aug.sample_params(jax.random.key(1), 4000, cfg)
    tx, ty = (np.asarray(v) for v in aug._translation_pixels(prm, 16, 16, cfg))
    assert np.all(tx == np.round(tx)) and np.abs(tx).max() == 2  # round(16 * 0.125)
    assert set(np.unique(tx).tolist()) == {-2, -1, 0, 1, 2}
    labels = np.asarray(aug.augment_labels(prm, 16, 16, cfg))
    np.testing.assert_allclose(labels[:, 7] * 16 * 0.125, tx, atol=1e-6)
    np.testing.assert_allclose(labels[:, 8] * 16 * 0.125, ty, atol=1e-6)


def _ramp(h=16, w=16):
    """f(row, col) = 0.03·col − 0.05·row + 0.1 in every channel (bilinear is exact on it)."""
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    f = 0.03 * c - 0.05 * r + 0.1
    return np.repeat(f[None, :, :, None], 3, axis=3).astype(np.float32)


def _params(n=1, **kw):
    base = {k: jnp.zeros((n,)) for k in ("scale", "rotate", "aniso", "aniso_r", "tx", "ty")}
    base.update({"xflip": jnp.zeros((n,), jnp.int32), "yflip": jnp.zeros((n,), jnp.int32)})
    base.update({k: jnp.asarray(v) for k, v in kw.items()})
    return base


def _image(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 16, 16, 3)).astype(np.float32)


CFG = aug.AugmentConfig(p=0.12)


def test_identity_xflip_yflip_and_quarter_rotation_on_a_known_image():
    x = _image()
    np.testing.assert_allclose(aug.apply(jnp.asarray(x), _params(), CFG), x, atol=1e-6)
    np.testing.assert_allclose(aug.apply(jnp.asarray(x), _params(xflip=[1]), CFG),
                               x[:, :, ::-1], atol=1e-6)
    np.testing.assert_allclose(aug.apply(jnp.asarray(x), _params(yflip=[1]), CFG),
                               x[:, ::-1], atol=1e-6)
    # output p samples the input at R(θ)p (x right, y down): θ = π/2 is np.rot90 (k=1)
    out = aug.apply(jnp.asarray(x), _params(rotate=[math.pi / 2]), CFG)
    np.testing.assert_allclose(out, np.rot90(x, k=1, axes=(1, 2)), atol=1e-4)
    lab = np.asarray(aug.augment_labels(_params(rotate=[math.pi / 2]), 16, 16, CFG))[0]
    np.testing.assert_allclose(lab[3:5], [-1.0, 1.0], atol=1e-6)


def test_isotropic_scaling_magnifies_about_the_centre():
    x, w = _ramp(), 1.0
    s = 2 ** (w * CFG.scale_std)
    out = np.asarray(aug.apply(jnp.asarray(x), _params(scale=[w]), CFG))
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    cx = 7.5
    want = 0.03 * (cx + (c - cx) / s) - 0.05 * (cx + (r - cx) / s) + 0.1
    np.testing.assert_allclose(out[0, :, :, 0], want, atol=1e-5)


def test_fractional_translation_moves_by_w_times_width_times_std():
    x, wx, wy = _ramp(), 0.3, -0.2
    tx, ty = wx * 16 * CFG.translate_frac_std, wy * 16 * CFG.translate_frac_std
    out = np.asarray(aug.apply(jnp.asarray(x), _params(tx=[wx], ty=[wy]), CFG))
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    want = 0.03 * (c - tx) - 0.05 * (r - ty) + 0.1  # content moves by +t
    inner = (slice(2, 14), slice(2, 14))  # away from the mirrored border
    np.testing.assert_allclose(out[0][inner][..., 0], want[inner], atol=1e-5)


def test_integer_translation_is_a_reflected_shift():
    cfg = aug.AugmentConfig(p=1.0, translate_mode="int")
    x = _image(3)
    # labels (1, -0.5) -> tx = round(1·2) = 2, ty = round(-0.5·2) = -1
    out = np.asarray(aug.apply(jnp.asarray(x), _params(tx=[1.0], ty=[-0.5]), cfg))
    pad = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    # EDM: out(x, y) = in(x − tx, y + ty): content moves right by 2 and down by 1
    want = pad[:, 4 - 1:4 - 1 + 16, 4 - 2:4 - 2 + 16]
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_augment_labels_match_the_applied_flip():
    cfg = aug.AugmentConfig(p=0.5, yflip=0, scale=0, rotate_frac=0, aniso=0, translate=0)
    x = jnp.asarray(np.repeat(_image(4), 64, axis=0))
    y, labels = jax.jit(lambda k: aug.augment(k, x, cfg))(jax.random.key(5))
    flipped = np.all(np.isclose(np.asarray(y), np.asarray(x)[:, :, ::-1], atol=1e-5), (1, 2, 3))
    np.testing.assert_array_equal(flipped, np.asarray(labels)[:, 0] == 1)
    assert 0 < flipped.sum() < 64


def test_config_presets_and_errors():
    assert aug.PRESETS == {"cifar10": 0.12, "ffhq64": 0.15}  # seed 004 Table 9
    with pytest.raises(ValueError, match="augment.p"):
        aug.AugmentConfig(p=1.5)
    with pytest.raises(ValueError, match="unknown field"):
        aug.AugmentConfig.from_config({"p": 0.1, "hue": 1.0})
