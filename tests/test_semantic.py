"""CLIP-guided semantic hybrid blending (issue 5, Must-show 1 and 3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from augdiff.methods import semantic as S


def test_cosine_map_closed_form():
    k1, k2 = jax.random.split(jax.random.key(0))
    z = jax.random.normal(k1, (3, 16, 5))
    t = jax.random.normal(k2, (3, 5))
    s = np.asarray(S.cosine_map(z, t))
    zn, tn = np.asarray(z), np.asarray(t)
    ref = np.einsum("bpd,bd->bp", zn, tn) / (
        np.linalg.norm(zn, axis=-1) * np.linalg.norm(tn, axis=-1)[:, None]
    )
    assert s.shape == (3, 4, 4)
    np.testing.assert_allclose(s.reshape(3, 16), ref, atol=1e-5)
    with pytest.raises(ValueError, match="square grid"):
        S.cosine_map(z[:, :15], t)
    with pytest.raises(ValueError, match="does not match"):
        S.cosine_map(z, t[:2])


@pytest.mark.parametrize("grid", [4, 7, 16])
def test_median_mask_matches_percentile_formula_without_ties(grid):
    s = jax.random.normal(jax.random.key(grid), (5, grid, grid))
    m = np.asarray(S.median_patch_mask(s))
    sn = np.asarray(s).reshape(5, -1)
    tau = np.percentile(sn, 50, axis=1, keepdims=True)
    np.testing.assert_array_equal(m.reshape(5, -1), (sn <= tau).astype(np.float32))
    p = grid * grid
    np.testing.assert_array_equal(m.sum(axis=(1, 2)), (p + 1) // 2)  # ⌊P/2⌋ replaced


def test_median_mask_ties_replace_exactly_half():
    # All equal, and a map with a block of ties straddling the median.
    flat = np.zeros((2, 16), np.float32)
    flat[1] = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    m = np.asarray(S.median_patch_mask(jnp.asarray(flat).reshape(2, 4, 4))).reshape(2, 16)
    np.testing.assert_array_equal(m.sum(1), 8)
    # Ties are broken by patch index: the lower-index tied patches stay original.
    np.testing.assert_array_equal(m[0], [1] * 8 + [0] * 8)
    np.testing.assert_array_equal(m[1], [1] * 8 + [0] * 8)
    # The plain formula 1[S <= tau] would keep 10 of 16 here.
    assert (flat[1] <= np.percentile(flat[1], 50)).sum() == 10


def test_gaussian_kernel_normalised_and_separable_formula():
    g = np.asarray(S.gaussian_kernel1d(5))
    sigma = 5 / 3
    x = np.arange(-2, 3)
    ref = np.exp(-(x**2) / (2 * sigma**2))
    np.testing.assert_allclose(g, ref / ref.sum(), rtol=1e-6)
    np.testing.assert_allclose(g.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(g, g[::-1])
    k2 = np.outer(g, g)
    np.testing.assert_allclose(k2.sum(), 1.0, rtol=1e-6)
    # 2-D smoothing == convolution with the outer-product kernel on a reflect-padded map.
    m = (jax.random.uniform(jax.random.key(1), (3, 12, 20)) > 0.5).astype(jnp.float32)
    out = np.asarray(S.gaussian_smooth(m, 5))
    for i in range(3):
        padded = np.pad(np.asarray(m[i]), 2, mode="reflect")
        np.testing.assert_allclose(out[i], signal.convolve2d(padded, k2, mode="valid"), atol=1e-6)
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    np.testing.assert_allclose(S.gaussian_smooth(jnp.full((1, 9, 9), 0.3)), 0.3, atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        S.gaussian_kernel1d(4)


def test_upsample_nearest_blocks():
    m = jnp.arange(6.0).reshape(1, 2, 3)
    up = np.asarray(S.upsample_nearest(m, 4, 6))
    np.testing.assert_array_equal(up[0], np.kron(np.arange(6.0).reshape(2, 3), np.ones((2, 2))))
    up = np.asarray(S.upsample_nearest(jnp.arange(9.0).reshape(1, 3, 3), 7, 7))
    assert up.shape == (1, 7, 7) and set(np.unique(up)) == set(range(9))


# A "constructed CLIP": the feature of a patch is its mean colour, and the class texts are the
# colours themselves, so a patch matches its class text exactly when it has the class colour.
RED = jnp.array([1.0, -1.0, -1.0])
BLUE = jnp.array([-1.0, -1.0, 1.0])
CLASS_TEXT = jnp.stack([RED, BLUE])  # [C=2, D=3]


def colour_patch_features(images: jax.Array, grid: int = 4) -> jax.Array:
    b, h, w, c = images.shape
    x = images.reshape(b, grid, h // grid, grid, w // grid, c).mean(axis=(2, 4))
    return x.reshape(b, grid * grid, c)


@pytest.fixture(scope="module")
def constructed_pair():
    """Generated images whose class-coloured patches are known; a grey original."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 0])
    match = np.zeros((3, 16), bool)
    gen = np.zeros((3, 4, 4, 3), np.float32)
    for b, y in enumerate(labels):
        idx = rng.choice(16, 8, replace=False)  # exactly half of the patches match
        match[b, idx] = True
        cls, other = np.asarray(CLASS_TEXT[y]), np.asarray(CLASS_TEXT[1 - y])
        gen[b] = np.where(match[b].reshape(4, 4, 1), cls, 0.2 * other)
    generated = jnp.asarray(np.kron(gen, np.ones((1, 8, 8, 1), np.float32)))  # 32x32
    original = jnp.full_like(generated, 0.5)
    return original, generated, jnp.asarray(labels), match


def test_shb_takes_exactly_the_matching_patches(constructed_pair):
    original, generated, labels, match = constructed_pair
    # Before smoothing (k = 1): exactly the class-matching patches come from the generated
    # image, everything else from the original, and exactly 50% of pixels are replaced.
    out, mask = S.semantic_hybrid_fn(
        colour_patch_features, original, generated, CLASS_TEXT, labels, kernel_size=1
    )
    from_gen = np.kron(match.reshape(3, 4, 4), np.ones((8, 8), bool))[..., None]
    np.testing.assert_array_equal(np.asarray(mask), (~from_gen).astype(np.float32))
    expect = np.where(from_gen, np.asarray(generated), np.asarray(original))
    np.testing.assert_array_equal(np.asarray(out), expect)
    np.testing.assert_array_equal((np.asarray(mask) == 0).mean(axis=(1, 2, 3)), 0.5)


def test_shb_smoothed_mask_keeps_region_interiors(constructed_pair):
    original, generated, labels, match = constructed_pair
    out, mask = S.semantic_hybrid_fn(colour_patch_features, original, generated, CLASS_TEXT, labels)
    mask = np.asarray(mask)[..., 0]
    hard = 1.0 - np.kron(match.reshape(3, 4, 4), np.ones((8, 8)))
    # The 5x5 kernel reaches 2 px: pixels at distance >= 2 from every internal block boundary
    # are untouched, so the interiors of the chosen regions stay exact.
    inner = np.zeros(32, bool)
    for i in range(32):
        inner[i] = min(abs(i + 0.5 - e) for e in (8, 16, 24)) >= 2.5
    sel = inner[:, None] & inner[None, :]
    np.testing.assert_allclose(mask[:, sel], hard[:, sel], atol=1e-6)
    assert mask.min() >= 0 and mask.max() <= 1 + 1e-6
    # Smoothing moves weight only across boundaries; the generated share stays near 50%.
    np.testing.assert_allclose((1 - mask).mean(axis=(1, 2)), 0.5, atol=0.03)
    o, g = np.asarray(original), np.asarray(generated)
    np.testing.assert_allclose(out, mask[..., None] * o + (1 - mask[..., None]) * g, atol=1e-6)


def test_shb_text_rows_or_class_matrix_agree(constructed_pair):
    original, generated, labels, _ = constructed_pair
    a = S.semantic_hybrid_fn(colour_patch_features, original, generated, CLASS_TEXT, labels)[0]
    b = S.semantic_hybrid_fn(colour_patch_features, original, generated, CLASS_TEXT[labels])[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="class matrix"):
        S.semantic_hybrid_fn(colour_patch_features, original, generated, CLASS_TEXT[0], labels)


@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPConfig, FlaxCLIPModel

    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=8,
        ),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
            num_hidden_layers=1, num_attention_heads=2,
        ),
        projection_dim=12,
    )
    model = FlaxCLIPModel(cfg, _do_init=False)
    # jit(init) is much faster than the eager init on a CPU; params then travel explicitly.
    params = jax.jit(model.init_weights, static_argnums=1)(jax.random.key(0), model.input_shape)
    return model, params


@pytest.mark.slow
def test_clip_patch_tokens_match_reference(tiny_clip):
    model, params = tiny_clip
    x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3), minval=-1, maxval=1)
    embed = jax.jit(lambda x, p: S.clip_patch_embeddings(model, x, p, include_cls=True))
    tokens = np.asarray(embed(x, params))
    assert tokens.shape == (2, 1 + 16, 12)
    pixels = jnp.transpose(S.clip_preprocess(x, 32), (0, 3, 1, 2))  # the library's NCHW

    @jax.jit
    def reference(pixels, p):
        feats = model.get_image_features(pixels, params=p)
        out = model(jnp.ones((2, 4), jnp.int32), pixels, params=p)
        return feats, out.vision_model_output.last_hidden_state

    feats, h = (np.asarray(a) for a in reference(pixels, params))
    # CLS row == the library's get_image_features.
    np.testing.assert_allclose(tokens[:, 0], feats, atol=1e-5)
    # Patch rows == LayerNorm + projection of the vision tower's last_hidden_state, in numpy.
    p = jax.tree_util.tree_map(np.asarray, params)
    ln = p["vision_model"]["post_layernorm"]
    eps = model.config.vision_config.layer_norm_eps
    hn = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + eps)
    ref = (hn * ln["scale"] + ln["bias"]) @ p["visual_projection"]["kernel"]
    np.testing.assert_allclose(tokens, ref, atol=1e-4)


@pytest.mark.slow
def test_shb_with_real_clip_features_replaces_half(tiny_clip):
    model, params = tiny_clip
    k1, k2 = jax.random.split(jax.random.key(3))
    orig = jax.random.uniform(k1, (2, 32, 32, 3), minval=-1, maxval=1)
    gen = jax.random.uniform(k2, (2, 32, 32, 3), minval=-1, maxval=1)
    ids = jnp.array([[1, 5, 7, 2], [1, 9, 2, 0]])
    text = S.clip_text_embeddings(model, ids, jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]]), params)
    assert text.shape == (2, 12)
    feature_fn = S.clip_patch_feature_fn(model, params)
    out, mask = S.semantic_hybrid_fn(feature_fn, orig, gen, text, jnp.array([0, 1]), kernel_size=1)
    mask = np.asarray(mask)[..., 0]
    np.testing.assert_array_equal((mask == 0).mean(axis=(1, 2)), 0.5)
    # The replaced patches are those with above-median similarity to the class text.
    s = np.asarray(S.cosine_map(feature_fn(gen), text)).reshape(2, 16)
    gen_patch = mask[:, ::8, ::8].reshape(2, 16) == 0
    for b in range(2):
        assert s[b][gen_patch[b]].min() > s[b][~gen_patch[b]].max()
