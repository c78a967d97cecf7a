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


def test_crop_geometry_follows_the_seed000_code_loop():
    """gdl_term's ``extract_spatial_features``: n = max(1, (size − c)//s + 1) crops per axis at
    ``min(i·s, size − c)``; 32-px crops at stride 16 of 256² give a 15 × 15 map."""
    def ref(size, c, st):
        n = max(1, (size - c) // st + 1)
        return [min(i * st, size - c) for i in range(n)]

    for size, c, st in ((256, 32, 16), (250, 32, 16), (32, 4, 2), (16, 2, 1), (32, 32, 16)):
        assert S.crop_starts(size, c, st).tolist() == ref(size, c, st)
    assert len(S.crop_starts(256, 32, 16)) == 15 and S.crop_starts(250, 32, 16)[-1] == 208
    assert S.scaled_crop_geometry(256) == (32, 16)
    assert S.scaled_crop_geometry(32) == (4, 2) and S.scaled_crop_geometry(16) == (2, 1)


def test_crop_similarity_map_equals_loop_over_crops():
    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (2, 40, 40, 3)).astype(np.float32)
    text = rng.normal(size=(3, 6)).astype(np.float32)
    labels = np.array([2, 0])

    def embed(x):  # any per-crop feature: mean colour and mean squared colour
        return jnp.concatenate([x.mean(axis=(1, 2)), (x**2).mean(axis=(1, 2))], axis=-1)

    got = np.asarray(S.crop_similarity_map(embed, jnp.asarray(img), jnp.asarray(text),
                                           jnp.asarray(labels), crop=8, stride=4, chunk=50))
    starts = [min(i * 4, 32) for i in range(9)]
    want = np.zeros((2, 9, 9))
    for b in range(2):
        t = text[labels[b]]
        for i, y in enumerate(starts):
            for j, x in enumerate(starts):
                c = img[b, y:y + 8, x:x + 8]
                f = np.r_[c.mean((0, 1)), (c**2).mean((0, 1))]
                want[b, i, j] = f @ t / (np.linalg.norm(f) * np.linalg.norm(t))
    np.testing.assert_allclose(got, want, atol=1e-5)


def _reference_shb_mask(s, size, q=50.0, k=5):
    """The paper's mask from its definition: torch bilinear upsampling (align_corners=False),
    M = 1[S <= P_q(S)] over the pixels, k × k Gaussian (σ = k/3) on a reflect-padded map."""
    torch = pytest.importorskip("torch")
    up = torch.nn.functional.interpolate(torch.tensor(s[:, None], dtype=torch.float64),
                                         size=(size, size), mode="bilinear",
                                         align_corners=False)[:, 0].numpy()
    m = np.stack([(u <= np.percentile(u, q)).astype(np.float64) for u in up])
    x = np.arange(k) - (k - 1) / 2
    g = np.exp(-(x**2) / (2 * (k / 3) ** 2))
    g2 = np.outer(g, g) / np.outer(g, g).sum()
    r = k // 2
    out = np.stack([signal.convolve2d(np.pad(mi, r, mode="reflect"), g2, mode="valid")
                    for mi in m])
    return up, m, out


@pytest.mark.parametrize("grid,size", [(7, 32), (15, 256), (15, 32), (5, 16)])
def test_shb_mask_equals_definition_on_real_geometries(grid, size):
    """7 × 7 → 32 (ViT-B/32 tokens at 32²) and 15 × 15 → 256 (the code's crops at 256²): grids
    that do not divide the image. Maps of 6-bit integers keep bilinear upsampling (weights
    k/64 and k/512, 24 bits in all) exact in float32, so the threshold sees the same values
    as the float64 reference."""
    rng = np.random.default_rng(grid * size)
    s = rng.integers(0, 64, (2, grid, grid)).astype(np.float32)
    up_ref, m_ref, want = _reference_shb_mask(s, size)
    up = np.asarray(S.upsample_bilinear(jnp.asarray(s), size, size))
    np.testing.assert_array_equal(up, up_ref)
    np.testing.assert_array_equal(np.asarray(S.percentile_mask(jnp.asarray(up))), m_ref)
    got = np.asarray(S.shb_mask(jnp.asarray(s), size, size))[..., 0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Half of the pixels go to the original (up to ties at τ).
    assert abs(m_ref.mean() - 0.5) < 0.05


def test_shb_code_smoothing_equals_scipy_gaussian_filter():
    """The seed 000 code's blur (``smoothing='code'``): scipy.ndimage.gaussian_filter with
    σ = 5/3; ``binary`` re-thresholds at 0.5 as its ``use_binary_replace``."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    s = rng.integers(0, 1000, (2, 15, 15)).astype(np.float32)
    _, m_ref, _ = _reference_shb_mask(s, 64)
    want = np.stack([ndimage.gaussian_filter(m, sigma=5 / 3) for m in m_ref])
    got = np.asarray(S.shb_mask(jnp.asarray(s), 64, 64, smoothing="code"))[..., 0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    b = np.asarray(S.shb_mask(jnp.asarray(s), 64, 64, smoothing="code", binary=True))[..., 0]
    np.testing.assert_array_equal(b, (want > 0.5).astype(np.float32))
    m30 = np.asarray(S.shb_mask(jnp.asarray(s), 64, 64, percentile=30.0, kernel_size=1))
    assert abs(m30.mean() - 0.3) < 0.02


def test_shb_takes_original_where_similarity_is_low():
    """Columns of rising similarity: the low (left) half comes from the original, the high
    (right) half from the generated image; far from the seam the blend is exact."""
    s = jnp.tile(jnp.arange(15.0)[None, None, :], (1, 15, 1))
    o = jnp.ones((1, 256, 256, 3))
    g = -jnp.ones((1, 256, 256, 3))
    x, mask = S.semantic_hybrid(o, g, s)
    x = np.asarray(x)
    np.testing.assert_array_equal(x[0, :, :120], 1.0)
    np.testing.assert_array_equal(x[0, :, 136:], -1.0)
    assert abs(float(np.asarray(mask).mean()) - 0.5) < 0.02


def test_mask_statistics_closed_form():
    m = np.zeros((2, 4, 10))
    m[0, :, :5] = 1.0
    m[1, :, :3] = 1.0
    m[1, :, 3] = 0.5  # one soft column of ten
    st = S.mask_statistics(m)
    assert st["original_share_mean"] == pytest.approx((0.5 + 0.35) / 2)
    assert st["original_share_std"] == pytest.approx(0.075)
    assert st["soft_share_mean"] == pytest.approx(0.05)
    assert st["soft_share_std"] == pytest.approx(0.05)


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
    labels = jnp.array([0, 1])
    # Tokens: cosine of each patch token with its class text, in numpy.
    feature_fn = S.clip_patch_feature_fn(model, params)
    s = np.asarray(S.token_similarity_map(feature_fn, gen, text, labels)).reshape(2, 16)
    z, t = np.asarray(feature_fn(gen)), np.asarray(text)
    ref = np.einsum("bpd,bd->bp", z, t) / (np.linalg.norm(z, axis=-1)
                                           * np.linalg.norm(t, axis=-1)[:, None])
    np.testing.assert_allclose(s, ref, atol=1e-5)
    # Crops (the code's path): CLIP image embeddings of 4-px crops at stride 2 of 32² → 15².
    embed = S.clip_image_embedding_fn(model, params)
    sc = S.crop_similarity_map(embed, gen, text, labels, crop=4, stride=2)
    assert sc.shape == (2, 15, 15)
    crop00 = np.asarray(embed(gen[:, :4, :4]))
    np.testing.assert_allclose(np.asarray(sc[:, 0, 0]), (crop00 * t).sum(-1) / (
        np.linalg.norm(crop00, axis=-1) * np.linalg.norm(t, axis=-1)), atol=1e-5)
    out, mask = S.semantic_hybrid(orig, gen, sc, kernel_size=1)
    mask = np.asarray(mask)[..., 0]
    np.testing.assert_allclose((mask == 0).mean(axis=(1, 2)), 0.5, atol=0.01)
