"""SongUNet's 2× resampling (augdiff.models.songunet.resample) against NVlabs/edm's ``Conv2d``
resampling written out here with ``lax.conv_general_dilated``, forward and gradient.

The reference is the depthwise FIR of edm: ``f ⊗ f / (Σf)²`` per channel; down = that
convolution at stride 2 with padding ``(len(f) − 1)//2``; up = its transposed convolution with
the filter ×4. For the box filter ``[1, 1]`` SongUNet uses the closed forms (2×2 mean,
nearest-neighbour repeat), which must equal the convolutions to float rounding; every other
filter goes through SongUNet's own convolution path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from augdiff.models.songunet import resample

DN = ("NHWC", "HWIO", "NHWC")
FILTERS = [(1, 1), (1, 3, 3, 1)]  # DDPM++ (box) and NCSN++ (the two edm ships)


def _depthwise(f, channels: int) -> np.ndarray:
    f = np.asarray(f, np.float64)
    f2 = np.outer(f, f) / f.sum() ** 2
    return np.tile(f2[:, :, None, None], (1, 1, 1, channels)).astype(np.float32)  # HWIO


def ref_down(x, f):
    """edm: ``conv2d(x, f.tile([C,1,1,1]), groups=C, stride=2, padding=(len(f)-1)//2)``."""
    c, pad = x.shape[-1], (len(f) - 1) // 2
    w = jnp.asarray(_depthwise(f, c), x.dtype)
    return lax.conv_general_dilated(x, w, (2, 2), [(pad, pad)] * 2, dimension_numbers=DN,
                                    feature_group_count=c,
                                    precision=lax.Precision.HIGHEST)


def ref_up(x, f):
    """edm: ``conv_transpose2d(x, (4·f).tile([C,1,1,1]), groups=C, stride=2,
    padding=(len(f)-1)//2)``: the input dilated by 2, padded by ``K − 1 − p`` and convolved
    with the spatially flipped kernel."""
    c, k, pad = x.shape[-1], len(f), (len(f) - 1) // 2
    w = jnp.asarray(4 * _depthwise(f, c)[::-1, ::-1], x.dtype)
    q = k - 1 - pad
    return lax.conv_general_dilated(x, w, (1, 1), [(q, q)] * 2, lhs_dilation=(2, 2),
                                    dimension_numbers=DN, feature_group_count=c,
                                    precision=lax.Precision.HIGHEST)


def _x(shape, dtype=jnp.float32, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


def test_reference_up_is_the_transpose_of_reference_down():
    """The written-out transposed convolution is the adjoint of the strided one (×4)."""
    for f in FILTERS:
        y = _x((2, 4, 4, 3), seed=1)
        _, vjp = jax.vjp(lambda z, f=f: ref_down(z, f), jnp.zeros((2, 8, 8, 3)))
        np.testing.assert_allclose(ref_up(y, f), 4 * vjp(y)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("f", FILTERS)
@pytest.mark.parametrize("direction", ["down", "up"])
def test_resample_forward_and_gradient_equal_the_edm_convolution(f, direction):
    shape = (3, 8, 8, 5) if direction == "down" else (3, 4, 4, 5)
    x = _x(shape)
    ours = lambda z: resample(z, f, **{direction: True})  # noqa: E731
    ref = (lambda z: ref_down(z, f)) if direction == "down" else (lambda z: ref_up(z, f))
    y, vjp = jax.vjp(ours, x)
    y_ref, vjp_ref = jax.vjp(ref, x)
    assert y.shape == y_ref.shape == ((3, 4, 4, 5) if direction == "down" else (3, 8, 8, 5))
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    g = _x(y.shape, seed=2)
    (dx,), (dx_ref,) = vjp(g), vjp_ref(g)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)
    # ... and jitted, under jax.grad of a scalar loss.
    loss = lambda fn: jax.jit(jax.grad(lambda z: jnp.sum(fn(z) * g)))(x)  # noqa: E731
    np.testing.assert_allclose(loss(ours), loss(ref), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("direction", ["down", "up"])
def test_box_closed_form_in_bfloat16_matches_the_convolution(direction):
    """The bf16 compute path: equal to the float32 convolution of the same (bf16-exact)
    inputs to bf16 rounding, forward and gradient."""
    shape = (2, 8, 8, 4) if direction == "down" else (2, 4, 4, 4)
    x = _x(shape, jnp.bfloat16)
    ref = ref_down if direction == "down" else ref_up
    y = resample(x, (1, 1), **{direction: True})
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32),
                               np.asarray(ref(x.astype(jnp.float32), (1, 1)), np.float32),
                               rtol=2**-8, atol=2**-8)
    g = _x(y.shape, jnp.bfloat16, seed=3)
    dx = jax.vjp(lambda z: resample(z, (1, 1), **{direction: True}), x)[1](g)[0]
    dx_ref = jax.vjp(lambda z: ref(z, (1, 1)), x.astype(jnp.float32))[1](
        g.astype(jnp.float32))[0]
    # (up's gradient sums 4 bf16 products: an absolute error of a few bf16 ulps of the scale)
    np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(dx_ref), rtol=2**-7,
                               atol=2**-7 * float(np.abs(dx_ref).max()))


def test_box_closed_form_has_no_convolution():
    """[1, 1] down/up and their gradients lower without any convolution (XLA:TPU handles
    channel-wide depthwise convolutions and their gradients slowly); other filters keep
    the FIR convolution."""
    x = _x((2, 8, 8, 6))

    def hlo(f, **kw):
        return jax.jit(jax.grad(lambda z: jnp.sum(resample(z, f, **kw) ** 2))).lower(
            x).as_text()

    for kw in ({"down": True}, {"up": True}):
        assert "convolution" not in hlo((1, 1), **kw)
        assert "convolution" in hlo((1, 3, 3, 1), **kw)
