"""unCLIP image conditioning (stable-diffusion-2-1-unclip) for diffusers' Flax UNet, unforked.

Stable unCLIP conditions the SD-2.1 UNet on a CLIP image embedding e (CLIP vision tower +
visual projection, not L2-normalised) through the UNet's *class embedding* (Ramesh et al. 2022,
"Hierarchical Text-Conditional Image Generation with CLIP Latents", §2.1, noise augmentation of
the CLIP embedding; diffusers ``StableUnCLIPImg2ImgPipeline.noise_image_embeddings``):

1. normalise with the checkpoint's ``StableUnCLIPImageNormalizer``: z = (e - μ) / σ;
2. forward-diffuse z to ``noise_level`` s with the DDPM ``image_noising_scheduler``:
   z_s = √ᾱ_s · z + √(1 - ᾱ_s) · ε,   ε ~ N(0, I)             (Ho et al. 2020, eq. 4);
3. un-normalise, e_s = z_s · σ + μ, and append the sinusoidal embedding of s:
   c = [e_s ; sinusoid(s)]  (``flip_sin_to_cos=True``, shift 0, width dim(e));
4. the UNet adds ``class_embedding(c)`` (``class_embed_type='projection'``: a
   ``TimestepEmbedding``, Linear -> SiLU -> Linear) to its time embedding:
   emb = time_embedding(sinusoid(t)) + class_embedding(c).

The unconditional branch of classifier-free guidance uses c = 0 (diffusers zeros the whole
noised-and-concatenated vector).

diffusers' Flax UNet has no class embedding, so step 4 is added without forking its code:
:func:`apply_unet` runs ``FlaxUNet2DConditionModel.apply`` under ``nn.intercept_methods`` with an
interceptor that adds the class embedding to the output of exactly one submodule call, the
UNet's own ``time_embedding``. Every other line of the UNet is diffusers' code.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from augdiff import distributed
from augdiff.models.conv import im2col_intercept
from augdiff.sd import attention
from augdiff.sd.loading import SDComponents
from augdiff.sd.schedulers import NoiseSchedule

Array = jax.Array


def noise_level_embedding(noise_level: Array, dim: int) -> Array:
    """sinusoid(s): ``[cos(s·ω_k), sin(s·ω_k)]``, ω_k = 10000^(-k/(dim/2)), k < dim/2.

    diffusers' ``get_timestep_embedding(s, dim, flip_sin_to_cos=True, downscale_freq_shift=0)``,
    the Flax twin of which (``get_sinusoidal_embeddings``) is reused here.
    """
    from diffusers.models.embeddings_flax import get_sinusoidal_embeddings

    s = jnp.asarray(noise_level, jnp.float32).reshape(-1)
    return get_sinusoidal_embeddings(s, dim, freq_shift=0, flip_sin_to_cos=True)


def image_noising_alphas_cumprod(components: SDComponents) -> np.ndarray:
    """ᾱ of the DDPM ``image_noising_scheduler`` (schedule maths lives in ``schedulers``)."""
    if components.image_noising_scheduler_config is None:
        raise ValueError(
            f"model kind {components.kind!r} has no image_noising_scheduler (not unCLIP)"
        )
    return NoiseSchedule.from_diffusers_config(
        components.image_noising_scheduler_config
    ).alphas_cumprod


def noise_image_embeddings(
    components: SDComponents,
    params: dict,
    image_embeds: Array,
    noise_level: int | Array,
    noise: Array,
) -> Array:
    """The unCLIP class-embedding input c = [e_s ; sinusoid(s)] (steps 1-3 of the module doc).

    Args:
      image_embeds: [B, D] projected CLIP image embeddings e.
      noise_level: s, an int in [0, num_train_timesteps) of the image-noising scheduler (or [B]).
      noise: ε, [B, D] standard normal.

    Returns:
      [B, 2D] float32.
    """
    alphas_cumprod = jnp.asarray(image_noising_alphas_cumprod(components), jnp.float32)
    e = jnp.asarray(image_embeds, jnp.float32)
    norm = params["image_normalizer"]
    mean, std = norm["mean"].astype(jnp.float32), norm["std"].astype(jnp.float32)
    s = jnp.broadcast_to(jnp.asarray(noise_level, jnp.int32), e.shape[:1])
    abar = alphas_cumprod[s][:, None]
    z = (e - mean) / std
    z_s = jnp.sqrt(abar) * z + jnp.sqrt(1.0 - abar) * jnp.asarray(noise, jnp.float32)
    e_s = z_s * std + mean
    return jnp.concatenate([e_s, noise_level_embedding(s, e.shape[-1])], axis=-1)


def class_embedding(components: SDComponents, params: dict, class_input: Array) -> Array:
    """``class_embedding(c)``: Linear -> SiLU -> Linear to the time-embedding width."""
    if components.class_embedding is None or "class_embedding" not in params:
        raise ValueError("this UNet has no unCLIP class embedding (load an unCLIP model)")
    return components.class_embedding.apply(
        {"params": params["class_embedding"]}, class_input.astype(components.dtype)
    )


def _cpu_conv() -> Any:
    """``AUGDIFF_SD_CONV=auto|im2col|xla``: the UNet's convolutions on at most 8² inputs as one
    GEMM each (:func:`augdiff.models.conv.im2col_intercept`) or flax's own (``xla``);
    ``auto`` (default) is ``im2col`` on the CPU, where it made the SD-1.5 CFG step at 16²
    latents 5× faster (4.65 s → 0.88 s, equal to 5e-6), and ``xla`` elsewhere (decided by
    :func:`augdiff.distributed.target_platform`)."""
    mode = os.environ.get("AUGDIFF_SD_CONV", "auto")
    if mode not in ("auto", "im2col", "xla"):
        raise ValueError(f"AUGDIFF_SD_CONV={mode!r}: choose auto, im2col or xla")
    if mode == "im2col" or (mode == "auto" and distributed.target_platform() == "cpu"):
        return im2col_intercept()
    return contextlib.nullcontext()


def apply_unet(
    components: SDComponents,
    params: dict,
    latents: Array,
    t: Array,
    encoder_hidden_states: Array,
    class_input: Array | None = None,
) -> Array:
    """The UNet's output on NCHW ``latents`` at timestep(s) ``t``, float32.

    With ``class_input`` (unCLIP's c, [B, 2D]), the class embedding is added to the UNet's time
    embedding (emb = time_embedding(sinusoid(t)) + class_embedding(c)) by intercepting the call
    of the UNet's ``time_embedding`` submodule; without it an unCLIP UNet refuses to run, so an
    image-conditioned model can never be used silently without its image conditioning.
    The attention layers run as :mod:`augdiff.sd.attention` selects (``AUGDIFF_SD_ATTENTION``).
    """
    dtype = components.dtype
    x = latents.astype(dtype)
    ctx = encoder_hidden_states.astype(dtype)
    unet = components.unet
    if class_input is None:
        if components.kind == "unclip":
            raise ValueError("an unCLIP UNet needs its image conditioning (class_input)")
        with attention.intercept(), _cpu_conv():
            out = unet.apply({"params": params["unet"]}, x, t, ctx).sample
        return out.astype(jnp.float32)

    class_emb = class_embedding(components, params, class_input)
    unet_cls = type(unet)

    def add_class_embedding(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        module = context.module
        if (
            context.method_name == "__call__"
            and module.name == "time_embedding"
            and isinstance(module.parent, unet_cls)
        ):
            return out + class_emb.astype(out.dtype)
        return out

    with attention.intercept(), _cpu_conv(), nn.intercept_methods(add_class_embedding):
        out = unet.apply({"params": params["unet"]}, x, t, ctx).sample
    return out.astype(jnp.float32)


def clip_preprocess_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after resizing the shorter side to ``size`` (transformers'
    ``get_resize_output_image_size`` with ``shortest_edge``: the long side is ⌊size·long/short⌋)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def clip_preprocess(
    images01: Array,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    crop: int | None = None,
) -> Array:
    """CLIP image pre-processing of NHWC images in [0, 1], as ``CLIPImageProcessor`` does it:

    1. resize the shorter side to ``size`` keeping the aspect ratio (bicubic, antialiased;
       transformers resizes a uint8 PIL image, so its output is also rounded to 1/255),
    2. centre-crop ``crop × crop`` (default ``size``; offsets ⌊(H − crop)/2⌋, ⌊(W − crop)/2⌋),
    3. normalise: (x − mean) / std per channel.
    """
    crop = int(size if crop is None else crop)
    n, h, w, c = images01.shape
    nh, nw = clip_preprocess_size(int(h), int(w), int(size))
    x = images01
    if (nh, nw) != (h, w):
        x = jax.image.resize(x, (n, nh, nw, c), method="bicubic", antialias=True)
    if nh < crop or nw < crop:
        raise ValueError(f"clip_preprocess: resized image {nh}x{nw} is smaller than crop {crop}")
    top, left = (nh - crop) // 2, (nw - crop) // 2
    x = x[:, top : top + crop, left : left + crop, :]
    m = jnp.asarray(mean, jnp.float32)
    s = jnp.asarray(std, jnp.float32)
    return (x - m) / s
