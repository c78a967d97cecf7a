"""Image dtype and range conversions: uint8 [0, 255] ↔ float [0, 1] ↔ float [-1, 1], and resizing.

One home for the conversions the loaders, generators and stores share. Each function states
its formula; the roundings differ on purpose (each matches the code it reproduces), so pick
the one whose formula a caller's numbers were made with:

- :func:`to_signed`          uint8 → float32 [-1, 1]:  ``x / 127.5 − 1``
- :func:`signed_to_uint8`    float [-1, 1] → uint8:   ``clip(rint(127.5·x + 127.5), 0, 255)``
- :func:`edm_to_uint8`       float [-1, 1] → uint8:   ``clip(rint(127.5·x + 128 − 0.5), 0, 255)``
  (NVlabs/edm ``generate.py``; equal to the one above but for the last bit of the sum)
- :func:`unit_to_uint8`      float [0, 1] → uint8:    ``round(clip(x, 0, 1) · 255)``
- :func:`signed_to_unit`     float [-1, 1] → [0, 1]:  ``clip(x / 2 + 0.5, 0, 1)``
- :func:`range_to_uint8`     float in ``[lo, hi]`` → uint8: ``clip(⌊(x − lo)·255/(hi − lo) + 0.5⌋)``
- :func:`uint8_to_range`     uint8 → float32 in ``[lo, hi]``: ``lo + (hi − lo)·(x / 255)``
- :func:`resize_uint8`       uint8 NHWC → ``size``² (PIL bicubic), 1 channel → RGB
- :func:`to_signed_rgb`      uint8 NHWC → float32 RGB [-1, 1] (at ``size``²): ``x / 127.5 − 1``
- :func:`unit_to_store`      float [0, 1] → a store's uint8 at ``size``² (and 1-channel luma)

Functions marked "numpy or jax" keep the array type they are given (a ``jax.Array``, traced
or not, stays on device; anything else becomes a numpy array).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def _xp(x: Any) -> Any:
    return jnp if isinstance(x, jax.Array) else np


def to_signed(images_uint8: Any) -> Any:
    """uint8 [0, 255] → float32 [-1, 1]: ``x / 127.5 − 1`` (numpy or jax)."""
    if isinstance(images_uint8, jax.Array):
        return images_uint8.astype(jnp.float32) / 127.5 - 1.0
    return np.asarray(images_uint8, np.float32) / 127.5 - 1.0


def signed_to_uint8(x: Any) -> Any:
    """float [-1, 1] → uint8: ``clip(rint(127.5·x + 127.5), 0, 255)`` (numpy or jax)."""
    xp = _xp(x)
    return xp.clip(xp.rint(x * 127.5 + 127.5), 0, 255).astype(xp.uint8)


def edm_to_uint8(x: Any) -> np.ndarray:
    """float [-1, 1] → uint8 numpy: ``clip(rint(float32(x)·127.5 + 128 − 0.5), 0, 255)``, the
    rounding of NVlabs/edm ``generate.py`` (what EDM sample stores hold)."""
    x = np.asarray(x, np.float32)
    return np.clip(np.rint(x * 127.5 + 128.0 - 0.5), 0, 255).astype(np.uint8)


def unit_to_uint8(images01: Any) -> np.ndarray:
    """float [0, 1] → uint8 numpy: ``round(clip(x, 0, 1) · 255)`` (round half to even)."""
    return np.asarray(np.round(np.clip(np.asarray(images01), 0, 1) * 255), np.uint8)


def signed_to_unit(images: jax.Array) -> jax.Array:
    """float [-1, 1] → [0, 1]: ``clip(x / 2 + 0.5, 0, 1)`` (diffusers' post-processing; jax)."""
    return jnp.clip(images / 2 + 0.5, 0.0, 1.0)


def range_to_uint8(x: Any, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """float in ``value_range = (lo, hi)`` → uint8 numpy:
    ``clip(⌊(float32(x) − lo) · (255 / (hi − lo)) + 0.5⌋, 0, 255)`` (round half up)."""
    lo, hi = value_range
    y = (np.asarray(x, np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


def uint8_to_range(x: Any, value_range: tuple[float, float] = (-1.0, 1.0)) -> jax.Array:
    """uint8 → float32 jax array in ``value_range = (lo, hi)``: ``lo + (hi − lo) · (x / 255)``
    (the inverse of :func:`range_to_uint8` on the grid)."""
    lo, hi = value_range
    return lo + (hi - lo) * (jnp.asarray(x, jnp.float32) / 255.0)


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC → ``size``² (PIL bicubic, antialiased when shrinking); 1 channel → RGB; the
    input itself when it already is ``size``²."""
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 NHWC images, got {x.dtype} {x.shape}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[1:3] == (size, size):
        return x
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) for a in x])


def to_signed_rgb(images_uint8: np.ndarray, size: int | None = None) -> np.ndarray:
    """uint8 NHWC (1 or 3 channels) → float32 RGB in [-1, 1]: 1 channel repeated to RGB,
    resized (:func:`resize_uint8`) to ``size``² when ``size`` is given, then ``x / 127.5 − 1``
    (what the Stable Diffusion encoders take)."""
    x = np.asarray(images_uint8)
    if size:
        x = resize_uint8(x, int(size))
    elif x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x.astype(np.float32) / 127.5 - 1.0


def unit_to_store(images01: Any, size: int, channels: int = 3) -> np.ndarray:
    """float [0, 1] NHWC → the uint8 a store holds: :func:`unit_to_uint8`, then
    :func:`resize_uint8` to ``size``², then for ``channels = 1`` ITU-R 601 luma (PIL ``L``)."""
    out = resize_uint8(unit_to_uint8(images01), int(size))
    if channels == 1:
        out = np.stack([np.asarray(Image.fromarray(a).convert("L"))[..., None] for a in out])
    return out
