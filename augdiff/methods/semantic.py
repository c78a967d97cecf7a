"""CLIP-guided semantic hybrid blending (SHB, seed 000 §3.3), at the edit's resolution.

SHB asks CLIP which regions of the generated image still look like the class and takes
exactly those from the generated image; the rest comes from the original:

1. ``S``: a similarity map of the generated image ``I_gen`` (at the EDIT's resolution, 256²
   for InstructPix2Pix) with the class text ``t_y``. Default (``features='crops'``, the seed
   000 code): CLIP image embeddings of square crops of ``c = 32`` px at stride ``s = 16``
   (positions ``min(i s, R − c)``, ``n = ⌊(R − c)/s⌋ + 1`` per axis: 15 × 15 at 256²), each
   ``S_ij = cos(φ(crop_ij), t_y)`` (eq. 5). At another edit resolution ``R`` the crop and stride
   scale by ``R/256`` (:func:`scaled_crop_geometry`). ``features='tokens'``: ViT patch tokens of
   the generated image in CLIP's joint space (a 7 × 7 grid for ViT-B/32), an option.
2. ``S`` is upsampled to the edit's pixels bilinearly (half-pixel centres, edges clamped:
   torch ``interpolate(mode='bilinear', align_corners=False)``, as the seed 000 code).
3. ``τ = P_q(S)`` over the image's pixels, ``q = 50`` (the paper; the code's default is 30);
   ``M = 1[S ≤ τ]`` (eq. 6): 1 = take the ORIGINAL.
4. ``M`` is Gaussian-smoothed at pixel level: the paper's kernel ``k = 5``, ``σ = k/3`` with
   reflect padding (default), or the code's ``scipy.ndimage.gaussian_filter(σ = 5/3)`` (15 taps,
   half-sample symmetric padding; ``smoothing='code'``). The code then re-binarises the
   smoothed mask at 0.5 before blending (``binary=True``, an option); the paper blends with
   the smoothed mask (default).
5. ``I = M ⊙ I_org + (1 − M) ⊙ I_gen`` (eq. 7, :func:`augdiff.methods.hybrids.compose`) at
   the edit's resolution; the caller then resizes to the training resolution.

:func:`shb_mask` is the one home of steps 2-4; :func:`semantic_hybrid` applies it. CLIP is
injected (``embed_fn`` / ``feature_fn``) so SHB runs and is tested without real weights.
SHB draws no random numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from augdiff.distributed import pad_to_multiple, unpad
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


# Crop geometry of the seed 000 code at 256²: 32-px crops at stride 16 (overlap 0.5).
CROP_256, STRIDE_256 = 32, 16
SMOOTHINGS = ("paper", "code")


def scaled_crop_geometry(resolution: int, crop: int = CROP_256,
                         stride: int = STRIDE_256) -> tuple[int, int]:
    """``(crop, stride)`` at edit resolution ``R``: the 256² geometry scaled by ``R/256``
    (rounded, at least 1), so the map keeps its 15 × 15 cells (4 px / 2 px at 32²)."""
    f = int(resolution) / 256.0
    return max(1, round(crop * f)), max(1, round(stride * f))


def crop_starts(size: int, crop: int, stride: int) -> np.ndarray:
    """Crop origins along one axis, as the seed 000 code: ``min(i·stride, size − crop)`` for
    ``i < max(1, ⌊(size − crop)/stride⌋ + 1)``."""
    if not 1 <= crop <= size or stride < 1:
        raise ValueError(f"crops of {crop} px at stride {stride} do not fit {size} px")
    n = max(1, (size - crop) // stride + 1)
    return np.minimum(np.arange(n) * stride, size - crop)


def extract_crops(images: jax.Array, crop: int, stride: int) -> jax.Array:
    """[B, H, W, C] → [B, n_h, n_w, crop, crop, C] crops at :func:`crop_starts`."""
    _, h, w, _ = images.shape
    ys, xs = crop_starts(h, crop, stride), crop_starts(w, crop, stride)
    iy = ys[:, None] + np.arange(crop)[None, :]  # [n_h, crop]
    ix = xs[:, None] + np.arange(crop)[None, :]
    x = images[:, iy]  # [B, n_h, crop, W, C]
    x = x[:, :, :, ix]  # [B, n_h, crop, n_w, crop, C]
    return jnp.transpose(x, (0, 1, 3, 2, 4, 5))


def crop_similarity_map(
    embed_fn: Callable[[jax.Array], jax.Array],
    generated: jax.Array,
    text_emb: jax.Array,
    labels: jax.Array | None = None,
    *,
    crop: int = CROP_256,
    stride: int = STRIDE_256,
    chunk: int = 4096,
) -> jax.Array:
    """``S_ij = cos(φ(crop_ij), t_y)`` [B, n_h, n_w] over the crops of the generated images
    (step 1); ``embed_fn(crops [N, c, c, C]) -> [N, D]`` is CLIP's image embedding (e.g.
    :func:`clip_image_embedding_fn`), run over fixed-size chunks of crops."""
    t = class_text(text_emb, labels)
    crops = extract_crops(generated, crop, stride)
    b, nh, nw = crops.shape[:3]
    flat = np.asarray(crops).reshape(b * nh * nw, *crops.shape[3:])
    size = min(int(chunk), len(flat))
    out = []
    for start in range(0, len(flat), size):
        part, m = pad_to_multiple(flat[start:start + size], size)
        out.append(np.asarray(unpad(embed_fn(jnp.asarray(part)), m)))
    emb = jnp.asarray(np.concatenate(out)).reshape(b, nh * nw, -1)
    dots = jnp.einsum("bpd,bd->bp", emb, t)
    norms = jnp.linalg.norm(emb, axis=-1) * jnp.linalg.norm(t, axis=-1)[:, None]
    return (dots / jnp.maximum(norms, 1e-12)).reshape(b, nh, nw)


def token_similarity_map(feature_fn: FeatureFn, generated: jax.Array, text_emb: jax.Array,
                         labels: jax.Array | None = None) -> jax.Array:
    """``features='tokens'``: :func:`cosine_map` of ``feature_fn(generated) -> [B, P, D]``
    (CLIP patch tokens, :func:`clip_patch_feature_fn`) with the class texts."""
    return cosine_map(feature_fn(generated), class_text(text_emb, labels))


def upsample_bilinear(s: jax.Array, height: int, width: int) -> jax.Array:
    """[B, g_h, g_w] → [B, H, W] bilinearly with half-pixel centres: output pixel ``y`` samples
    ``max(0, (y + ½)·g_h/H − ½)``, neighbours clamped at the last cell (torch's
    ``interpolate(mode='bilinear', align_corners=False)``)."""
    _, gh, gw = s.shape

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, wy = axis(height, gh)
    x0, x1, wx = axis(width, gw)
    rows = s[:, y0] * (1 - wy)[None, :, None] + s[:, y1] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :]


def percentile_mask(s: jax.Array, q: float = 50.0) -> jax.Array:
    """``M = 1[S ≤ τ]``, ``τ`` the per-image ``q``-th percentile of ``S`` [B, H, W] (linear
    interpolation between order statistics, numpy's default), float32."""
    tau = jnp.percentile(s.reshape(s.shape[0], -1), q, axis=1)
    return (s <= tau[:, None, None]).astype(jnp.float32)


def smoothing_geometry(smoothing: str = "paper",
                       kernel_size: int = 5) -> tuple[int, float, str]:
    """``(taps, σ, padding)`` of the mask blur: ``'paper'`` = ``k`` taps, ``σ = k/3``, reflect
    padding; ``'code'`` = ``scipy.ndimage.gaussian_filter(σ = k/3)`` (truncate 4: ``2⌊4σ + ½⌋ + 1``
    taps), half-sample symmetric padding (scipy's ``reflect``)."""
    sigma = kernel_size / 3.0
    if smoothing == "paper":
        return int(kernel_size), sigma, "reflect"
    if smoothing == "code":
        return 2 * int(4.0 * sigma + 0.5) + 1, sigma, "symmetric"
    raise ValueError(f"shb smoothing must be one of {SMOOTHINGS}, got {smoothing!r}")


@functools.partial(jax.jit, static_argnames=("height", "width", "percentile", "kernel_size",
                                             "smoothing", "binary"))
def shb_mask(
    s: jax.Array, height: int, width: int, *, percentile: float = 50.0, kernel_size: int = 5,
    smoothing: str = "paper", binary: bool = False,
) -> jax.Array:
    """The SHB mask [B, H, W, 1] (1 keeps the original) from a similarity map [B, g_h, g_w]:
    bilinear upsampling to H × W, ``1[S ≤ P_q(S)]``, Gaussian smoothing (steps 2-4 of the
    module docstring), optionally re-binarised at 0.5 (the code's ``use_binary_replace``)."""
    taps, sigma, mode = smoothing_geometry(smoothing, kernel_size)
    m = percentile_mask(upsample_bilinear(s, height, width), percentile)
    m = gaussian_smooth(m, taps, sigma, mode=mode)
    if binary:
        m = (m > 0.5).astype(jnp.float32)
    return m[..., None]


def gaussian_kernel1d(kernel_size: int = 5, sigma: float | None = None) -> jax.Array:
    """Normalised 1-D Gaussian ``g(x) = exp(−x² / 2σ²) / Σ_x exp(−x² / 2σ²)``,
    ``x ∈ {−(k−1)/2, …, (k−1)/2}``, with ``σ = k / 3`` by default (seed 000 §3.4)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    sigma = kernel_size / 3.0 if sigma is None else float(sigma)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    x = jnp.arange(kernel_size, dtype=jnp.float32) - (kernel_size - 1) / 2.0
    g = jnp.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def gaussian_smooth(m: jax.Array, kernel_size: int = 5, sigma: float | None = None, *,
                    mode: str = "reflect") -> jax.Array:
    """Separable Gaussian blur of [B, H, W] maps: ``m ∗ (g gᵀ)`` = rows then columns with
    :func:`gaussian_kernel1d`, padded with ``mode`` (``reflect``: torchvision's
    ``GaussianBlur``, edge pixel not repeated; ``symmetric``: scipy's ``reflect``).

    The kernel sums to 1, so a constant map is unchanged and values stay in [0, 1].
    """
    g = gaussian_kernel1d(kernel_size, sigma)
    r = kernel_size // 2
    if r == 0:
        return m
    if min(m.shape[1:]) <= r:
        raise ValueError(
            f"map of size {tuple(m.shape[1:])} too small for {mode} padding of {r} pixels"
        )
    x = jnp.pad(m, ((0, 0), (r, r), (r, r)), mode=mode)
    h, w = m.shape[1:]
    # Rows then columns: Σ_a g_a x[y + a, ·], then Σ_b g_b (·)[·, x + b].
    x = sum(g[a] * x[:, a : a + h, :] for a in range(kernel_size))
    x = sum(g[b] * x[:, :, b : b + w] for b in range(kernel_size))
    return x


def semantic_hybrid(
    original: jax.Array,
    generated: jax.Array,
    s: jax.Array,
    *,
    percentile: float = 50.0,
    kernel_size: int = 5,
    smoothing: str = "paper",
    binary: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """SHB (seed 000 §3.3) of same-size pairs [B, H, W, C] from a similarity map [B, g_h, g_w]
    of the generated images: ``(M ⊙ I_org + (1 − M) ⊙ I_gen, M)`` with ``M`` =
    :func:`shb_mask` at the images' size [B, H, W, 1]."""
    if original.ndim != 4 or original.shape != generated.shape:
        raise ValueError(f"images must be two [B, H, W, C] arrays of one shape, got "
                         f"{tuple(original.shape)} and {tuple(generated.shape)}")
    mask = shb_mask(s, original.shape[1], original.shape[2], percentile=float(percentile),
                    kernel_size=int(kernel_size), smoothing=smoothing, binary=bool(binary))
    return compose(mask.astype(original.dtype), original, generated), mask


def mask_statistics(mask: jax.Array | np.ndarray, eps: float = 1e-3) -> dict[str, float]:
    """What an SHB mask [B, H, W(, 1)] does: the share of pixels taken from the original
    (``mean M`` per image) and the share left soft by the blur (``ε < M < 1 − ε``), each as
    mean and standard deviation over the batch (must-show: SHB measured at 256²)."""
    m = np.asarray(mask, np.float64).reshape(len(mask), -1)
    orig = m.mean(axis=1)
    soft = ((m > eps) & (m < 1 - eps)).mean(axis=1)
    return {"original_share_mean": float(orig.mean()), "original_share_std": float(orig.std()),
            "soft_share_mean": float(soft.mean()), "soft_share_std": float(soft.std()),
            "num_images": int(len(m)), "pixels": int(m.shape[1])}


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


def clip_image_embedding_fn(
    clip_model: Any, params: Any | None = None, value_range: tuple[float, float] = (-1.0, 1.0)
) -> Callable[[jax.Array], jax.Array]:
    """A jitted ``embed_fn(images) -> [N, D]`` (CLIP image embeddings; inputs of any square
    size are resized to CLIP's input by :func:`clip_preprocess`) for
    :func:`crop_similarity_map`."""
    _, params = _clip_module_and_params(clip_model, params)

    @jax.jit
    def fn(images: jax.Array, p: Any) -> jax.Array:
        return clip_image_embeddings(clip_model, images, p, value_range)

    return lambda images: fn(images, params)


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
