"""DDPM++ SongUNet (augdiff.models.songunet): size parity with NVlabs/edm, shapes, conditioning."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augdiff.models import songunet as songunet_lib
from augdiff.models.songunet import (
    INIT,
    INIT_ATTN,
    INIT_ZERO,
    SongUNet,
    params_from_edm_state_dict,
    positional_embedding,
    resample,
    songunet_config,
)


def n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def abstract_init(model: SongUNet, batch: int = 2, labels: bool = False):
    r = model.img_resolution
    return jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((batch, r, r, model.in_channels)),
        jnp.zeros(batch), jnp.zeros(batch, jnp.int32) if labels else None,
    )["params"]


def random_weights(shapes, seed: int = 0):
    """Unit-gain random weights (fan_in = prod(shape[:-1])), so that every path, including the
    1e-5-scaled output convs of the reference init, visibly moves the output."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]) or 1)
                   ).astype(np.float32), shapes)


def test_init_scales_follow_the_reference():
    fan_in, fan_out = 3 * 3 * 64, 3 * 3 * 32
    bound = np.sqrt(6 / (fan_in + fan_out))
    for init, scale in [(INIT, 1.0), (INIT_ZERO, 1e-5), (INIT_ATTN, np.sqrt(0.2))]:
        w = np.asarray(init(jax.random.key(0), (3, 3, 64, 32)))
        assert np.abs(w).max() <= scale * bound * (1 + 1e-6)
        assert np.abs(w).max() > 0.95 * scale * bound  # uniform fills its range
        assert w.std() == pytest.approx(scale * bound / np.sqrt(3), rel=0.05)


# Counted from NVlabs/edm training/networks.py::SongUNet (commit 008a4e5) with torch:
# sum(p.numel() for p in SongUNet(img_resolution, 3, 3, label_dim, augment_dim, ...).parameters()).
@pytest.mark.parametrize("preset,overrides,expected", [
    ("cifar10", {}, 55_733_891),  # EDM's DDPM++ CIFAR-10 (augment_dim=9)
    ("cifar10", {"augment_dim": 0}, 55_732_739),
    ("cifar10", {"label_dim": 10}, 55_735_299),
    ("ffhq64", {}, 61_805_571),
])
def test_parameter_count_equals_nvlabs_edm(preset, overrides, expected):
    model = SongUNet(**songunet_config(preset, **overrides))
    assert n_params(abstract_init(model, labels=bool(model.label_dim))) == expected


def test_presets_and_overrides():
    c = songunet_config("cifar10")
    assert (c["model_channels"], tuple(c["channel_mult"]), c["num_blocks"], c["dropout"]) == (
        128, (2, 2, 2), 4, 0.13)
    assert tuple(songunet_config("ffhq64")["channel_mult"]) == (1, 2, 2, 2)
    assert songunet_config("ffhq64")["dropout"] == 0.05
    assert songunet_config("tiny", img_resolution=32)["img_resolution"] == 32
    with pytest.raises(ValueError, match="unknown preset"):
        songunet_config("imagenet")
    with pytest.raises(ValueError, match="unknown SongUNet fields"):
        songunet_config("tiny", channels=3)


def test_list_fields_from_configs_keep_the_module_hashable():
    m = SongUNet(**songunet_config("tiny", channel_mult=[1, 2], attn_resolutions=[8]))
    assert m.channel_mult == (1, 2) and m.attn_resolutions == (8,)
    assert hash(m) == hash(SongUNet(**songunet_config("tiny", channel_mult=(1, 2))))
    with pytest.raises(ValueError, match="channel_mult"):
        SongUNet(channel_mult=())


@pytest.mark.parametrize("num_sources", [2, 4])
def test_casd_shares_every_layer_with_dm_but_the_label_embedding(num_sources):
    """Seed 004 App. A.2: R = the DDPM++ input conv 3 -> 128, e = EDM's label path (one-hot ->
    128-d ``map_label`` added to the noise embedding, then the 2-layer SiLU map to 512)."""
    dm = abstract_init(SongUNet(**songunet_config("cifar10")))
    casd = abstract_init(SongUNet(**songunet_config("cifar10", casd=True,
                                                    num_sources=num_sources)))
    flat = lambda t: {"/".join(str(getattr(k, "key", k)) for k in path): v.shape  # noqa: E731
                      for path, v in jax.tree_util.tree_leaves_with_path(t)}
    fd, fc = flat(dm), flat(casd)
    extra = {k: v for k, v in fc.items() if k not in fd}
    assert extra == {"map_label/kernel": (num_sources, 128), "map_label/bias": (128,)}
    assert all(fc[k] == v for k, v in fd.items())  # every DM layer, same shape
    assert fc["enc_32x32_conv/conv/kernel"] == (3, 3, 3, 128)  # R: the input conv
    assert fc["map_layer0/kernel"] == (128, 512) and fc["map_layer1/kernel"] == (512, 512)
    # = EDM's conditional SongUNet with label_dim = K (55,733,891 + (K + 1)·128).
    assert n_params(casd) - n_params(dm) == (num_sources + 1) * 128
    assert n_params(casd) == 55_733_891 + (num_sources + 1) * 128


@pytest.fixture(scope="module")
def tiny():
    model = SongUNet(**songunet_config("tiny", label_dim=3, casd=True, dropout=0.2,
                                       label_dropout=0.5))
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    t = jnp.array([-1.0, 0.0, 0.5, 1.0])
    shapes = jax.eval_shape(model.init, jax.random.key(1), x, t, jnp.zeros(4, jnp.int32),
                            jnp.zeros(4, jnp.int32))
    return model, random_weights(shapes), x, t


def test_forward_shape_dtype_and_conditioning(tiny):
    model, v, x, t = tiny
    apply = jax.jit(model.apply, static_argnames="train")
    cls = jnp.array([0, 1, 2, 0])
    y0 = apply(v, x, t, cls, jnp.zeros(4, jnp.int32))
    assert y0.shape == (4, 16, 16, 3) and y0.dtype == jnp.float32
    assert np.isfinite(np.asarray(y0)).all()
    # One-hot class labels equal integer labels.
    np.testing.assert_allclose(apply(v, x, t, jax.nn.one_hot(cls, 3), jnp.zeros(4, jnp.int32)),
                               y0, rtol=1e-6, atol=1e-9)
    # CASD: the source label changes the output of every example (y is not ignored).
    y1 = apply(v, x, t, cls, jnp.ones(4, jnp.int32))
    diff = np.abs(np.asarray(y1 - y0)).reshape(4, -1).max(axis=1)
    assert np.all(diff > 1e-3 * np.abs(np.asarray(y0)).max())
    # ... and so do the class label and the noise level.
    assert np.abs(np.asarray(apply(v, x, t, (cls + 1) % 3, jnp.zeros(4, jnp.int32)) - y0)).max() > 0
    assert np.abs(np.asarray(apply(v, x, t + 1.0, cls, jnp.zeros(4, jnp.int32)) - y0)).max() > 0
    # source_labels=None means y = 0 (real).
    np.testing.assert_array_equal(apply(v, x, t, cls), y0)


def test_dropout_is_train_only_and_keyed(tiny):
    model, v, x, t = tiny
    y = jnp.zeros(4, jnp.int32)
    cls = jnp.array([0, 1, 2, 0])
    f = jax.jit(lambda k: model.apply(v, x, t, cls, y, train=True, rngs={"dropout": k}))
    a, b, c = f(jax.random.key(2)), f(jax.random.key(2)), f(jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a - c)).max() > 0
    ev = jax.jit(model.apply)(v, x, t, cls, y)
    assert np.abs(np.asarray(a - ev)).max() > 0


def test_dropout_barrier_changes_no_value(tiny, monkeypatch):
    """The optimization barrier behind each block's dropout (so that XLA:TPU computes the mask
    once instead of inlining the threefry hash into conv1's forward and weight-gradient
    fusions) is in train-mode programs only and leaves the output and gradients unchanged."""
    model, v, x, t = tiny
    y, cls, key = jnp.zeros(4, jnp.int32), jnp.array([0, 1, 2, 0]), jax.random.key(5)

    def run():
        def loss(p):
            out = model.apply(p, x, t, cls, y, train=True, rngs={"dropout": key})
            return jnp.sum(out * jnp.cos(out)), out
        (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(v)
        return out, grads

    def lowered(train):
        return jax.jit(lambda p: model.apply(p, x, t, cls, y, train=train,
                                             rngs={"dropout": key})).lower(v).as_text()

    assert "optimization_barrier" in lowered(True)
    assert "optimization_barrier" not in lowered(False)
    out, grads = run()
    monkeypatch.setattr(songunet_lib, "dropout_barrier", lambda h, active: h)
    assert "optimization_barrier" not in lowered(True)
    out_plain, grads_plain = run()
    np.testing.assert_array_equal(out, out_plain)
    jax.tree_util.tree_map(np.testing.assert_array_equal, grads, grads_plain)


def test_label_dropout_one_equals_zero_label():
    model = SongUNet(**songunet_config("tiny", label_dim=3, label_dropout=1.0))
    x, t = jnp.ones((2, 16, 16, 3)), jnp.zeros(2)
    v = random_weights(jax.eval_shape(model.init, jax.random.key(0), x, t,
                                      jnp.zeros(2, jnp.int32)))
    f = jax.jit(lambda c: model.apply(v, x, t, c, train=True, rngs={"dropout": jax.random.key(0)}))
    dropped, zero = f(jax.nn.one_hot(jnp.array([1, 2]), 3)), f(jnp.zeros((2, 3)))
    np.testing.assert_allclose(dropped, zero, rtol=1e-6)


def test_bf16_compute_matches_float32():
    cfg = songunet_config("tiny", attn_resolutions=())
    m32, m16 = SongUNet(**cfg), SongUNet(**cfg, dtype=jnp.bfloat16)
    x, t = jax.random.normal(jax.random.key(0), (2, 16, 16, 3)), jnp.array([0.1, -0.4])
    p = {"params": random_weights(abstract_init(m32))}
    a, b = jax.jit(m32.apply)(p, x, t), jax.jit(m16.apply)(p, x, t)
    assert b.dtype == jnp.float32
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda l: l.dtype == jnp.float32, p))
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    assert 0 < rel < 0.05


def test_bad_inputs_are_named(tiny):
    model, v, x, t = tiny
    with pytest.raises(ValueError, match=r"expected x of shape \[B, 16, 16, 3\]"):
        model.apply(v, jnp.zeros((4, 8, 8, 3)), t, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="noise_labels"):
        model.apply(v, x, jnp.zeros(3), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="needs class_labels"):
        model.apply(v, x, t)
    with pytest.raises(ValueError, match="class_labels must be"):
        model.apply(v, x, t, jnp.zeros((4, 5)))


def test_positional_embedding_formula():
    t = jnp.array([0.0, 0.7, -2.0])
    e = np.asarray(positional_embedding(t, 8))
    freqs = (1 / 10000) ** (np.arange(4) / 3)  # endpoint=True: last frequency is 1/10000
    arg = np.asarray(t)[:, None] * freqs
    np.testing.assert_allclose(e, np.concatenate([np.sin(arg), np.cos(arg)], 1), rtol=1e-5,
                               atol=1e-6)


def test_resample_box_filter_fast_path_equals_fir_and_general_filter():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    down = resample(x, (1, 1), down=True)
    np.testing.assert_allclose(down, x.reshape(2, 4, 2, 4, 2, 3).mean((2, 4)), rtol=1e-6)
    up = resample(x, (1, 1), up=True)
    np.testing.assert_array_equal(up[:, ::2, ::2], x)
    np.testing.assert_array_equal(up[:, 1::2, 1::2], x)
    # The generic FIR path gives the same for [1, 1] (written as floats to avoid the fast path).
    np.testing.assert_allclose(resample(x, (1.0, 1.0000001), down=True), down, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(resample(x, (1.0, 1.0000001), up=True), up, rtol=1e-5,
                               atol=1e-6)
    # [1,3,3,1]: normalised, so constants are preserved away from the border.
    c = jnp.ones((1, 8, 8, 2))
    np.testing.assert_allclose(resample(c, (1, 3, 3, 1), down=True)[:, 1:-1, 1:-1], 1.0,
                               rtol=1e-6)
    np.testing.assert_allclose(resample(c, (1, 3, 3, 1), up=True)[:, 2:-2, 2:-2], 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        resample(x, (1, 1))


PARITY = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "edm_songunet_parity.npz"


def _edm_reference():
    """Weights, inputs and outputs of NVlabs/edm's SongUNet, written once by
    ``tools/edm_parity_reference.py`` (a tiny DDPM++: 8², 8 channels, label_dim 3,
    augment_dim 9)."""
    ref = np.load(PARITY)
    state = {k[2:]: ref[k] for k in ref.files if k.startswith("w/")}
    model = SongUNet(img_resolution=8, label_dim=3, augment_dim=9, model_channels=8,
                     channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0)
    return ref, params_from_edm_state_dict(state), model


def test_output_parity_with_nvlabs_edm_songunet():
    """Same weights (converted) → the output NVlabs/edm computed, conditional + augment.
    Measured max |diff| 6e-8 (output scale 0.45); 1e-5 catches e.g. GroupNorm eps 1e-3."""
    ref, params, model = _edm_reference()
    shapes = abstract_init(model, labels=True)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
    x = ref["x"].transpose(0, 2, 3, 1)
    got = jax.jit(model.apply)({"params": params}, x, ref["noise_labels"], ref["class_labels"],
                               augment_labels=ref["augment_labels"])
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref["output"],
                               rtol=1e-5, atol=1e-5)
    # zero augment labels (sampling time) are what augment_labels=None means
    np.testing.assert_allclose(
        np.asarray(jax.jit(model.apply)({"params": params}, x[:2], ref["noise_labels"][:2],
                                        ref["class_labels"][:2])).transpose(0, 3, 1, 2),
        ref["output"][:2], rtol=1e-5, atol=1e-5)


def test_casd_is_edm_label_path_with_source_labels():
    """Seed 004 App. A.2: CASD with K = 3 sources is EDM's conditional net with label_dim = 3
    fed the one-hot source label, same parameters, same output."""
    ref, params, _ = _edm_reference()
    casd = SongUNet(img_resolution=8, casd=True, num_sources=3, augment_dim=9, model_channels=8,
                    channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0)
    y = np.argmax(ref["class_labels"], axis=1).astype(np.int32)
    got = jax.jit(casd.apply)({"params": params}, ref["x"].transpose(0, 2, 3, 1),
                              ref["noise_labels"], source_labels=y,
                              augment_labels=ref["augment_labels"])
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref["output"],
                               rtol=1e-5, atol=1e-5)
