"""Structural similarity (Wang, Bovik, Sheikh & Simoncelli, 2004), in JAX.

For two image windows x, y (eq. 13 of the paper, with the constants of eq. 6-9)::

    SSIM(x, y) = ((2 μx μy + C1) (2 σxy + C2)) / ((μx² + μy² + C1) (σx² + σy² + C2)),
    C1 = (K1 L)², C2 = (K2 L)², K1 = 0.01, K2 = 0.03, L = data range (255 for uint8),

where the local statistics are weighted by an 11×11 circular-symmetric Gaussian window with
σ = 1.5 (§III-C), normalised to sum 1, and σx², σy², σxy are the weighted (biased, no
N/(N-1) correction) moments. The mean SSIM (MSSIM, eq. 17) averages the map over every
position where the window fits inside the image ("valid" positions); a colour image's SSIM
is the mean of its per-channel MSSIMs. This equals ``skimage.metrics.structural_similarity``
with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

K1 = 0.01
K2 = 0.03
WIN_SIZE = 11
SIGMA = 1.5


def gaussian_window(size: int = WIN_SIZE, sigma: float = SIGMA) -> np.ndarray:
    """1-D Gaussian taps ``exp(-t²/2σ²)`` for ``t = -(size-1)/2 .. (size-1)/2``, summing to 1."""
    if size % 2 != 1 or size < 1:
        raise ValueError(f"ssim: window size must be a positive odd integer, got {size}")
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(t**2) / (2.0 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def _filter_valid(x: jax.Array, taps: jax.Array) -> jax.Array:
    """Separable Gaussian filter of NHWC ``x``, per channel, keeping only valid positions."""
    c = x.shape[-1]
    k = taps.shape[0]
    # Depthwise conv: kernel HWIO with I=1 and feature_group_count=C.
    kh = jnp.tile(taps.reshape(k, 1, 1, 1), (1, 1, 1, c))
    kw = jnp.tile(taps.reshape(1, k, 1, 1), (1, 1, 1, c))
    dn = ("NHWC", "HWIO", "NHWC")
    prec = jax.lax.Precision.HIGHEST
    y = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn,
                                     feature_group_count=c, precision=prec)
    return jax.lax.conv_general_dilated(y, kw, (1, 1), "VALID", dimension_numbers=dn,
                                        feature_group_count=c, precision=prec)


@functools.partial(jax.jit, static_argnames=("win_size", "sigma", "k1", "k2"))
def ssim_map(
    x: jax.Array,
    y: jax.Array,
    data_range: float | jax.Array = 255.0,
    *,
    win_size: int = WIN_SIZE,
    sigma: float = SIGMA,
    k1: float = K1,
    k2: float = K2,
) -> jax.Array:
    """The SSIM map of eq. 13 for NHWC batches ``x``, ``y``: ``[B, H-w+1, W-w+1, C]``."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    taps = jnp.asarray(gaussian_window(win_size, sigma))
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x = _filter_valid(x, taps)
    mu_y = _filter_valid(y, taps)
    # Second moments about the local means (weighted, biased), eq. 14-16.
    var_x = _filter_valid(x * x, taps) - mu_x**2
    var_y = _filter_valid(y * y, taps) - mu_y**2
    cov_xy = _filter_valid(x * y, taps) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return num / den


def ssim(
    x: jax.Array | np.ndarray,
    y: jax.Array | np.ndarray,
    *,
    data_range: float = 255.0,
    win_size: int = WIN_SIZE,
    sigma: float = SIGMA,
    k1: float = K1,
    k2: float = K2,
) -> jax.Array:
    """Mean SSIM (eq. 17) of each pair of images in NHWC batches: ``[B]`` float32.

    ``data_range`` is L in C1 = (K1 L)², C2 = (K2 L)²: 255 for uint8 pixels, 2 for [-1, 1].
    Images must be at least ``win_size`` pixels on each side.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim == 3:
        x, y = x[None], y[None]
    if x.shape != y.shape:
        raise ValueError(f"ssim: image batches differ in shape: {x.shape} vs {y.shape}")
    if x.ndim != 4:
        raise ValueError(f"ssim: expected NHWC images, got shape {x.shape}")
    if min(x.shape[1], x.shape[2]) < win_size:
        raise ValueError(
            f"ssim: images of {x.shape[1]}x{x.shape[2]} are smaller than the "
            f"{win_size}-pixel window"
        )
    m = ssim_map(x, y, data_range, win_size=win_size, sigma=sigma, k1=k1, k2=k2)
    return jnp.mean(m, axis=(1, 2, 3))
