"""DiffuseMix hybrids, half-area masks, per-pair mask policies and fractal blending.

DiffuseMix (Islam et al., CVPR 2024, §3) builds a training image in two steps:

1. **Concatenation**: a hybrid of an original image ``I`` and its generated edit ``Î``::

       H = M ⊙ I + (1 − M) ⊙ Î

   with ``M`` a mask that is 1 where the original is kept and 0 where the generated image
   shows. DiffuseMix concatenates halves (original top / generated bottom, or original left /
   generated right, chosen per image) with a linear ramp at the seam (its 20-point linspace at
   256², a ramp of 19 px: :data:`DIFFUSEMIX_RAMP_256`; 2.375 px at 32²); seed 000 (§4.5) adds
   random axis-aligned rectangles of half the image area (``mask='random'``: one rectangle, as
   the paper describes; ``mask='patches'``: the paper's code, gdl_term's ``make_mask``, 1–5
   non-overlapping rectangles covering about half the image, :func:`random_patches`).
   ``mask='original'`` (M = 1) keeps
   the original whole: seed 000 Table 1's *Fractal* rows blend fractals into the original
   image with no generated content.

2. **Fractal blending**::

       C = (1 − λ) H + λ F

   with ``F`` one fractal drawn uniformly from the bank per image and ``λ = 0.2`` (DiffuseMix:
   every image it emits is ``0.8 H + 0.2 F``) or ``λ ~ U[α, β]`` (seed 000 eq. 4). With label
   scaling ("Lsf", seed 000 Table 1) the true class's target becomes ``1 − λ``; the
   per-example ``weight`` field of a batch carries it. The loss family is the config's
   ``loss.kind`` and is the same for every row of a table: label scaling only changes targets.

The fractal bank is procedural (IFS fractals of :mod:`augdiff.data.fractal`, made from a key);
it is neither FractalDB nor DiffuseMix's fractal set. :func:`load_fractal_folder` reads an
image folder of fractals instead, as DiffuseMix does (``diffusemix.fractal_path``).

Mask policy (seed 000 §4.6): ``offline`` draws a pair's mask from ``fold_in(key, pair_id)``, so
it is fixed forever (DiffuseMix writes hybrids once); ``online`` draws it from
``fold_in(fold_in(key, epoch), pair_id)``, so it is redrawn every time the pair is seen. Every
random choice of a pair (mask, orientation, λ, fractal) comes from that one pair key, so an
offline run written to the store and the same transform applied on device agree bit for bit.

Everything here is a pure function of explicit keys over NHWC float batches (any value range,
as long as originals, generated images and fractals share it), jitted, and usable both
offline (applied once, written to :class:`augdiff.data.store.StoreWriter`) and online (inside
the classifier's input pipeline on device).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from augdiff.data.fractal import fractal_images
from augdiff.data.pixels import range_to_uint8 as to_uint8
from augdiff.data.pixels import uint8_to_range as to_float
from augdiff.distributed import pad_to_multiple, unpad

Orientation = Literal["vertical", "horizontal", "random"]
MaskKind = Literal["concat", "random", "patches", "original"]
MaskPolicy = Literal["offline", "online"]

ORIENTATIONS = ("vertical", "horizontal", "random")
MASK_KINDS = ("concat", "random", "patches", "original")

# DiffuseMix's seam: ``np.linspace(0, 1, 20)`` across rows (or columns) 118..137 of a 256² image,
# i.e. a linear ramp of slope 1/19 per pixel centred on the seam — ramp r = 19 px at 256²,
# 19 · 32 / 256 = 2.375 px at CIFAR's 32² (``seam_profile(256, 19.0)`` is that mask exactly).
DIFFUSEMIX_RAMP_256 = 19.0
DIFFUSEMIX_RAMP_32 = DIFFUSEMIX_RAMP_256 * 32 / 256
MASK_POLICIES = ("offline", "online")

# Stream ids folded into a pair key, one per independent random choice of the pair.
_STREAM_MASK, _STREAM_ORIENTATION, _STREAM_LAMBDA, _STREAM_FRACTAL = 0, 1, 2, 3


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _check_images(name: str, x: jax.Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} must be an NHWC batch [B, H, W, C], got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------
# Per-pair keys: the offline / online mask policy
# --------------------------------------------------------------------------------------------


def pair_keys(
    key: jax.Array,
    pair_ids: jax.Array,
    *,
    policy: MaskPolicy = "offline",
    epoch: int | jax.Array | None = None,
) -> jax.Array:
    """One key per (original, generated) pair, following the mask policy (seed 000 §4.6).

    ``offline``: ``k_p = fold_in(key, p)`` — the same for every epoch (DiffuseMix).
    ``online``:  ``k_p = fold_in(fold_in(key, epoch), p)`` — redrawn each epoch.

    ``pair_ids`` is an integer vector [B] (e.g. the ``index`` field of synthetic records);
    ``epoch`` must be given for ``online`` and is ignored for ``offline``.
    """
    _check_choice("policy", policy, MASK_POLICIES)
    pair_ids = jnp.asarray(pair_ids)
    if pair_ids.ndim != 1 or not jnp.issubdtype(pair_ids.dtype, jnp.integer):
        raise ValueError(
            f"pair_ids must be an integer vector [B], got shape {tuple(pair_ids.shape)} "
            f"dtype {pair_ids.dtype}"
        )
    if policy == "online":
        if epoch is None:
            raise ValueError("policy='online' needs the epoch (masks are redrawn per epoch)")
        key = jax.random.fold_in(key, jnp.asarray(epoch, jnp.uint32))
    return jax.vmap(lambda p: jax.random.fold_in(key, p.astype(jnp.uint32)))(pair_ids)


def _stream(keys: jax.Array, stream: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, stream))(keys)


# --------------------------------------------------------------------------------------------
# Masks (1 = keep the original, 0 = take the generated image)
# --------------------------------------------------------------------------------------------


def seam_profile(length: int, ramp: float) -> jax.Array:
    """1-D concatenation profile along an axis of ``length`` pixels: 1 before the seam, 0 after.

    With the seam at ``s = length / 2`` and pixel centres ``u_i = i + 1/2``::

        m_i = clip(1/2 − (u_i − s) / r, 0, 1)              (r = ramp > 0)
        m_i = 1/2 − sign(u_i − s) / 2                      (r = 0: a hard cut)

    i.e. DiffuseMix's linear ramp over ``r`` pixels centred on the seam. The profile is
    antisymmetric about the seam (``m_i + m_{L−1−i} = 1``), so the generated image contributes
    exactly half of the pixel mass, and ``(L − r) / 2`` pixels are exactly 1 on each side when
    ``r`` is an even integer.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if ramp < 0:
        raise ValueError(f"ramp must be >= 0 pixels, got {ramp}")
    u = jnp.arange(length, dtype=jnp.float32) + 0.5
    d = u - length / 2.0
    if ramp == 0:
        return 0.5 - 0.5 * jnp.sign(d)
    return jnp.clip(0.5 - d / ramp, 0.0, 1.0)


def concat_mask(
    height: int,
    width: int,
    *,
    orientation: Literal["vertical", "horizontal"],
    ramp: float = DIFFUSEMIX_RAMP_32,
) -> jax.Array:
    """Deterministic concatenation mask [H, W] of DiffuseMix (original first).

    ``vertical``: original on the top half, generated on the bottom (DiffuseMix's vertical
    stacking, a horizontal seam). ``horizontal``: original left, generated right. The seam
    carries the linear ramp of :func:`seam_profile` (DiffuseMix's ``linspace(0, 1, 20)`` at 256²
    is a 19 px ramp; scaled to CIFAR's 32² it is 2.375 px, the default).
    """
    _check_choice("orientation", orientation, ("vertical", "horizontal"))
    if orientation == "vertical":
        return jnp.broadcast_to(seam_profile(height, ramp)[:, None], (height, width))
    return jnp.broadcast_to(seam_profile(width, ramp)[None, :], (height, width))


def half_rectangle(key: jax.Array, height: int, width: int) -> tuple[jax.Array, ...]:
    """A random axis-aligned rectangle of half the image area, placed uniformly (seed 000 §4.5).

    With probability 1/2 the height is drawn uniformly from ``{⌈H/2⌉, …, H}`` and the width set
    to ``round(HW / 2h)``; otherwise the roles of height and width swap. The rectangle then has
    area ``HW/2`` exactly when ``h`` divides ``HW/2`` and is otherwise off by at most half a
    column (``|hw − HW/2| ≤ h/2``), and it always fits (``w ≤ W``). Its top-left corner is
    uniform over every position where it fits. Returns ``(y0, x0, h, w)`` as int32 scalars.
    """
    k_axis, k_side, k_y, k_x = jax.random.split(key, 4)
    area = height * width / 2.0

    def side_pair(a: int, b: int, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        s = jax.random.randint(k, (), (a + 1) // 2, a + 1)
        t = jnp.clip(jnp.round(area / s), 1, b).astype(jnp.int32)
        return s.astype(jnp.int32), t

    h1, w1 = side_pair(height, width, k_side)
    w2, h2 = side_pair(width, height, k_side)
    along_h = jax.random.bernoulli(k_axis)
    h = jnp.where(along_h, h1, h2)
    w = jnp.where(along_h, w1, w2)
    y0 = jax.random.randint(k_y, (), 0, height - h + 1)
    x0 = jax.random.randint(k_x, (), 0, width - w + 1)
    return y0, x0, h, w


def rectangle_mask(
    y0: jax.Array, x0: jax.Array, h: jax.Array, w: jax.Array, height: int, width: int
) -> jax.Array:
    """Indicator [H, W] of the rectangle ``[y0, y0+h) × [x0, x0+w)`` (1 inside, float32)."""
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= y0) & (rows < y0 + h) & (cols >= x0) & (cols < x0 + w)
    return inside.astype(jnp.float32)


def random_half_mask(key: jax.Array, height: int, width: int) -> jax.Array:
    """Random half-area rectangle mask [H, W]: the original inside the rectangle, 1 there."""
    return rectangle_mask(*half_rectangle(key, height, width), height, width)


PATCH_RATIO, MAX_PATCHES, PATCH_ATTEMPTS = 0.5, 5, 50


def random_patches(key: jax.Array, height: int, width: int,
                   ratio: float = PATCH_RATIO) -> tuple[jax.Array, jax.Array]:
    """gdl_term's random mask (``fractal_aug.Utils.make_mask``, the code of seed 000): several
    non-overlapping rectangles of the generated image covering about ``ratio`` of it.

    With ``A = HW`` and target ``T = ⌊ratio · A⌋``: the number of rectangles is
    ``K ~ U{1, …, max(5, ⌊5 ratio⌋)}``; their areas are ``round(T · d)`` with
    ``d ~ Dirichlet(1_K)`` (the last one absorbing the rounding), each clipped to
    ``[max(1, ⌊0.05 A⌋), ⌊T / 2⌋]``. Each rectangle tries up to 50 times: aspect
    ``a ~ U[0.5, 2)``, ``h = ⌊√(area / a)⌋``, ``w = ⌊a · h⌋`` (both clipped to ``[1, side]``),
    top-left corner uniform where it fits; the first try that overlaps no placed rectangle is
    kept, and a rectangle with no such try is dropped. Returns ``(mask [H, W], placed)``: the
    mask is 1 where the ORIGINAL is kept (augdiff's convention; gdl_term's mask marks the
    generated pixels, its complement) and ``placed`` the number of rectangles placed (int32).
    """
    total = height * width
    target = int(total * ratio)
    lo, hi = max(1, int(0.05 * total)), int(0.5 * target)
    kmax = max(1, MAX_PATCHES, int(ratio * 5))
    k_count, k_weights, k_place = jax.random.split(key, 3)
    count = jax.random.randint(k_count, (), 1, kmax + 1)
    slot = jnp.arange(kmax)
    active = slot < count
    g = jnp.where(active, jax.random.exponential(k_weights, (kmax,)), 0.0)  # Dirichlet(1_K)
    areas = jnp.round(g / g.sum() * target).astype(jnp.int32)
    areas = areas.at[count - 1].add(target - areas.sum())
    generated = jnp.zeros((height, width), jnp.float32)
    placed = jnp.zeros((), jnp.int32)
    for i in range(kmax):
        k_a, k_y, k_x = jax.random.split(jax.random.fold_in(k_place, i), 3)
        area = jnp.clip(areas[i], lo, hi).astype(jnp.float32)
        aspect = jax.random.uniform(k_a, (PATCH_ATTEMPTS,), minval=0.5, maxval=2.0)
        h0 = jnp.floor(jnp.sqrt(area / aspect))
        w = jnp.clip(jnp.floor(aspect * h0), 1, width).astype(jnp.int32)
        h = jnp.clip(h0, 1, height).astype(jnp.int32)
        y0 = jnp.floor(jax.random.uniform(k_y, (PATCH_ATTEMPTS,)) * (height - h + 1))
        x0 = jnp.floor(jax.random.uniform(k_x, (PATCH_ATTEMPTS,)) * (width - w + 1))
        rects = jax.vmap(lambda y, x, hh, ww: rectangle_mask(y, x, hh, ww, height, width))(
            y0.astype(jnp.int32), x0.astype(jnp.int32), h, w)
        free = ~jnp.any((rects * generated) > 0, axis=(1, 2))
        ok = active[i] & (areas[i] > 0) & jnp.any(free)
        generated = jnp.where(ok, jnp.maximum(generated, rects[jnp.argmax(free)]), generated)
        placed = placed + ok.astype(jnp.int32)
    return 1.0 - generated, placed


@functools.partial(jax.jit, static_argnames=("height", "width", "kind", "orientation", "ramp"))
def hybrid_masks(
    keys: jax.Array,
    height: int,
    width: int,
    *,
    kind: MaskKind = "concat",
    orientation: Orientation = "random",
    ramp: float = DIFFUSEMIX_RAMP_32,
) -> jax.Array:
    """Masks [B, H, W, 1] for a batch of pairs, one per pair key (see :func:`pair_keys`).

    ``kind='concat'``: DiffuseMix's half concatenation; with ``orientation='random'`` each pair
    picks vertical or horizontal with probability 1/2 (as DiffuseMix does per image).
    ``kind='random'``: a random half-area rectangle (seed 000 §4.5); ``kind='patches'``:
    gdl_term's 1–5 rectangles (:func:`random_patches`); ``orientation``/``ramp`` are unused.
    ``kind='original'``: all ones (the original only; Table 1's Fractal rows).
    """
    _check_choice("kind", kind, MASK_KINDS)
    _check_choice("orientation", orientation, ORIENTATIONS)
    if kind == "original":
        masks = jnp.ones((keys.shape[0], height, width), jnp.float32)
    elif kind == "random":
        masks = jax.vmap(lambda k: random_half_mask(k, height, width))(_stream(keys, _STREAM_MASK))
    elif kind == "patches":
        masks = jax.vmap(lambda k: random_patches(k, height, width)[0])(
            _stream(keys, _STREAM_MASK))
    elif orientation == "random":
        vert = concat_mask(height, width, orientation="vertical", ramp=ramp)
        horiz = concat_mask(height, width, orientation="horizontal", ramp=ramp)
        pick_vert = jax.vmap(jax.random.bernoulli)(_stream(keys, _STREAM_ORIENTATION))
        masks = jnp.where(pick_vert[:, None, None], vert, horiz)
    else:
        m = concat_mask(height, width, orientation=orientation, ramp=ramp)
        masks = jnp.broadcast_to(m, (keys.shape[0], height, width))
    return masks[..., None]


def compose(mask: jax.Array, original: jax.Array, generated: jax.Array) -> jax.Array:
    """The hybrid of DiffuseMix §3 / seed 000 §3.3: ``H = M ⊙ I_org + (1 − M) ⊙ I_gen``.

    ``mask`` broadcasts against the images ([B, H, W, 1] or [B, H, W, C]); 1 keeps the original.
    """
    if original.shape != generated.shape:
        raise ValueError(
            f"original {tuple(original.shape)} and generated {tuple(generated.shape)} images "
            "must have the same shape"
        )
    return mask * original + (1.0 - mask) * generated


# --------------------------------------------------------------------------------------------
# Fractal blending and label scaling
# --------------------------------------------------------------------------------------------


def draw_lambda(keys: jax.Array, lam: float | tuple[float, float]) -> jax.Array:
    """Blending weights λ [B]: a constant (DiffuseMix: 0.2) or ``λ ~ U[α, β]`` per pair."""
    n = keys.shape[0]
    if isinstance(lam, tuple | list):
        alpha, beta = (float(v) for v in lam)
        if not 0.0 <= alpha <= beta <= 1.0:
            raise ValueError(f"fractal λ interval must satisfy 0 <= α <= β <= 1, got {lam}")
        ks = _stream(keys, _STREAM_LAMBDA)
        return jax.vmap(lambda k: jax.random.uniform(k, (), minval=alpha, maxval=beta))(ks)
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"fractal λ must lie in [0, 1], got {lam}")
    return jnp.full((n,), float(lam), jnp.float32)


def fractal_blend(x: jax.Array, fractals: jax.Array, lam: jax.Array) -> jax.Array:
    """DiffuseMix's fractal blending: ``C = (1 − λ) H + λ F``, one λ per example ([B] or scalar)."""
    if x.shape != fractals.shape:
        raise ValueError(
            f"fractals {tuple(fractals.shape)} must match the images {tuple(x.shape)} "
            "(resize the fractal bank to the image size first)"
        )
    lam = jnp.asarray(lam, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return (1.0 - lam) * x + lam * fractals


def label_weights(lam: jax.Array, label_scaling: bool) -> jax.Array:
    """Per-example target weight: ``1 − λ`` with label scaling (seed 000 "Lsf"), else 1.

    The trainer multiplies the one-hot target of the true class by this weight and trains
    with BCE when scaling is on.
    """
    lam = jnp.asarray(lam, jnp.float32)
    return 1.0 - lam if label_scaling else jnp.ones_like(lam)


def pick_fractals(keys: jax.Array, bank: jax.Array, height: int, width: int) -> jax.Array:
    """One fractal per pair, drawn uniformly from ``bank`` [K, h, w, C], resized to H×W."""
    _check_images("fractal bank", bank)
    idx = jax.vmap(lambda k: jax.random.randint(k, (), 0, bank.shape[0]))(
        _stream(keys, _STREAM_FRACTAL)
    )
    f = bank[idx]
    if f.shape[1:3] != (height, width):
        f = jax.image.resize(f, (f.shape[0], height, width, f.shape[3]), method="bilinear")
    return f


def pair_fractals(
    key: jax.Array,
    pair_ids: jax.Array,
    bank: jax.Array,
    height: int,
    width: int,
    *,
    policy: MaskPolicy = "offline",
    epoch: int | jax.Array | None = 0,
) -> jax.Array:
    """The fractal each pair is blended with in :func:`diffusemix` (the one home of that draw):
    :func:`pick_fractals` from the pair's key (:func:`pair_keys` of the hybrid ``key``,
    ``pair_ids``, ``policy`` and ``epoch``). [B, H, W, C] in the bank's value range."""
    keys = pair_keys(key, pair_ids, policy=policy, epoch=epoch)
    return pick_fractals(keys, bank, height, width)


def fractal_bank(
    key: jax.Array, n: int, size: int, value_range: tuple[float, float] = (-1.0, 1.0)
) -> jax.Array:
    """``n`` fractal images [n, size, size, 3] from :mod:`augdiff.data.fractal` in ``value_range``.

    DiffuseMix draws the fractal of each sample from a fixed fractal dataset; a bank generated
    once from a key plays that role.
    """
    lo, hi = value_range
    return lo + (hi - lo) * fractal_images(key, n, size)


def load_fractal_folder(
    path: str, size: int, value_range: tuple[float, float] = (-1.0, 1.0)
) -> jax.Array:
    """A fractal bank [K, size, size, 3] from an image folder (``.png/.jpg/.jpeg``, sorted by
    name), as DiffuseMix loads its fractal set: RGB, resized to ``size``² (bilinear)."""
    import os

    from PIL import Image

    if not os.path.isdir(path):
        raise FileNotFoundError(f"fractal folder {path!r} does not exist")
    names = sorted(f for f in os.listdir(path) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    if not names:
        raise ValueError(f"fractal folder {path!r} holds no .png/.jpg/.jpeg images")
    images = []
    for name in names:
        try:
            with Image.open(os.path.join(path, name)) as im:
                im = im.convert("RGB").resize((size, size), Image.BILINEAR)
                images.append(np.asarray(im, np.uint8))
        except OSError as e:
            where = os.path.join(path, name)
            raise ValueError(f"fractal image {where!r} is unreadable: {e}") from e
    return to_float(np.stack(images), value_range)


# --------------------------------------------------------------------------------------------
# The whole DiffuseMix transform
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DiffuseMixSpec:
    """Static description of a DiffuseMix variant (seed 000 Tables 1-2).

    mask: ``concat`` (DiffuseMix halves), ``random`` (half-area rectangles, §4.5),
    ``patches`` (gdl_term's 1–5 rectangles, :func:`random_patches`) or ``original`` (no
    generated content: Table 1's Fractal rows).
    orientation: for ``concat``: ``vertical``, ``horizontal`` or ``random`` per pair.
    ramp: width in pixels of the linear ramp at the concatenation seam (0 = hard cut).
    policy: ``offline`` (mask fixed per pair) or ``online`` (redrawn per epoch), §4.6.
    fractal: apply fractal blending ``C = (1 − λ)H + λF``.
    lam: fixed λ (DiffuseMix 0.2) or an interval ``(α, β)`` to draw λ ~ U[α, β] from.
    label_scaling: target weight ``1 − λ`` for the true class (train with BCE).
    """

    mask: MaskKind = "concat"
    orientation: Orientation = "random"
    ramp: float = DIFFUSEMIX_RAMP_32
    policy: MaskPolicy = "offline"
    fractal: bool = True
    lam: float | tuple[float, float] = 0.2
    label_scaling: bool = False

    def __post_init__(self) -> None:
        _check_choice("mask", self.mask, MASK_KINDS)
        _check_choice("orientation", self.orientation, ORIENTATIONS)
        _check_choice("policy", self.policy, MASK_POLICIES)
        if self.ramp < 0:
            raise ValueError(f"ramp must be >= 0 pixels, got {self.ramp}")
        if isinstance(self.lam, list):
            object.__setattr__(self, "lam", tuple(self.lam))
        if isinstance(self.lam, tuple):
            if len(self.lam) != 2 or not 0.0 <= self.lam[0] <= self.lam[1] <= 1.0:
                raise ValueError(f"lam interval must be (α, β) with 0 <= α <= β <= 1: {self.lam}")
        elif not 0.0 <= float(self.lam) <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {self.lam}")
        if self.label_scaling and not self.fractal:
            raise ValueError("label_scaling needs fractal blending (the weight is 1 − λ)")


def spec_from_config(cfg: Any) -> DiffuseMixSpec:
    """A :class:`DiffuseMixSpec` from a ConfigDict / mapping with the same field names.

    ``lam`` may be a float, or ``lam_min``/``lam_max`` may be given for an interval.
    """
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    fields = {f.name for f in dataclasses.fields(DiffuseMixSpec)}
    keys = set(cfg.keys()) if hasattr(cfg, "keys") else fields
    unknown = keys - fields - {"lam_min", "lam_max"}
    if unknown:
        raise ValueError(
            f"unknown DiffuseMix hybrid fields {sorted(unknown)}; known: {sorted(fields)}"
        )
    kw = {f: get(f) for f in fields if get(f, None) is not None}
    if get("lam_min", None) is not None or get("lam_max", None) is not None:
        if get("lam_min", None) is None or get("lam_max", None) is None:
            raise ValueError("give both lam_min and lam_max for a λ interval")
        kw["lam"] = (float(get("lam_min")), float(get("lam_max")))
    return DiffuseMixSpec(**kw)


@functools.partial(jax.jit, static_argnames=("spec",))
def diffusemix(
    key: jax.Array,
    original: jax.Array,
    generated: jax.Array,
    pair_ids: jax.Array,
    fractals: jax.Array | None = None,
    *,
    spec: DiffuseMixSpec = DiffuseMixSpec(),
    epoch: int | jax.Array = 0,
) -> tuple[jax.Array, jax.Array]:
    """DiffuseMix on a batch of pairs: hybrid ``H = M ⊙ I + (1 − M) ⊙ Î``, then fractal
    blending ``C = (1 − λ) H + λ F`` (see the module docstring).

    Args:
      key: the run's base key for hybrids (the same key offline and online).
      original, generated: [B, H, W, C] float images in one value range.
      pair_ids: [B] integer id of each pair (e.g. the synthetic record's ``index``).
      fractals: a fractal bank [K, h, w, C] in the images' value range (needed when
        ``spec.fractal``); each pair draws one uniformly.
      spec: the variant (static).
      epoch: the epoch, used by the ``online`` policy only.

    Returns:
      ``(images, weights)``: [B, H, W, C] augmented images and [B] float32 label weights
      (``1 − λ`` with label scaling, else 1).
    """
    _check_images("original", original)
    _check_images("generated", generated)
    b, h, w, _ = original.shape
    if pair_ids.shape != (b,):
        raise ValueError(f"pair_ids must have shape [{b}], got {tuple(pair_ids.shape)}")
    keys = pair_keys(key, pair_ids, policy=spec.policy, epoch=epoch)
    masks = hybrid_masks(
        keys, h, w, kind=spec.mask, orientation=spec.orientation, ramp=float(spec.ramp)
    )
    x = compose(masks.astype(original.dtype), original, generated)
    if not spec.fractal:
        return x, jnp.ones((b,), jnp.float32)
    if fractals is None:
        raise ValueError("spec.fractal is on: pass a fractal bank [K, h, w, C] as `fractals`")
    if fractals.shape[-1] != original.shape[-1]:
        raise ValueError(
            f"fractal bank has {fractals.shape[-1]} channels, images have {original.shape[-1]}"
        )
    lam = draw_lambda(keys, spec.lam)
    f = pair_fractals(key, pair_ids, fractals, h, w, policy=spec.policy, epoch=epoch)
    x = fractal_blend(x, f.astype(x.dtype), lam)
    return x, label_weights(lam, spec.label_scaling)


def write_hybrids(
    writer: Any,
    original: np.ndarray,
    generated: np.ndarray,
    labels: np.ndarray,
    pair_ids: np.ndarray,
    *,
    key: jax.Array,
    spec: DiffuseMixSpec,
    fractals: jax.Array | None = None,
    batch_size: int = 256,
    source: int = 1,
    provenance: Sequence[Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> int:
    """Apply :func:`diffusemix` offline and write the results through a ``StoreWriter``.

    ``original`` / ``generated`` are uint8 [N, H, W, C] pairs, ``pair_ids`` their stable ids
    (the store key is ``hybrid-<pair_id>``; pairs already in ``writer.completed_keys`` are
    skipped, so a resumed run writes the same bytes). Images are mapped to [-1, 1], blended,
    and quantised back with :func:`to_uint8`. Each record's provenance carries the pair id,
    the variant, λ and the label ``weight`` (``1 − λ`` with label scaling), which
    :class:`augdiff.data.store.SyntheticStore` returns as the record's ``weight``. ``fractals``
    is a bank in [-1, 1]. Returns the number of examples added.
    """
    from tqdm.auto import tqdm

    if spec.policy != "offline":
        raise ValueError("write_hybrids stores fixed hybrids: use a spec with policy='offline'")
    n = len(original)
    for name, arr in (("generated", generated), ("labels", labels), ("pair_ids", pair_ids)):
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows, original has {n}")
    if original.dtype != np.uint8 or generated.dtype != np.uint8:
        raise ValueError(
            f"original/generated must be uint8 images, got {original.dtype}/{generated.dtype}"
        )
    if provenance is not None and len(provenance) != n:
        raise ValueError(f"provenance has {len(provenance)} entries for {n} pairs")
    pair_ids = np.asarray(pair_ids, np.int64)
    if len(np.unique(pair_ids)) != n:
        raise ValueError("pair_ids must be unique (they key the store and the randomness)")
    todo = [i for i in range(n) if f"hybrid-{pair_ids[i]}" not in writer.completed_keys]
    added = 0
    variant = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    for start in tqdm(range(0, len(todo), batch_size), desc="hybrids", disable=not progress):
        rows = np.asarray(todo[start : start + batch_size])
        batch, m = pad_to_multiple(
            (original[rows], generated[rows], pair_ids[rows].astype(np.int32)), batch_size
        )
        o, g, ids = batch
        x, w = diffusemix(key, to_float(o), to_float(g), jnp.asarray(ids), fractals, spec=spec)
        lam = draw_lambda(pair_keys(key, jnp.asarray(ids)), spec.lam) if spec.fractal else None
        images = to_uint8(unpad(x, m))
        weights = np.asarray(unpad(w, m))
        lams = None if lam is None else np.asarray(unpad(lam, m))
        for j, i in enumerate(rows):
            prov = dict(provenance[i]) if provenance is not None else {}
            prov.update(
                pair_id=int(pair_ids[i]),
                hybrid=variant,
                weight=float(weights[j]),
                **({"lam": float(lams[j])} if lams is not None else {}),
            )
            added += writer.add(f"hybrid-{pair_ids[i]}", images[j], int(labels[i]), source, prov)
    return added
