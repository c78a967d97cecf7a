"""Classifier-free guidance for latent diffusion: plain, rescaled, and InstructPix2Pix's dual form.

All functions are pure and jittable; the SD pipelines (``augdiff.sd.pipelines._sample``) use
them for every guided call. The guided branches are evaluated in ONE denoiser call on a batch
that stacks them along axis 0 (``concat_branches`` → UNet → ``split_branches``), in diffusers'
order: ``[uncond, cond]`` for CFG and ``[text+image, image-only, uncond]`` for InstructPix2Pix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def cfg(eps_uncond: Array, eps_cond: Array, scale: float | Array) -> Array:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): ε̃ = ε_u + w (ε_c - ε_u).

    ``scale`` = w; w = 1 is the conditional model, w = 0 the unconditional one.
    """
    return eps_uncond + scale * (eps_cond - eps_uncond)


def instruct_pix2pix_guidance(
    eps_text_img: Array,
    eps_img: Array,
    eps_uncond: Array,
    text_scale: float | Array,
    image_scale: float | Array,
) -> Array:
    """InstructPix2Pix dual guidance (Brooks et al. 2023, eq. 3), as diffusers computes it.

    ε̃ = ε(∅, ∅) + s_T (ε(c_I, c_T) - ε(c_I, ∅)) + s_I (ε(c_I, ∅) - ε(∅, ∅)),
    with ``eps_text_img`` = ε(c_I, c_T), ``eps_img`` = ε(c_I, ∅), ``eps_uncond`` = ε(∅, ∅).
    """
    return eps_uncond + text_scale * (eps_text_img - eps_img) + image_scale * (eps_img - eps_uncond)


def rescale_noise_cfg(
    noise_cfg: Array, noise_text: Array, guidance_rescale: float | Array = 0.0
) -> Array:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules ...", §3.4, eq. 15-16).

    ε_rescaled = ε_cfg · std(ε_text)/std(ε_cfg) (per example, over all non-batch axes);
    result = φ ε_rescaled + (1 - φ) ε_cfg with φ = ``guidance_rescale``. Uses the unbiased std
    like diffusers (the ratio is the same for either normalisation).
    """
    axes = tuple(range(1, noise_cfg.ndim))
    std_text = jnp.std(noise_text, axis=axes, keepdims=True, ddof=1)
    std_cfg = jnp.std(noise_cfg, axis=axes, keepdims=True, ddof=1)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def concat_branches(*branches: Array) -> Array:
    """Stack guidance branches along the batch axis for one denoiser call."""
    if not branches:
        raise ValueError("concat_branches needs at least one branch")
    shapes = {b.shape[1:] for b in branches}
    if len(shapes) != 1:
        raise ValueError(f"guidance branches differ in non-batch shape: {sorted(shapes)}")
    return jnp.concatenate(branches, axis=0)


def split_branches(x: Array, n: int) -> tuple[Array, ...]:
    """Inverse of ``concat_branches`` for ``n`` equal branches."""
    if x.shape[0] % n:
        raise ValueError(f"batch of {x.shape[0]} does not split into {n} guidance branches")
    return tuple(jnp.split(x, n, axis=0))


def repeat_branches(x: Array, n: int) -> Array:
    """``n`` copies of ``x`` stacked along the batch axis (the latent of every branch)."""
    return jnp.concatenate([x] * n, axis=0)


GUIDANCE_FORMS = ("paper", "diffusers")


def cfg_scale(w: float | Array, form: str = "paper") -> float | Array:
    """The scale ``s`` of :func:`cfg` (ε̃ = ε_u + s (ε_c − ε_u)) that a guidance weight ``w`` means.

    - ``paper``: ε̂ = (1 + w) ε_c − w ε_u (Ho & Salimans 2022, eq. 6; Diffusion Inversion §3.2),
      i.e. ``s = 1 + w``; ``w = 0`` is the conditional model.
    - ``diffusers``: ε̂ = ε_u + w (ε_c − ε_u) (diffusers' ``guidance_scale``, the Diffusion
      Inversion code), i.e. ``s = w``; ``w = 1`` is the conditional model.
    """
    if form == "paper":
        return 1.0 + w
    if form == "diffusers":
        return w
    raise ValueError(f"guidance form must be one of {GUIDANCE_FORMS}, got {form!r}")
