"""Classical augmentation as pure, jitted, on-device batch transforms (NHWC float images).

Every function takes an explicit ``jax.random`` key and a batch ``x`` of shape ``[N,H,W,C]``
(values in [-1, 1] or [0, 1]; the fill value is a parameter). These are the baselines of
seed 003, Table 4:

* :func:`random_crop_flip` — zero-pad by ``pad`` pixels, take a random ``H×W`` crop, flip
  horizontally with probability 1/2 (the standard CIFAR recipe, He et al. 2016).
* :func:`cutout` — zero a ``size×size`` square centred at a uniform pixel, clipped at the
  border (DeVries & Taylor 2017).
* :func:`mixup` — ``λ ~ Beta(α, α)``; ``x̃ = λx_i + (1−λ)x_j``, ``ỹ = λy_i + (1−λ)y_j`` with
  ``j`` a random permutation of the batch (Zhang et al. 2018).
* :func:`cutmix` — ``λ ~ Beta(α, α)``; paste a box of side ratio ``√(1−λ)`` from ``x_j``
  into ``x_i`` and mix labels with the *realised* area, ``λ' = 1 − |box| / (HW)``
  (Yun et al. 2019).

One λ (and one box, for CutMix) per batch, as in the reference implementations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _check_images(x: jax.Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"augment: expected an NHWC batch, got shape {x.shape}")


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"augment: Beta(alpha, alpha) needs alpha > 0, got {alpha}")


@functools.partial(jax.jit, static_argnames=("pad",))
def random_crop_flip(key: jax.Array, x: jax.Array, pad: int = 4, fill: float = 0.0) -> jax.Array:
    """Pad by ``pad`` pixels of ``fill``, crop ``H×W`` at a random offset, flip with prob. 1/2."""
    _check_images(x)
    if pad < 0:
        raise ValueError(f"random_crop_flip: pad must be >= 0, got {pad}")
    n, h, w, c = x.shape
    k_crop, k_flip = jax.random.split(key)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
    crop = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
        xp, offsets
    )
    flip = jax.random.bernoulli(k_flip, 0.5, (n,))
    return jnp.where(flip[:, None, None, None], crop[:, :, ::-1], crop)


def box_mask(
    h: int, w: int, y0: jax.Array, y1: jax.Array, x0: jax.Array, x1: jax.Array
) -> jax.Array:
    """Boolean ``[h, w]`` mask of rows ``[y0, y1)`` and columns ``[x0, x1)``."""
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def cutmix_box(
    lam: jax.Array, cy: jax.Array, cx: jax.Array, h: int, w: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The CutMix box (Yun et al. 2019, §3.1) of ``λ`` centred at pixel ``(cy, cx)``: side
    ratio ``√(1 − λ)`` (``⌊h√(1−λ)⌋ × ⌊w√(1−λ)⌋``), clipped at the border. Returns rows
    ``[y0, y1)`` and columns ``[x0, x1)``. The one box geometry of :func:`cutmix` and of
    augmented conditioning's per-pair CutMix (:func:`augdiff.methods.augcond.cutmix_box`),
    which draw ``λ`` and the centre from their own keys."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(h * ratio).astype(jnp.int32)
    cut_w = jnp.floor(w * ratio).astype(jnp.int32)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
    return y0, y1, x0, x1


@functools.partial(jax.jit, static_argnames=("size",))
def cutout(key: jax.Array, x: jax.Array, size: int, fill: float = 0.0) -> jax.Array:
    """Set a ``size×size`` square (centre uniform over the image, clipped) to ``fill``."""
    _check_images(x)
    if size <= 0:
        raise ValueError(f"cutout: size must be > 0, got {size}")
    n, h, w, _ = x.shape
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (n,), 0, h)
    cx = jax.random.randint(kx, (n,), 0, w)
    y0, x0 = cy - size // 2, cx - size // 2
    masks = jax.vmap(lambda a, b: box_mask(h, w, a, a + size, b, b + size))(y0, x0)
    return jnp.where(masks[..., None], jnp.asarray(fill, x.dtype), x)


@functools.partial(jax.jit, static_argnames=("alpha",))
def mixup(
    key: jax.Array, x: jax.Array, y_onehot: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array]:
    """Mixup: ``λ ~ Beta(α, α)``; ``(λx + (1−λ)x[π], λy + (1−λ)y[π])``, π a random permutation."""
    _check_images(x)
    _check_alpha(alpha)
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha).astype(x.dtype)
    perm = jax.random.permutation(k_perm, x.shape[0])
    x_mix = lam * x + (1 - lam) * x[perm]
    y_mix = (
        lam.astype(y_onehot.dtype) * y_onehot + (1 - lam.astype(y_onehot.dtype)) * y_onehot[perm]
    )
    return x_mix, y_mix


@functools.partial(jax.jit, static_argnames=("alpha",))
def cutmix(
    key: jax.Array, x: jax.Array, y_onehot: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array]:
    """CutMix: paste a box of area ≈ (1−λ)HW from ``x[π]``; labels weighted by the realised area."""
    _check_images(x)
    _check_alpha(alpha)
    n, h, w, _ = x.shape
    k_lam, k_perm, ky, kx = jax.random.split(key, 4)
    lam = jax.random.beta(k_lam, alpha, alpha)
    cy = jax.random.randint(ky, (), 0, h)
    cx = jax.random.randint(kx, (), 0, w)
    y0, y1, x0, x1 = cutmix_box(lam, cy, cx, h, w)
    mask = box_mask(h, w, y0, y1, x0, x1)
    perm = jax.random.permutation(k_perm, n)
    x_mix = jnp.where(mask[None, :, :, None], x[perm], x)
    lam_area = (1.0 - (y1 - y0) * (x1 - x0) / (h * w)).astype(y_onehot.dtype)
    y_mix = lam_area * y_onehot + (1 - lam_area) * y_onehot[perm]
    return x_mix, y_mix


def normalize(images_uint8: jax.Array, zero_centered: bool = True) -> jax.Array:
    """uint8 ``[0, 255]`` → float32 in [-1, 1] (or [0, 1]): the on-device step after the loader."""
    x = images_uint8.astype(jnp.float32) / 255.0
    return x * 2.0 - 1.0 if zero_centered else x
