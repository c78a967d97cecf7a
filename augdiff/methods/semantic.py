"""CLIP-guided semantic hybrid blending (SHB, seed 000 §3.3).

Instead of cutting the pair along a fixed seam, SHB asks CLIP which patches of the generated
image still look like the class and takes exactly those from the generated image:

1. ``S_ij = cos(z_ij, t_y)``: cosine similarity of the generated image's patch token ``z_ij``
   (projected to CLIP's joint image-text space) with the class-name text embedding ``t_y``,
   over the ``√P × √P`` patch grid.
2. ``τ = P50(S)``: the 50th percentile of ``S`` for that image.
3. ``M = 1[S ≤ τ]``: 1 (keep the ORIGINAL) where the generated patch does not match the class
   text; patches with ``S > τ`` come from the generated image.
4. ``M`` is brought to image size (nearest neighbour) and Gaussian-smoothed with kernel size
   ``k = 5`` and ``σ = k / 3``.
5. ``I = M ⊙ I_org + (1 − M) ⊙ I_gen`` (:func:`augdiff.methods.hybrids.compose`).

Ties: ``1[S ≤ τ]`` sends every patch tied at ``τ`` to the original, so with ties it can keep
more than half. :func:`median_patch_mask` instead keeps the ``⌈P/2⌉`` lowest-ranked patches
(ties broken by patch index, lower index first), which equals ``1[S ≤ τ]`` whenever ``S`` has
no ties at the median and replaces exactly ``⌊P/2⌋`` patches (50 % for even ``P``) always.

The patch features come from an injectable ``feature_fn(images) -> [B, P, D]`` so SHB runs
and is tested without real CLIP; :func:`clip_patch_feature_fn` builds one from a transformers
``FlaxCLIPModel`` (patch tokens of ``last_hidden_state`` → ``post_layernorm`` →
``visual_projection``, the same path ``get_image_features`` takes for the CLS token).
SHB draws no random numbers: the mask of a pair is the same offline and online.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from augdiff.methods.hybrids import compose

FeatureFn = Callable[[jax.Array], jax.Array]

# CLIP's image normalisation (OpenAI CLIP preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _grid_side(num_patches: int) -> int:
    g = math.isqrt(num_patches)
    if g * g != num_patches:
        raise ValueError(
            f"patch tokens must form a square grid, got P={num_patches} (not a perfect square); "
            "drop the CLS token before calling"
        )
    return g


def class_text(
    text_emb: jax.Array, labels: jax.Array | None = None
) -> jax.Array:
    """The text embedding of each example's class: [B, D] as given, or ``T[labels]`` for a
    class-text matrix ``T`` [C, D] and integer ``labels`` [B]."""
    text_emb = jnp.asarray(text_emb)
    if labels is None:
        if text_emb.ndim != 2:
            raise ValueError(f"text_emb must be [B, D], got shape {tuple(text_emb.shape)}")
        return text_emb
    labels = jnp.asarray(labels)
    if text_emb.ndim != 2 or labels.ndim != 1:
        raise ValueError(
            f"with labels, text_emb must be a class matrix [C, D] and labels [B]; got "
            f"{tuple(text_emb.shape)} and {tuple(labels.shape)}"
        )
    return text_emb[labels]


def cosine_map(patch_emb: jax.Array, text_emb: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``S_ij = ⟨z_ij, t⟩ / max(‖z_ij‖ ‖t‖, ε)``, the cosine similarity of every patch token with
    its image's class text, on the patch grid: [B, P, D] × [B, D] → [B, g, g]."""
    if patch_emb.ndim != 3 or text_emb.ndim != 2:
        raise ValueError(
            f"patch_emb must be [B, P, D] and text_emb [B, D]; got {tuple(patch_emb.shape)} "
            f"and {tuple(text_emb.shape)}"
        )
    b, p, d = patch_emb.shape
    if text_emb.shape != (b, d):
        raise ValueError(
            f"text_emb {tuple(text_emb.shape)} does not match patch_emb [B={b}, D={d}]"
        )
    g = _grid_side(p)
    dots = jnp.einsum("bpd,bd->bp", patch_emb, text_emb)
    norms = jnp.linalg.norm(patch_emb, axis=-1) * jnp.linalg.norm(text_emb, axis=-1)[:, None]
    return (dots / jnp.maximum(norms, eps)).reshape(b, g, g)


def median_patch_mask(s: jax.Array) -> jax.Array:
    """``M = 1[S ≤ τ]`` with ``τ`` the per-image 50th percentile, on [B, g, g] (float32).

    Implemented by rank so ties at ``τ`` are split deterministically: the ``⌈P/2⌉`` patches of
    lowest similarity (stable order, lower patch index first among equals) get ``M = 1``
    (original); the other ``⌊P/2⌋`` come from the generated image.
    """
    if s.ndim != 3:
        raise ValueError(f"similarity map must be [B, g, g], got shape {tuple(s.shape)}")
    b, gh, gw = s.shape
    flat = s.reshape(b, gh * gw)
    p = gh * gw
    order = jnp.argsort(flat, axis=-1, stable=True)  # patch indices by increasing S
    keep = (jnp.arange(p) < (p + 1) // 2).astype(jnp.float32)  # the ⌈P/2⌉ lowest ranks
    m = jnp.zeros_like(flat, jnp.float32).at[jnp.arange(b)[:, None], order].set(keep)
    return m.reshape(b, gh, gw)


def upsample_nearest(m: jax.Array, height: int, width: int) -> jax.Array:
    """Nearest-neighbour resize [B, g, g'] → [B, H, W]: pixel (y, x) takes cell
    ``(⌊y g / H⌋, ⌊x g' / W⌋)``; with ``g | H`` every cell becomes an ``H/g`` block."""
    _, gh, gw = m.shape
    rows = (jnp.arange(height) * gh) // height
    cols = (jnp.arange(width) * gw) // width
    return m[:, rows][:, :, cols]


def gaussian_kernel1d(kernel_size: int = 5, sigma: float | None = None) -> jax.Array:
    """Normalised 1-D Gaussian ``g(x) = exp(−x² / 2σ²) / Σ_x exp(−x² / 2σ²)``,
    ``x ∈ {−(k−1)/2, …, (k−1)/2}``, with ``σ = k / 3`` by default (seed 000 §3.3)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    sigma = kernel_size / 3.0 if sigma is None else float(sigma)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    x = jnp.arange(kernel_size, dtype=jnp.float32) - (kernel_size - 1) / 2.0
    g = jnp.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def gaussian_smooth(m: jax.Array, kernel_size: int = 5, sigma: float | None = None) -> jax.Array:
    """Separable Gaussian blur of [B, H, W] maps with reflect padding (torchvision's
    ``GaussianBlur`` convention): ``m ∗ (g gᵀ)`` = rows then columns with :func:`gaussian_kernel1d`.

    The kernel sums to 1, so a constant map is unchanged and values stay in [0, 1].
    """
    g = gaussian_kernel1d(kernel_size, sigma)
    r = kernel_size // 2
    if r == 0:
        return m
    if min(m.shape[1:]) <= r:
        raise ValueError(
            f"map of size {tuple(m.shape[1:])} too small for reflect padding of {r} pixels"
        )
    x = jnp.pad(m, ((0, 0), (r, r), (r, r)), mode="reflect")
    h, w = m.shape[1:]
    # Rows then columns: Σ_a g_a x[y + a, ·], then Σ_b g_b (·)[·, x + b].
    x = sum(g[a] * x[:, a : a + h, :] for a in range(kernel_size))
    x = sum(g[b] * x[:, :, b : b + w] for b in range(kernel_size))
    return x


@functools.partial(jax.jit, static_argnames=("height", "width", "kernel_size", "sigma"))
def semantic_mask(
    s: jax.Array, height: int, width: int, kernel_size: int = 5, sigma: float | None = None
) -> jax.Array:
    """The SHB mask [B, H, W, 1] from a similarity map [B, g, g]: median mask, nearest
    upsampling, Gaussian smoothing (k = 5, σ = k/3). 1 keeps the original."""
    m = upsample_nearest(median_patch_mask(s), height, width)
    return gaussian_smooth(m, kernel_size, sigma)[..., None]


@functools.partial(jax.jit, static_argnames=("kernel_size", "sigma"))
def semantic_hybrid(
    original: jax.Array,
    generated: jax.Array,
    patch_emb: jax.Array,
    text_emb: jax.Array,
    labels: jax.Array | None = None,
    *,
    kernel_size: int = 5,
    sigma: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """SHB (seed 000 §3.3) from precomputed patch embeddings of the generated images.

    Args:
      original, generated: [B, H, W, C] float images in one value range.
      patch_emb: [B, P, D] generated-image patch tokens in CLIP's joint space (no CLS token).
      text_emb: [B, D] class-text embeddings, or a class matrix [C, D] together with ``labels``.
      labels: [B] integer labels, when ``text_emb`` is a class matrix.

    Returns:
      ``(images, mask)``: ``I = M ⊙ I_org + (1 − M) ⊙ I_gen`` and the smoothed mask
      [B, H, W, 1].
    """
    if original.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {tuple(original.shape)}")
    s = cosine_map(patch_emb, class_text(text_emb, labels))
    mask = semantic_mask(s, original.shape[1], original.shape[2], kernel_size, sigma)
    return compose(mask.astype(original.dtype), original, generated), mask


def semantic_hybrid_fn(
    feature_fn: FeatureFn,
    original: jax.Array,
    generated: jax.Array,
    text_emb: jax.Array,
    labels: jax.Array | None = None,
    *,
    kernel_size: int = 5,
    sigma: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """SHB with an injected ``feature_fn(generated) -> [B, P, D]`` (real CLIP via
    :func:`clip_patch_feature_fn`, or a constructed feature map in tests)."""
    patch_emb = feature_fn(generated)
    return semantic_hybrid(
        original, generated, patch_emb, text_emb, labels, kernel_size=kernel_size, sigma=sigma
    )


# --------------------------------------------------------------------------------------------
# Real CLIP (transformers FlaxCLIPModel)
# --------------------------------------------------------------------------------------------


def clip_preprocess(
    images: jax.Array, image_size: int, value_range: tuple[float, float] = (-1.0, 1.0)
) -> jax.Array:
    """NHWC images in ``value_range`` → CLIP input: [0, 1], bicubic resize to ``image_size``,
    per-channel ``(x − mean) / std`` with CLIP's statistics. Stays NHWC (the Flax vision
    module's own layout)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"CLIP needs RGB NHWC images, got shape {tuple(images.shape)}")
    lo, hi = value_range
    x = (images.astype(jnp.float32) - lo) / (hi - lo)
    if x.shape[1:3] != (image_size, image_size):
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, 3), method="bicubic")
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def _clip_module_and_params(clip_model: Any, params: Any | None) -> tuple[Any, Any]:
    module = getattr(clip_model, "module", clip_model)
    if not (hasattr(module, "vision_model") or hasattr(module, "config")):
        raise TypeError(f"expected a transformers FlaxCLIPModel, got {type(clip_model).__name__}")
    params = clip_model.params if params is None else params
    return module, params


def clip_patch_embeddings(
    clip_model: Any,
    images: jax.Array,
    params: Any | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    include_cls: bool = False,
) -> jax.Array:
    """CLIP patch tokens in the joint space: ``visual_projection(post_layernorm(h))`` [B, P, D].

    ``h`` is the vision tower's ``last_hidden_state`` without the CLS token (with it first when
    ``include_cls``; its row then equals ``get_image_features``). ``clip_model`` is a
    transformers ``FlaxCLIPModel`` (anything exposing ``module.vision_model`` and
    ``module.visual_projection``).
    """
    module, params = _clip_module_and_params(clip_model, params)
    pixels = clip_preprocess(images, module.config.vision_config.image_size, value_range)

    def _patches(mod: Any, x: jax.Array) -> jax.Array:
        hidden = mod.vision_model(pixel_values=x, deterministic=True)[0]
        tokens = hidden if include_cls else hidden[:, 1:]
        return mod.visual_projection(mod.vision_model.post_layernorm(tokens))

    return module.apply({"params": params}, pixels, method=_patches)


def clip_patch_feature_fn(
    clip_model: Any, params: Any | None = None, value_range: tuple[float, float] = (-1.0, 1.0)
) -> FeatureFn:
    """A jitted ``feature_fn(images) -> [B, P, D]`` for :func:`semantic_hybrid_fn` from CLIP."""
    module, params = _clip_module_and_params(clip_model, params)

    @jax.jit
    def fn(images: jax.Array, p: Any) -> jax.Array:
        return clip_patch_embeddings(clip_model, images, p, value_range)

    return lambda images: fn(images, params)


def clip_image_embeddings(
    clip_model: Any,
    images: jax.Array,
    params: Any | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> jax.Array:
    """CLIP image embeddings [B, D] (projected CLS token, as ``get_image_features``)."""
    return clip_patch_embeddings(clip_model, images, params, value_range, include_cls=True)[:, 0]


def clip_text_embeddings(
    clip_model: Any,
    input_ids: jax.Array | np.ndarray,
    attention_mask: jax.Array | np.ndarray | None = None,
    params: Any | None = None,
) -> jax.Array:
    """Projected CLIP text embeddings [C, D] of tokenised class prompts (e.g. the class names,
    or ``"a photo of a {name}"``), as ``FlaxCLIPModel.get_text_features``."""
    _, params = _clip_module_and_params(clip_model, params)
    input_ids = jnp.asarray(input_ids)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    return clip_model.get_text_features(input_ids, attention_mask=attention_mask, params=params)
