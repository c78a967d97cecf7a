"""Fréchet Inception Distance (Heusel et al., 2017) and Kernel Inception Distance (Bińkowski et
al., 2018), over features from any extractor (:mod:`augdiff.metrics.features`).

FID fits a Gaussian N(μ, Σ) to each feature set and reports the Fréchet (2-Wasserstein)
distance between them (Heusel et al. eq. 6; Dowson & Landau, 1982)::

    d² = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}).

The only delicate term is Tr((Σ1Σ2)^{1/2}). Σ1Σ2 is not symmetric, but for Σ1 = S² with
S = Σ1^{1/2} symmetric PSD, Σ1Σ2 = S (S Σ2 S) S⁻¹ is similar to the symmetric PSD matrix
S Σ2 S, so Tr((Σ1Σ2)^{1/2}) = Σ_i √λ_i(S Σ2 S). We compute S and the λ_i with symmetric
eigendecompositions (``numpy.linalg.eigh``) in float64 on the host, clipping the round-off
negatives to 0. This never produces the complex parts or the singular-matrix failures of a
general ``scipy.linalg.sqrtm`` (the test checks that both agree on well-conditioned input).

KID is the squared maximum mean discrepancy with the cubic polynomial kernel
``k(x, y) = (x·y / d + 1)³`` (Bińkowski et al. §3 and appendix), estimated without bias::

    MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j)
             − 2/(mn) Σ_{i,j} k(x_i, y_j),

averaged over random subsets (default 100 subsets of 1000 drawn without replacement from
each set, as in the authors' code); the mean and standard deviation over subsets are reported.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_stats(features: np.ndarray | jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (rows are samples), float64 on the host."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"fid: features must be [N, D], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"fid: need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    if not np.all(np.isfinite(f)):
        raise ValueError("fid: features contain NaN or inf")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sym_sqrt(a: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric PSD matrix by eigendecomposition."""
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ1 Σ2)^{1/2}) = Σ_i √λ_i(Σ1^{1/2} Σ2 Σ1^{1/2}) (see the module docstring)."""
    s = _sym_sqrt(np.asarray(sigma1, np.float64))
    m = s @ np.asarray(sigma2, np.float64) @ s
    lam = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """d² = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1Σ2)^{1/2}) between N(μ1, Σ1) and N(μ2, Σ2)."""
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"fid: shapes disagree: mu {mu1.shape} / {mu2.shape}, "
            f"sigma {sigma1.shape} / {sigma2.shape}"
        )
    diff = mu1 - mu2
    tr = np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + tr)


def fid_from_features(x: np.ndarray | jax.Array, y: np.ndarray | jax.Array) -> float:
    """FID between two feature sets ``[N, D]`` and ``[M, D]``."""
    mu1, s1 = gaussian_stats(x)
    mu2, s2 = gaussian_stats(y)
    return frechet_distance(mu1, s1, mu2, s2)


def polynomial_kernel(x: jax.Array, y: jax.Array) -> jax.Array:
    """k(x, y) = (x·y / d + 1)³ for all pairs of rows: ``[m, n]``."""
    d = x.shape[-1]
    return (jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST) / d + 1.0) ** 3


@jax.jit
def mmd2_unbiased(x: jax.Array, y: jax.Array) -> jax.Array:
    """Unbiased MMD² estimate (module docstring) with the cubic polynomial kernel."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    m, n = x.shape[0], y.shape[0]
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy = polynomial_kernel(x, y)
    sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (m * (m - 1))
    syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (n * (n - 1))
    return sxx + syy - 2.0 * jnp.sum(kxy) / (m * n)


@functools.partial(jax.jit, static_argnames=("num_subsets", "subset_size"))
def _kid_subsets(
    key: jax.Array, x: jax.Array, y: jax.Array, num_subsets: int, subset_size: int
) -> jax.Array:
    def one(k):
        kx, ky = jax.random.split(k)
        ix = jax.random.permutation(kx, x.shape[0])[:subset_size]
        iy = jax.random.permutation(ky, y.shape[0])[:subset_size]
        return mmd2_unbiased(x[ix], y[iy])

    return jax.lax.map(one, jax.random.split(key, num_subsets))


def kid(
    x: np.ndarray | jax.Array,
    y: np.ndarray | jax.Array,
    key: jax.Array,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
) -> dict[str, float]:
    """KID: mean and std of :func:`mmd2_unbiased` over random subsets.

    Each subset draws ``min(subset_size, N, M)`` rows of each set without replacement with its
    own key from ``jax.random.split(key, num_subsets)``. Returns ``{"mean", "std",
    "num_subsets", "subset_size"}``.
    """
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kid: features must be [N, D] and [M, D], got {x.shape} and {y.shape}")
    size = int(min(subset_size, x.shape[0], y.shape[0]))
    if size < 2:
        raise ValueError(
            f"kid: need at least 2 feature vectors per set, got {x.shape[0]}, {y.shape[0]}")
    if num_subsets < 1:
        raise ValueError(f"kid: num_subsets must be >= 1, got {num_subsets}")
    vals = np.asarray(_kid_subsets(key, x, y, int(num_subsets), size), np.float64)
    return {
        "mean": float(vals.mean()),
        "std": float(vals.std()),
        "num_subsets": int(num_subsets),
        "subset_size": size,
    }
