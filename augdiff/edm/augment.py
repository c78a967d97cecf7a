"""EDM's non-leaky augmentation pipe (Karras et al. 2022, App. F.2; seed 004 Table 9) in JAX.

The geometric part that NVlabs/edm trains CIFAR-10 and FFHQ with (``train.py --augment=p``:
``xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1``), run on device
inside the jitted train step. Every operation ``k`` is *applied* to an example with
probability ``min(mult_k · p, 1)``; when it is not applied its parameter is the identity
(``w = 0``). Per example, with ``W × H`` images:

- x-flip / y-flip: ``w ∈ {0, 1}`` drawn uniformly when the op is applied (so with
  ``xflip = 1e8`` half of all images are mirrored), label ``w``;
- isotropic scaling ``s = 2^(w·scale_std)``, ``w ~ N(0, 1)``, label ``w``;
- rotation by ``θ = w``, ``w ~ U(−π·rotate_frac_max, π·rotate_frac_max)``, labels
  ``(cos θ − 1, sin θ)``;
- anisotropic scaling ``2^(±w·aniso_std)`` along an axis rotated by ``r`` (``r ~ U(−π, π)``
  with probability ``aniso_rotate_prob``, else 0), ``w ~ N(0, 1)``, labels ``(w cos r,
  w sin r)``;
- translation, ``translate='frac'`` (EDM's setting): ``t = w·(W, H)·translate_frac_std``
  pixels, ``w ~ N(0, I₂)``, labels ``w``; or ``translate='int'``: ``t = round(w·(W, H)·
  translate_int_max)`` whole pixels, ``w ~ U(−1, 1)²``, labels ``t / ((W, H)·translate_int_max)``,
  executed by reflection exactly as EDM's integer translation.

The 9 labels ``[xflip, yflip, scale, cos θ − 1, sin θ, w cos r, w sin r, t_x, t_y]`` (EDM's
order) are the network's ``augment_labels``; sampling passes zeros (no augmentation). The
affine part composes EDM's inverse matrix ``G⁻¹ = S(1/s)·R(θ)·R(−r)S(2^(−w a), 2^(w a))R(r)·
T(−t)`` (pixel units, origin at the image centre) and samples the input at ``G⁻¹·p`` for
every output pixel ``p``, bilinearly, with mirror padding. Deviation from NVlabs/edm: it
does not super-sample through the 2× ``sym6`` wavelet filter bank (anti-aliasing); for the
small scale / rotation changes at p ≈ 0.1 the difference is sub-pixel filtering only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
AUGMENT_DIM = 9

#: Table 9 of seed 004 (= NVlabs/edm train.py defaults for these datasets).
PRESETS = {"cifar10": 0.12, "ffhq64": 0.15}


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probability multipliers and ranges of the pipe (NVlabs/edm ``AugmentPipe`` names)."""

    p: float = 0.12
    xflip: float = 1e8
    yflip: float = 1.0
    scale: float = 1.0
    rotate_frac: float = 1.0
    aniso: float = 1.0
    translate: float = 1.0
    translate_mode: str = "frac"  # 'frac' (EDM) | 'int'
    scale_std: float = 0.2
    rotate_frac_max: float = 1.0
    aniso_std: float = 0.2
    aniso_rotate_prob: float = 0.5
    translate_frac_std: float = 0.125
    translate_int_max: float = 0.125

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"augment.p must lie in [0, 1], got {self.p}")
        if self.translate_mode not in ("frac", "int"):
            raise ValueError(f"augment.translate_mode must be 'frac' or 'int', got "
                             f"{self.translate_mode!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> AugmentConfig:
        """From a config block with any of the field names (others keep their defaults)."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in cfg.keys() if k not in fields)
        if unknown:
            raise ValueError(f"augment: unknown field(s) {unknown}; known: {sorted(fields)}")
        return cls(**{k: (str(v) if k == "translate_mode" else float(v))
                      for k, v in cfg.items()})


def _prob(mult: float, p: float) -> float:
    return min(float(mult) * float(p), 1.0)


def sample_params(key: Array, n: int, cfg: AugmentConfig) -> dict[str, Array]:
    """Per-example parameters ``[n]`` of every op (identity where the op is not applied)."""
    ks = jax.random.split(key, 16)

    def gate(k: Array, mult: float, w: Array) -> Array:
        return jnp.where(jax.random.uniform(k, (n,)) < _prob(mult, cfg.p), w, jnp.zeros_like(w))

    rmax = math.pi * cfg.rotate_frac_max
    prm = {
        "xflip": gate(ks[0], cfg.xflip, jax.random.randint(ks[1], (n,), 0, 2)),
        "yflip": gate(ks[2], cfg.yflip, jax.random.randint(ks[3], (n,), 0, 2)),
        "scale": gate(ks[4], cfg.scale, jax.random.normal(ks[5], (n,))),
        "rotate": gate(ks[6], cfg.rotate_frac,
                       jax.random.uniform(ks[7], (n,), minval=-rmax, maxval=rmax)),
        "aniso": gate(ks[8], cfg.aniso, jax.random.normal(ks[9], (n,))),
    }
    r = jax.random.uniform(ks[10], (n,), minval=-math.pi, maxval=math.pi)
    rot = (jax.random.uniform(ks[11], (n,)) < cfg.aniso_rotate_prob) & (prm["aniso"] != 0)
    prm["aniso_r"] = jnp.where(rot, r, 0.0)  # no axis rotation where no aniso is applied
    if cfg.translate_mode == "frac":
        w = jax.random.normal(ks[12], (2, n))
    else:
        w = jax.random.uniform(ks[12], (2, n), minval=-1.0, maxval=1.0)
    on = jax.random.uniform(ks[13], (n,)) < _prob(cfg.translate, cfg.p)
    prm["tx"], prm["ty"] = jnp.where(on, w[0], 0.0), jnp.where(on, w[1], 0.0)
    return prm


def _translation_pixels(prm: dict[str, Array], h: int, w: int,
                        cfg: AugmentConfig) -> tuple[Array, Array]:
    if cfg.translate_mode == "frac":
        return prm["tx"] * w * cfg.translate_frac_std, prm["ty"] * h * cfg.translate_frac_std
    return (jnp.round(prm["tx"] * w * cfg.translate_int_max),
            jnp.round(prm["ty"] * h * cfg.translate_int_max))


def augment_labels(prm: dict[str, Array], h: int, w: int, cfg: AugmentConfig) -> Array:
    """The 9-d augment labels ``[n, 9]`` of EDM (order in the module docstring)."""
    tx, ty = _translation_pixels(prm, h, w, cfg)
    if cfg.translate_mode == "frac":
        lx, ly = prm["tx"], prm["ty"]
    else:
        lx, ly = tx / (w * cfg.translate_int_max), ty / (h * cfg.translate_int_max)
    th, a, r = prm["rotate"], prm["aniso"], prm["aniso_r"]
    return jnp.stack([prm["xflip"].astype(jnp.float32), prm["yflip"].astype(jnp.float32),
                      prm["scale"], jnp.cos(th) - 1.0, jnp.sin(th), a * jnp.cos(r),
                      a * jnp.sin(r), lx, ly], axis=1).astype(jnp.float32)


def _rot(t: Array) -> Array:
    c, s = jnp.cos(t), jnp.sin(t)
    z, o = jnp.zeros_like(t), jnp.ones_like(t)
    return jnp.stack([jnp.stack([c, -s, z], -1), jnp.stack([s, c, z], -1),
                      jnp.stack([z, z, o], -1)], -2)


def _diag(sx: Array, sy: Array) -> Array:
    z, o = jnp.zeros_like(sx), jnp.ones_like(sx)
    return jnp.stack([jnp.stack([sx, z, z], -1), jnp.stack([z, sy, z], -1),
                      jnp.stack([z, z, o], -1)], -2)


def _shift(tx: Array, ty: Array) -> Array:
    z, o = jnp.zeros_like(tx), jnp.ones_like(tx)
    return jnp.stack([jnp.stack([o, z, tx], -1), jnp.stack([z, o, ty], -1),
                      jnp.stack([z, z, o], -1)], -2)


def inverse_matrix(prm: dict[str, Array], h: int, w: int, cfg: AugmentConfig) -> Array:
    """EDM's ``G⁻¹`` ``[n, 3, 3]``: output pixel ``p`` (centred pixel units, x right, y down)
    samples the input at ``G⁻¹·p`` (the integer translation is applied separately)."""
    s = jnp.exp2(prm["scale"] * cfg.scale_std)
    a = jnp.exp2(prm["aniso"] * cfg.aniso_std)
    r = prm["aniso_r"]
    g = _diag(1.0 / s, 1.0 / s) @ _rot(prm["rotate"])
    g = g @ _rot(-r) @ _diag(1.0 / a, a) @ _rot(r)
    if cfg.translate_mode == "frac":
        tx, ty = _translation_pixels(prm, h, w, cfg)
        g = g @ _shift(-tx, -ty)
    return g


def _mirror(i: Array, n: int) -> Array:
    """Reflect integer indices into ``[0, n)`` without repeating the edge (torch 'reflect')."""
    if n == 1:
        return jnp.zeros_like(i)
    return n - 1 - jnp.abs(n - 1 - jnp.mod(i, 2 * n - 2))


def apply(images: Array, prm: dict[str, Array], cfg: AugmentConfig) -> Array:
    """The augmented ``images`` (float NHWC) for parameters ``prm``."""
    n, h, w, _ = images.shape
    x = images
    x = jnp.where(prm["xflip"][:, None, None, None] == 1, x[:, :, ::-1], x)
    x = jnp.where(prm["yflip"][:, None, None, None] == 1, x[:, ::-1], x)
    cols = jnp.arange(w, dtype=jnp.float32)
    rows = jnp.arange(h, dtype=jnp.float32)
    if cfg.translate_mode == "int":
        tx, ty = _translation_pixels(prm, h, w, cfg)
        src_c = _mirror(cols[None].astype(jnp.int32) - tx[:, None].astype(jnp.int32), w)
        src_r = _mirror(rows[None].astype(jnp.int32) + ty[:, None].astype(jnp.int32), h)
        x = jax.vmap(lambda im, r_, c_: im[r_][:, c_])(x, src_r, src_c)
    g = inverse_matrix(prm, h, w, cfg)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    px, py = jnp.meshgrid(cols - cx, rows - cy)  # [h, w]
    pts = jnp.stack([px, py, jnp.ones_like(px)], 0).reshape(3, -1)  # [3, h·w]
    q = g @ pts  # [n, 3, h·w]
    qx, qy = q[:, 0] + cx, q[:, 1] + cy

    def sample(im: Array, sx: Array, sy: Array) -> Array:  # bilinear, mirror padding
        x0, y0 = jnp.floor(sx), jnp.floor(sy)
        fx, fy = (sx - x0)[:, None], (sy - y0)[:, None]
        x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
        c0, c1 = _mirror(x0, w), _mirror(x0 + 1, w)
        r0, r1 = _mirror(y0, h), _mirror(y0 + 1, h)
        top = im[r0, c0] * (1 - fx) + im[r0, c1] * fx
        bot = im[r1, c0] * (1 - fx) + im[r1, c1] * fx
        return (top * (1 - fy) + bot * fy).reshape(h, w, -1)

    return jax.vmap(sample)(x.astype(jnp.float32), qx, qy).astype(images.dtype)


def augment(key: Array, images: Array, cfg: AugmentConfig) -> tuple[Array, Array]:
    """``(augmented images, augment labels [n, 9])`` of float NHWC ``images``."""
    n, h, w, _ = images.shape
    prm = sample_params(key, n, cfg)
    return apply(images, prm, cfg), augment_labels(prm, h, w, cfg)
