"""Classifier-free guidance for latent diffusion: plain, rescaled, and InstructPix2Pix's dual form.

All functions are pure and jittable; the SD pipelines (``augdiff.sd.pipelines._sample``) use
them for every guided call. The guided branches are evaluated in ONE denoiser call on a batch
that stacks them along axis 0, example by example (``concat_branches`` → UNet →
``split_branches``), in diffusers' order within each example: ``(uncond, cond)`` for CFG and
``(text+image, image-only, uncond)`` for InstructPix2Pix.
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
    """Stack guidance branches on the batch axis for one denoiser call, **example-major**:
    row ``b·n + k`` is branch ``k`` of example ``b``.

    Example-major (not ``[branch 0 rows; branch 1 rows]``) keeps every example's branches on
    the device that holds the example when the batch is split over a mesh: the UNet call
    needs no data movement, where the branch-major layout made XLA move rows between chips
    (all-to-all and collective-permutes) at every sampler step. The UNet treats rows
    independently, so the layout changes no value."""
    if not branches:
        raise ValueError("concat_branches needs at least one branch")
    shapes = {b.shape for b in branches}
    if len(shapes) != 1:
        raise ValueError(f"guidance branches differ in shape: {sorted(shapes)}")
    x = jnp.stack(branches, axis=1)
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def split_branches(x: Array, n: int) -> tuple[Array, ...]:
    """Inverse of :func:`concat_branches` for ``n`` branches."""
    if x.shape[0] % n:
        raise ValueError(f"batch of {x.shape[0]} does not split into {n} guidance branches")
    x = x.reshape((x.shape[0] // n, n) + x.shape[1:])
    return tuple(x[:, k] for k in range(n))


def repeat_branches(x: Array, n: int) -> Array:
    """``n`` copies of every row of ``x`` in :func:`concat_branches`' layout (the latent of
    every branch)."""
    return jnp.repeat(x, n, axis=0)


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
