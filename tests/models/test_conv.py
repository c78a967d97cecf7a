"""augdiff.models.conv: forward identical to lax, input and weight gradients equal to
PyTorch's conv2d backward (an independent reference) and to lax's autodiff."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from augdiff.models import conv as aconv

DN = ("NHWC", "HWIO", "NHWC")

# (kernel, stride, padding, groups, cin, cout): the models' cases plus odd ones.
CASES = [
    (3, 1, "SAME", 1, 6, 8),
    (3, 1, ((1, 1), (1, 1)), 1, 6, 8),
    (3, 2, ((1, 1), (1, 1)), 1, 6, 8),      # ResNet downsampling 3x3
    (1, 2, ((0, 0), (0, 0)), 1, 6, 8),      # projection shortcut
    (1, 1, ((0, 0), (0, 0)), 1, 6, 12),     # EDM qkv / proj
    (3, 1, ((1, 1), (1, 1)), 2, 8, 8),      # ResNeXt grouped
    (3, 2, ((1, 1), (1, 1)), 4, 8, 12),     # grouped, strided
    (7, 2, ((3, 3), (3, 3)), 1, 3, 8),      # ImageNet stem
    (3, 2, "SAME", 1, 6, 8),                # asymmetric SAME padding at stride 2
    (2, 1, ((1, 0), (0, 1)), 1, 6, 8),      # even kernel, asymmetric explicit
]


def _data(k, cin, cout, groups, seed=0, hw=9):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, hw, hw, cin)).astype(np.float32)
    w = rng.standard_normal((k, k, cin // groups, cout)).astype(np.float32)
    return x, w


def _ours(x, w, s, pad, groups):
    return aconv.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=DN,
                                      feature_group_count=groups)


@pytest.fixture(autouse=True)
def _matmul_mode(monkeypatch):
    monkeypatch.setenv("AUGDIFF_CONV_WGRAD", "matmul")


@pytest.mark.parametrize("k,s,pad,groups,cin,cout", CASES)
def test_forward_and_grads_match_lax(k, s, pad, groups, cin, cout):
    x, w = _data(k, cin, cout, groups)

    def ref(x, w):
        return lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=DN,
                                        feature_group_count=groups)

    y_ref, vjp_ref = jax.vjp(ref, x, w)
    y = jax.jit(lambda a, b: _ours(a, b, s, pad, groups))(x, w)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    g = np.random.default_rng(1).standard_normal(y_ref.shape).astype(np.float32)
    dx_ref, dw_ref = vjp_ref(g)
    dx, dw = jax.jit(lambda a, b, c: jax.vjp(lambda u, v: _ours(u, v, s, pad, groups),
                                             a, b)[1](c))(x, w, g)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,s,pad,groups,cin,cout",
                         [c for c in CASES if not isinstance(c[2], str)])
def test_grads_match_torch(k, s, pad, groups, cin, cout):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w = _data(k, cin, cout, groups, seed=2)
    (pt, pb), (pl, pr) = pad
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
    yt = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt, stride=s, groups=groups)
    g = np.random.default_rng(3).standard_normal(yt.shape).astype(np.float32)
    yt.backward(torch.from_numpy(g))
    y, vjp = jax.vjp(lambda u, v: _ours(u, v, s, pad, groups), jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(g.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(dw, wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-5,
                               atol=1e-4)


def test_bf16_weight_gradient_dtype_and_value():
    x, w = _data(3, 6, 8, 1)
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    f = lambda u, v: _ours(u, v, 1, "SAME", 1).astype(jnp.float32).sum()  # noqa: E731
    dw = jax.grad(f, 1)(xb, wb)
    assert dw.dtype == jnp.bfloat16
    # Σ over n,i,j of the (zero-padded) input window: the closed form of d(sum y)/dW.
    xp = np.pad(np.asarray(xb, np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.stack([np.stack([xp[:, a:a + 9, b:b + 9].sum((0, 1, 2)) for b in range(3)])
                    for a in range(3)])
    np.testing.assert_allclose(np.asarray(dw, np.float32)[..., 0], ref, rtol=2e-2, atol=0.3)


def test_mode_selection(monkeypatch):
    monkeypatch.setenv("AUGDIFF_CONV_WGRAD", "auto")
    assert aconv.wgrad_mode() == ("matmul" if jax.default_backend() == "cpu" else "native")
    monkeypatch.setenv("AUGDIFF_CONV_WGRAD", "native")
    x, w = _data(3, 6, 8, 1)
    jaxpr = str(jax.make_jaxpr(lambda a, b: _ours(a, b, 1, "SAME", 1))(x, w))
    assert "custom_vjp" not in jaxpr
    monkeypatch.setenv("AUGDIFF_CONV_WGRAD", "matmul")
    jaxpr = str(jax.make_jaxpr(lambda a, b: _ours(a, b, 1, "SAME", 1))(x, w))
    assert "custom_vjp" in jaxpr
    # Unsupported (dilated) convolutions go straight to lax.
    jaxpr = str(jax.make_jaxpr(lambda a, b: aconv.conv_general_dilated(
        a, b, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=DN))(x, w))
    assert "custom_vjp" not in jaxpr
    monkeypatch.setenv("AUGDIFF_CONV_WGRAD", "fast")
    with pytest.raises(ValueError, match="AUGDIFF_CONV_WGRAD"):
        aconv.wgrad_mode()


def test_flax_module_same_parameters_as_nn_conv():
    x = jnp.ones((2, 8, 8, 4))
    kw = dict(features=6, kernel_size=(3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)],
              feature_group_count=2)
    ref = nn.Conv(**kw)
    ours = aconv.Conv(**kw)
    p_ref = ref.init(jax.random.PRNGKey(0), x)
    p = ours.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(p_ref)
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(p_ref), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ours.apply(p, x), ref.apply(p_ref, x))
    g_ref = jax.grad(lambda q: (ref.apply(q, x) ** 2).sum())(p_ref)
    g = jax.grad(lambda q: (ours.apply(q, x) ** 2).sum())(p)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_images", [1, 4])
def test_chunked_weight_gradient_matches_lax(monkeypatch, chunk_images):
    """The scanned chunks (and, for 4 images a chunk, the remainder of a batch of 6) sum to
    the same weight gradient as lax's autodiff."""
    per_image = 4 * 4 * 9 * 8 * 4  # Ho·Wo·KH·KW·C·bytes
    monkeypatch.setattr(aconv, "DIRECT_PATCH_BYTES", 0)
    monkeypatch.setattr(aconv, "PATCH_BYTES", chunk_images * per_image)
    x, w = _data(3, 8, 12, 2, hw=7)
    x = np.concatenate([x, -2 * x, x[::-1]], 0)  # batch 6
    g = np.random.default_rng(5).standard_normal((6, 4, 4, 12)).astype(np.float32)

    def grad_w(fn):
        return jax.vjp(lambda v: fn(x, v, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN,
                                    feature_group_count=2), w)[1](g)[0]

    np.testing.assert_allclose(grad_w(aconv.conv_general_dilated),
                               grad_w(lax.conv_general_dilated), rtol=1e-5, atol=1e-4)


def test_im2col_intercept_equals_flax_conv():
    """augdiff.models.conv.im2col_intercept: the GEMM form of small-spatial nn.Conv calls gives
    flax's own outputs (SAME, symmetric explicit padding, 1x1, bias); stride 2 is left alone."""
    from augdiff.models.conv import im2col_intercept

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 6))
    for kw in (dict(kernel_size=(3, 3), padding="SAME"),
               dict(kernel_size=(3, 3), padding=((1, 1), (1, 1))),
               dict(kernel_size=(1, 1), padding="VALID"),
               dict(kernel_size=(3, 3), strides=(2, 2), padding="SAME")):
        m = nn.Conv(5, **kw)
        v = m.init(jax.random.PRNGKey(1), x)
        v = jax.tree_util.tree_map(lambda a: a + 0.1, v)  # non-zero bias
        want = m.apply(v, x)
        with im2col_intercept():
            got = m.apply(v, x)
            jaxpr = str(jax.make_jaxpr(m.apply)(v, x))  # traced under the interceptor
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
        uses_conv = "conv_general_dilated" in jaxpr
        assert uses_conv == (kw.get("strides") == (2, 2)), kw
