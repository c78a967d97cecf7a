"""Metrics against closed forms and brute-force references (issue 7, must-show 1)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage

from augdiff.metrics import fid as fidm
from augdiff.metrics.prdc import nearest_neighbours, prdc
from augdiff.metrics.replication import replication
from augdiff.metrics.ssim import ssim

# ------------------------------------------------------------------------------------------ FID


def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    # Diagonal covariances: (Σ1Σ2)^{1/2} = diag(√(v1 v2)), so the closed form is exact.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = fidm.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_trace_sqrt_matches_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(12, 12)), rng.normal(size=(12, 12))
    s1, s2 = a @ a.T + 0.1 * np.eye(12), b @ b.T + 0.1 * np.eye(12)
    ref = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    np.testing.assert_allclose(fidm.trace_sqrt_product(s1, s2), ref, rtol=1e-8)
    # Same Gaussian -> 0; FID is symmetric.
    assert abs(fidm.frechet_distance(np.zeros(12), s1, np.zeros(12), s1)) < 1e-8
    np.testing.assert_allclose(fidm.frechet_distance(np.ones(12), s1, np.zeros(12), s2),
                               fidm.frechet_distance(np.zeros(12), s2, np.ones(12), s1), rtol=1e-9)


def test_fid_of_large_gaussian_samples_is_close_to_closed_form():
    rng = np.random.default_rng(2)
    d, n = 8, 200_000
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    v1, v2 = np.linspace(0.5, 2.0, d), np.linspace(2.0, 0.5, d)
    x = mu1 + rng.normal(size=(n, d)) * np.sqrt(v1)
    y = mu2 + rng.normal(size=(n, d)) * np.sqrt(v2)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    np.testing.assert_allclose(fidm.fid_from_features(x, y), expected, rtol=0.02)


def test_fid_identical_sets_is_zero_and_bad_input_errors():
    x = np.random.default_rng(3).normal(size=(500, 32))
    assert abs(fidm.fid_from_features(x, x)) < 1e-6
    with pytest.raises(ValueError, match="at least 2"):
        fidm.fid_from_features(x[:1], x)
    with pytest.raises(ValueError, match="NaN"):
        fidm.fid_from_features(np.full((4, 2), np.nan), x[:, :2])


# ------------------------------------------------------------------------------------------ KID


def _mmd2_unbiased_bruteforce(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1.0) ** 3

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_mmd2_unbiased_equals_bruteforce():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 6)), rng.normal(0.3, 1.0, size=(25, 6))
    np.testing.assert_allclose(float(fidm.mmd2_unbiased(x, y)), _mmd2_unbiased_bruteforce(x, y),
                               rtol=1e-4)


def test_kid_is_unbiased_on_equal_distributions_and_positive_when_shifted():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same = fidm.kid(x, y, jax.random.key(0), num_subsets=50, subset_size=200)
    # Unbiased: the subset mean is within one subset-std of 0 (a biased V-statistic would sit
    # at roughly +2 E[k(x,x) - k(x,y)] / m, many stds above 0).
    assert abs(same["mean"]) < same["std"]
    shifted = fidm.kid(x, y + 0.5, jax.random.key(0), num_subsets=50, subset_size=200)
    assert shifted["mean"] > 5 * shifted["std"] > 0
    assert same["subset_size"] == 200 and same["num_subsets"] == 50


# ----------------------------------------------------------------------------------------- PRDC


def _prdc_bruteforce(real, fake, k):
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_rf = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # [N, M]
    r_real = np.sort(d_rr, axis=1)[:, k]  # index 0 is the point itself
    r_fake = np.sort(d_ff, axis=1)[:, k]
    inside = d_rf <= r_real[:, None]
    return {
        "precision": inside.any(axis=0).mean(),
        "recall": (d_rf <= r_fake[None, :]).any(axis=1).mean(),
        "density": inside.sum(axis=0).mean() / k,
        "coverage": (d_rf.min(axis=1) <= r_real).mean(),
    }


@pytest.mark.parametrize("k,block", [(5, 64), (3, 1000)])
def test_prdc_equals_bruteforce(k, block):
    rng = np.random.default_rng(6 + k)
    real = rng.normal(size=(300, 10)).astype(np.float32)
    fake = rng.normal(0.2, 1.1, size=(230, 10)).astype(np.float32)
    got = prdc(real, fake, k, block_size=block)
    ref = _prdc_bruteforce(real, fake, k)
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1


def test_prdc_identical_sets_and_sharded_blocks():
    from augdiff import distributed

    x = np.random.default_rng(8).normal(size=(200, 8)).astype(np.float32)
    got = prdc(x, x, 5, block_size=48, mesh=distributed.make_mesh())
    assert got["precision"] == 1.0 and got["recall"] == 1.0 and got["coverage"] == 1.0
    # Each real point lies in its own ball and its k neighbours' balls at least: density >= 1.
    assert got["density"] >= 1.0
    with pytest.raises(ValueError, match="more than k"):
        prdc(x[:5], x, 5)


def test_nearest_neighbours_equals_bruteforce():
    rng = np.random.default_rng(9)
    q, r = rng.normal(size=(37, 5)), rng.normal(size=(50, 5))
    d2, idx = nearest_neighbours(q, r, 3, block_size=16)
    full = ((q[:, None] - r[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :3])
    np.testing.assert_allclose(d2, np.sort(full, axis=1)[:, :3], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------- SSIM


def _ssim_reference(a, b, data_range=255.0):
    """Independent NumPy/SciPy SSIM (Wang et al. 2004): scipy's Gaussian filter (σ 1.5,
    truncated to an 11-tap window), valid region, biased moments, mean over channels."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch], b[..., ch]

        def f(z):
            return scipy.ndimage.gaussian_filter(z, 1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]

        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


@pytest.fixture(scope="module")
def image_pairs():
    rng = np.random.default_rng(10)
    yy, xx = np.mgrid[:32, :32]
    base = np.stack([128 + 100 * np.sin(xx / 4.0 + c) * np.cos(yy / 5.0) for c in range(3)], -1)
    a = np.stack([base, base, rng.uniform(0, 255, (32, 32, 3)), base]).clip(0, 255)
    b = np.stack([base, base + rng.normal(0, 20, base.shape), rng.uniform(0, 255, (32, 32, 3)),
                  255 - base]).clip(0, 255)
    return a.astype(np.uint8), b.astype(np.uint8)


def test_ssim_equals_numpy_reference(image_pairs):
    a, b = image_pairs
    got = np.asarray(ssim(a, b))
    ref = [_ssim_reference(a[i], b[i]) for i in range(len(a))]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert got[0] == pytest.approx(1.0, abs=1e-6)  # identical images
    assert got[3] < 0  # inverted image: anti-correlated structure


def test_ssim_equals_skimage(image_pairs):
    metrics = pytest.importorskip("skimage.metrics")
    a, b = image_pairs
    got = np.asarray(ssim(a, b))
    ref = [metrics.structural_similarity(a[i], b[i], gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=255,
                                         channel_axis=-1) for i in range(len(a))]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_ssim_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 17, 3)))
    with pytest.raises(ValueError, match="smaller than"):
        ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))


# ---------------------------------------------------------------------------------- replication


@pytest.mark.parametrize("nn_by", ["pixel", "feature"])
def test_replication_finds_planted_copies(nn_by):
    rng = np.random.default_rng(11)
    train = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    copies = train[[3, 17, 29]]
    novel = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    gen = np.concatenate([copies, novel])
    feats = {"gen_features": gen.reshape(len(gen), -1) / 255.0,
             "train_features": train.reshape(len(train), -1) / 255.0} if nn_by == "feature" else {}
    rep = replication(gen, train, nn_by=nn_by, threshold=0.5, **feats)
    np.testing.assert_array_equal(rep["nn_index"][:3], [3, 17, 29])
    np.testing.assert_allclose(rep["ssim"][:3], 1.0, atol=1e-5)
    assert np.all(rep["ssim"][3:] < 0.2)  # independent noise images are not copies
    assert rep["near_copy_share"] == pytest.approx(3 / 8)
    assert rep["nn_distance_min"] == pytest.approx(0.0, abs=1e-2)
