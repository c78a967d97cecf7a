"""One convolution for every augdiff model: XLA's forward, and on CPU a faster weight gradient.

``conv_general_dilated`` has the signature of :func:`jax.lax.conv_general_dilated` and is
passed to ``flax.linen.Conv`` through its ``conv_general_dilated`` field (see :func:`Conv`),
so parameter trees, names, shapes, initialisers and checkpoints are unchanged.

Why: XLA's CPU runtime computes the weight gradient of a convolution (the contraction of the
input with the output cotangent over the batch and spatial axes) far slower than the forward
pass or the input gradient -- on a 2-core AVX2 machine 8-10 s for one 3×3 128→128 conv at
32², batch 128, against 0.5 s forward. The same gradient written as one matmul per kernel
offset -- stacked into one GEMM over im2col patches -- is a plain matrix product that the
CPU runtime does well:

    dW[kh, kw, ci, co] = Σ_{n,i,j} x_pad[n, s·i + kh, s·j + kw, ci] · g[n, i, j, co]

(with ``s`` the stride, ``x_pad`` the padded input, ``g`` the output cotangent; for
``G`` groups the sum runs per group, ``ci`` and ``co`` in the same group). The forward pass
and the input gradient stay XLA's (the input gradient is the VJP of ``lax`` itself).

Where: the custom weight gradient is used when tracing for the CPU (decided at trace time
from :func:`augdiff.distributed.target_platform`, so a program compiled ahead of time for a
TPU on a CPU machine gets the TPU's path) and the convolution is one it supports (NHWC/HWIO,
no input or kernel dilation); everywhere else -- GPUs, TPUs, unsupported configurations --
the call is exactly ``lax.conv_general_dilated`` with its native gradient. The environment
variable ``AUGDIFF_CONV_WGRAD`` overrides the choice: ``auto`` (default), ``matmul``
(custom gradient on any backend) or ``native`` (never).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from augdiff import distributed

Array = jax.Array

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def wgrad_mode() -> str:
    """``"matmul"`` or ``"native"``: which weight gradient a convolution traced now gets."""
    mode = os.environ.get("AUGDIFF_CONV_WGRAD", "auto").lower()
    if mode not in ("auto", "matmul", "native"):
        raise ValueError(f"AUGDIFF_CONV_WGRAD must be auto, matmul or native, not {mode!r}")
    if mode == "auto":
        return "matmul" if distributed.target_platform() == "cpu" else "native"
    return mode


def _is_nhwc(dimension_numbers: Any, ndim: int) -> bool:
    if ndim != 4:
        return False
    if dimension_numbers is None:
        return False
    try:
        dn = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers)
    except (TypeError, ValueError):
        return False
    return tuple(dn) == tuple(_NHWC)


def _explicit_padding(padding: str | Sequence[tuple[int, int]], in_hw: Sequence[int],
                      k_hw: Sequence[int], strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(tuple(p) for p in lax.padtype_to_pads(in_hw, k_hw, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


# Bytes of im2col patches built at once. Up to DIRECT_PATCH_BYTES the whole batch is one GEMM;
# above, the batch is cut into chunks of about PATCH_BYTES whose partial weight gradients a
# ``lax.scan`` accumulates, so one patch buffer, small enough to stay in cache, is reused.
# Measured on a 2-core AMD EPYC (AVX-512), 3×3 convolutions, batch 128: 8 MB chunks in a scan
# are 2.5-3× faster than 256 MB chunks unrolled (e.g. 64→64 at 32²: 252 vs 766 ms; PyTorch's
# weight gradient 163 ms) and the buffer stays small; chunks of 32-128 MB are slower again.
PATCH_BYTES = 8 * 2**20
DIRECT_PATCH_BYTES = 16 * 2**20


def _patch_gemm(xb: Array, g: Array, kernel_hw: tuple[int, int], strides: tuple[int, int],
                groups: int, precision: Any) -> Array:
    """``Σ_{n,i,j} cols[n, i, j]ᵀ g[n, i, j]`` for one chunk: ``[KH·KW, C // groups, O]``
    (float32), ``cols`` the KH·KW strided windows of the padded input ``xb`` stacked on the
    channel axis (im2col)."""
    kh_, kw_ = kernel_hw
    sh, sw = strides
    b, _, _, c = xb.shape
    _, ho, wo, o = g.shape
    cg, og, kk = c // groups, o // groups, kh_ * kw_
    cols = jnp.stack([
        lax.slice(xb, (0, kh, kw, 0),
                  (b, kh + (ho - 1) * sh + 1, kw + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
        for kh in range(kh_) for kw in range(kw_)], axis=3)  # [b, Ho, Wo, KK, C]
    m = b * ho * wo
    gb = g.reshape(m, o)
    if groups == 1:
        return jnp.dot(cols.reshape(m, kk * c).T, gb, precision=precision,
                       preferred_element_type=jnp.float32).reshape(kk, c, o)
    return jnp.einsum("mkgc,mgo->kcgo", cols.reshape(m, kk, groups, cg),
                      gb.reshape(m, groups, og), precision=precision,
                      preferred_element_type=jnp.float32).reshape(kk, cg, o)


def weight_grad(x: Array, g: Array, kernel_hw: tuple[int, int], strides: tuple[int, int],
                padding: tuple[tuple[int, int], ...], groups: int,
                precision: Any = None, out_dtype: Any = None) -> Array:
    """Weight gradient (HWIO) of an NHWC convolution as a GEMM over im2col patches.

    ``x``: input ``[N, H, W, C]``; ``g``: output cotangent ``[N, Ho, Wo, O]``; returns
    ``dW[kh, kw] = Σ_{n,i,j} x_pad[n, s_h·i + kh, s_w·j + kw, :]ᵀ g[n, i, j, :]`` per group,
    shape ``[KH, KW, C // groups, O]``, accumulated in float32. The ``KH·KW`` shifted windows
    are stacked on the channel axis (im2col) so the contraction over ``n, i, j`` is a matrix
    product: one for the whole batch when its patches fit :data:`DIRECT_PATCH_BYTES`, else
    one per chunk of about :data:`PATCH_BYTES`, summed by a ``lax.scan`` (and one for the
    remainder of the batch).
    """
    n, _, _, c = x.shape
    _, ho, wo, o = g.shape
    (pt, pb), (pl, pr) = padding
    # Negative padding crops; lax.pad handles both signs.
    xp = lax.pad(x, jnp.array(0, x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
    kk = kernel_hw[0] * kernel_hw[1]
    per_image = ho * wo * kk * c * x.dtype.itemsize

    def gemm(xb, gb):
        return _patch_gemm(xb, gb, kernel_hw, strides, groups, precision)

    if n * per_image <= DIRECT_PATCH_BYTES:
        dw = gemm(xp, g)
    else:
        chunk = max(1, min(n, PATCH_BYTES // max(per_image, 1)))
        k = n // chunk
        main = k * chunk
        xs = xp[:main].reshape((k, chunk) + xp.shape[1:])
        gs = g[:main].reshape((k, chunk) + g.shape[1:])
        dw, _ = lax.scan(lambda acc, xg: (acc + gemm(*xg), None),
                         jnp.zeros((kk, c // groups, o), jnp.float32), (xs, gs))
        if main < n:
            dw = dw + gemm(xp[main:], g[main:])
    return dw.reshape(kernel_hw[0], kernel_hw[1], c // groups, o).astype(out_dtype or x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_matmul_wgrad(lhs: Array, rhs: Array, strides: tuple[int, int],
                       padding: tuple[tuple[int, int], ...], groups: int,
                       precision: Any) -> Array:
    return lax.conv_general_dilated(lhs, rhs, strides, padding, dimension_numbers=_NHWC,
                                    feature_group_count=groups, precision=precision)


def _fwd(lhs, rhs, strides, padding, groups, precision):
    return _conv_matmul_wgrad(lhs, rhs, strides, padding, groups, precision), (lhs, rhs)


def _bwd(strides, padding, groups, precision, res, g):
    lhs, rhs = res
    _, dgrad_vjp = jax.vjp(
        lambda x: lax.conv_general_dilated(x, rhs, strides, padding, dimension_numbers=_NHWC,
                                           feature_group_count=groups, precision=precision),
        lhs)
    (dx,) = dgrad_vjp(g)
    dw = weight_grad(lhs, g, rhs.shape[:2], strides, padding, groups, precision, rhs.dtype)
    return dx, dw


_conv_matmul_wgrad.defvjp(_fwd, _bwd)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> Array:
    """Drop-in for :func:`jax.lax.conv_general_dilated` with the CPU weight gradient above.

    Same arguments and same forward values (it *is* XLA's forward). The custom gradient
    applies to NHWC/HWIO 2-D convolutions without dilation, with any stride, explicit or
    ``SAME``/``VALID`` padding and feature groups, when :func:`wgrad_mode` is ``matmul``;
    every other call goes straight to ``lax``.
    """
    def unit(d):
        return d is None or all(int(v) == 1 for v in d)

    supported = (
        _is_nhwc(dimension_numbers, lhs.ndim) and unit(lhs_dilation) and unit(rhs_dilation)
        and batch_group_count == 1 and preferred_element_type is None
        and rhs.ndim == 4
    )
    if not supported or wgrad_mode() != "matmul":
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    strides = tuple(int(s) for s in window_strides)
    pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], strides)
    return _conv_matmul_wgrad(lhs, rhs, strides, pads, int(feature_group_count), precision)


def Conv(*args: Any, **kwargs: Any) -> nn.Conv:  # noqa: N802 (a module constructor)
    """``flax.linen.Conv`` with :func:`conv_general_dilated`: same fields, same parameters."""
    return nn.Conv(*args, conv_general_dilated=conv_general_dilated, **kwargs)


# ------------------------------------------------------- im2col forward for flax nn.Conv


def im2col_forward(x: jax.Array, kernel: jax.Array, pad: tuple[int, int]) -> jax.Array:
    """Stride-1 NHWC/HWIO convolution as ONE GEMM over the KH·KW shifted windows
    (zero padding ``pad`` = (rows, cols) on both sides). On the CPU, XLA's convolution at tiny
    spatial sizes (2²–4² with 1280 channels, the bottom of SD's UNet at 16² latents) runs at
    ~1 GFLOP/s; this GEMM form is 59× faster at 2² and 2× at 4² there (measured)."""
    kh, kw, c, o = kernel.shape
    n, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    ho, wo = h + 2 * pad[0] - kh + 1, w + 2 * pad[1] - kw + 1
    cols = jnp.concatenate(
        [xp[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
    out = cols.reshape(-1, kh * kw * c) @ kernel.reshape(kh * kw * c, o)
    return out.reshape(n, ho, wo, o)


@contextlib.contextmanager
def im2col_intercept(max_spatial: int = 8) -> Iterator[None]:
    """Inside the block, every flax ``nn.Conv`` call that is stride 1, undilated, ungrouped,
    with symmetric, SAME or VALID padding on a NHWC input of at most ``max_spatial`` rows runs as
    :func:`im2col_forward` (same parameters); any other call is left to flax."""
    def interceptor(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        m = context.module
        if context.method_name != "__call__" or type(m) is not nn.Conv or kwargs or len(args) != 1:
            return next_fun(*args, **kwargs)
        x = args[0]
        ks = tuple(m.kernel_size)
        ok = (x.ndim == 4 and len(ks) == 2 and x.shape[1] <= max_spatial
              and all(s == 1 for s in _tup(m.strides)) and all(d == 1 for d in _tup(
                  m.kernel_dilation)) and all(d == 1 for d in _tup(m.input_dilation))
              and m.feature_group_count == 1 and m.mask is None)
        if ok and m.padding == "SAME" and all(k % 2 == 1 for k in ks):
            pad = (ks[0] // 2, ks[1] // 2)
        elif ok and m.padding == "VALID":
            pad = (0, 0)
        elif ok and isinstance(m.padding, tuple | list) and len(m.padding) == 2 and all(
                isinstance(p, tuple | list) and p[0] == p[1] for p in m.padding):
            pad = (int(m.padding[0][0]), int(m.padding[1][0]))
        else:
            return next_fun(*args, **kwargs)
        params = m.variables["params"]
        dtype = m.dtype or x.dtype
        y = im2col_forward(x.astype(dtype), params["kernel"].astype(dtype), pad)
        if m.use_bias:
            y = y + params["bias"].astype(dtype)
        return y

    with nn.intercept_methods(interceptor):
        yield


def _tup(v: Any) -> tuple:
    if v is None:
        return (1,)
    return tuple(v) if isinstance(v, tuple | list) else (v,)
