"""2-D PCA of embeddings and the seed 000 Fig. 3 plot."""

import numpy as np
import pytest

from augdiff.analysis import pca as P


@pytest.fixture(scope="module")
def known_axes():
    """Data with known principal axes: z ~ N(0, diag(25, 4, 0.01, ...)) rotated by Q."""
    rng = np.random.default_rng(0)
    d, n = 12, 4000
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    std = np.array([5.0, 2.0] + [0.1] * (d - 2))
    z = rng.normal(size=(n, d)) * std
    x = z @ q.T + rng.normal(size=d) * 3.0  # rows x = Q z + mu
    return x, q, std


def test_pca_recovers_known_axes(known_axes):
    x, q, std = known_axes
    r = P.fit_pca(x, 2)
    # The principal axes are the first two columns of Q (up to sign).
    cos = np.abs(np.sum(r.components * q[:, :2].T, axis=1))
    assert np.all(cos > 0.999)
    np.testing.assert_allclose(r.components @ r.components.T, np.eye(2), atol=1e-5)
    # Variances match the sample covariance eigenvalues (closed form) and the true ones.
    evals = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1]
    np.testing.assert_allclose(r.explained_variance, evals[:2], rtol=1e-3)
    np.testing.assert_allclose(r.explained_variance, std[:2] ** 2, rtol=0.08)
    np.testing.assert_allclose(r.explained_variance_ratio, evals[:2] / evals.sum(), rtol=1e-3)
    # Deterministic signs: the largest-|loading| entry of each axis is positive.
    piv = r.components[np.arange(2), np.argmax(np.abs(r.components), axis=1)]
    assert np.all(piv > 0)
    # Projections are centred and their variances are the explained variances.
    y = r.transform(x)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(y.var(0, ddof=1), r.explained_variance, rtol=1e-3)


def test_pca_equals_numpy_svd_of_the_centred_data():
    """fit_pca against numpy.linalg.svd (float64) on the same rows: mean, the first k axes with
    the sign rule written here, σ²/(N−1), the variance ratios and the projections."""
    rng = np.random.default_rng(3)
    n, d, k = 60, 9, 5
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d) * 4
    r = P.fit_pca(x, k)
    mu = x.mean(0)
    _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
    sign = np.sign(vt[np.arange(d), np.argmax(np.abs(vt), axis=1)])
    vt = vt * sign[:, None]
    np.testing.assert_allclose(r.mean, mu, atol=1e-4)
    np.testing.assert_allclose(r.components, vt[:k], atol=2e-4)
    np.testing.assert_allclose(r.explained_variance, s[:k] ** 2 / (n - 1), rtol=1e-4)
    np.testing.assert_allclose(r.explained_variance_ratio, s[:k] ** 2 / np.sum(s**2), rtol=1e-4)
    np.testing.assert_allclose(r.transform(x), (x - mu) @ vt[:k].T, atol=2e-3)


def test_pca_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        P.fit_pca(np.zeros(5))
    with pytest.raises(ValueError, match="n_components"):
        P.fit_pca(np.zeros((4, 3)), 5)
    with pytest.raises(ValueError, match="NaN"):
        P.fit_pca(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))


def test_embedding_plot_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    d = 16
    centre = rng.normal(size=d)
    prompts = ["autumn", "snowy"]
    shift = {p: rng.normal(size=d) * 2 for p in prompts}
    orig = centre + 0.3 * rng.normal(size=(40, d))
    gen_prompts = [prompts[i % 2] for i in range(40)]
    gen = np.stack([o + shift[p] for o, p in zip(orig, gen_prompts, strict=True)])
    hyb = (orig + gen) / 2
    path = tmp_path / "fig" / "pca.png"
    r = P.plot_embedding_pca(
        {"original": orig, "generated": gen, "hybrid": hyb},
        path,
        prompts={"generated": gen_prompts, "hybrid": gen_prompts},
        normalize=False,
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (780, 600)  # 6.5 x 5 in at 120 dpi
    # Hybrids sit half-way between originals and their edits in PCA space (PCA is affine).
    c = P.set_centroids(r, {"original": orig, "generated": gen, "hybrid": hyb})
    np.testing.assert_allclose(c["hybrid"], (c["original"] + c["generated"]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="rows but"):
        P.plot_embedding_pca({"a": orig}, tmp_path / "x.png", prompts={"a": ["p"]})


def test_embed_images_batches_and_pads():
    images = np.arange(10 * 2 * 2 * 1, dtype=np.float32).reshape(10, 2, 2, 1)
    calls = []

    def embed(x):
        calls.append(x.shape)
        return x.reshape(x.shape[0], -1).sum(1, keepdims=True)

    e = P.embed_images(embed, images, batch_size=4, progress=False)
    np.testing.assert_allclose(e[:, 0], images.reshape(10, -1).sum(1))
    assert calls == [(4, 2, 2, 1)] * 3  # one shape: a jitted embed_fn compiles once
