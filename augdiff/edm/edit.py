"""Image-to-image edits with an EDM model augdiff trained (SDEdit, Meng et al. 2022).

An edit of a real image ``x₀`` (in [-1, 1]) under its class label ``c``::

    x = x₀ + σ_start · n,   n ~ N(0, I)
    x̂ = Heun(D(·; σ, c), x, [σ_start = σ'_0 > … > σ'_{N−1} = σ_min, 0])

i.e. noise the image to ``σ_start`` and integrate the probability-flow ODE back to σ = 0 with
EDM's Heun sampler (:func:`augdiff.edm.samplers.heun_sampler`, the one home for samplers) over
the EDM noise levels of eq. 5 with ``σ_max = σ_start`` (:func:`augdiff.edm.core.sigma_schedule`).
Small ``σ_start`` keeps the original's layout; large ``σ_start`` approaches unconditional
class-conditional sampling. DiffuseMix edits with InstructPix2Pix and a text prompt; here the
"prompt" of an edit is its strength ``σ_start`` and its class label, and it is recorded as
such in the store (:func:`edit_prompt`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from augdiff.config import ConfigError
from augdiff.edm.core import denoise, sigma_schedule
from augdiff.edm.model import open_generator
from augdiff.edm.samplers import heun_sampler


def edit_prompt(sigma_start: float, label: int) -> str:
    """The store's ``prompt`` field of an EDM edit: its strength and class label."""
    return f"sdedit sigma_start={sigma_start:g} class={int(label)}"


def sdedit(denoiser: Callable[[jax.Array, jax.Array], jax.Array], x0: jax.Array,
           noise: jax.Array, sigma_start: float, num_steps: int, *, sigma_min: float = 0.002,
           rho: float = 7.0) -> jax.Array:
    """SDEdit with Heun: ``x = x₀ + σ_start·n`` then EDM Algorithm 1 from ``σ_start`` to 0."""
    if not sigma_start > sigma_min:
        raise ValueError(f"sdedit: sigma_start must exceed sigma_min={sigma_min}, "
                         f"got {sigma_start}")
    sigmas = sigma_schedule(int(num_steps), sigma_min, float(sigma_start), rho)
    return heun_sampler(denoiser, x0 + sigmas[0] * noise, sigmas)


def load_edm(workdir: str) -> dict[str, Any]:
    """The edit generator: :func:`augdiff.edm.model.open_generator` of an ``augdiff
    train-diffusion`` workdir or an exported generator (e.g. the shipped
    ``augdiff/assets/generator_cifar10``), which must be a dm/sda model (not casd)."""
    loaded = open_generator(workdir)
    if loaded["mode"] == "casd":
        raise ConfigError("the EDM edit generator needs a dm/sda model, not casd")
    return loaded


def make_edit_fn(loaded: dict[str, Any], *, sigma_start: float,
                 num_steps: int) -> Callable[..., jax.Array]:
    """Jitted ``fn(params, keys[B], images[B,H,W,C] in [-1, 1], classes[B]) -> edits`` at the
    model's resolution (inputs of another size are resized bilinearly first). Example ``b``
    draws its noise from ``keys[b]``."""
    net_apply, e = loaded["net_apply"], loaded["edm"]
    size, cond = int(loaded["size"]), bool(loaded["class_conditional"])

    def one(params, key, x0, c):
        labels = {"class": c[None].astype(jnp.int32)} if cond else None

        def den(x, sigma):
            return denoise(net_apply, params, x, sigma, labels, train=False,
                           sigma_data=e.sigma_data)

        noise = jax.random.normal(key, (1,) + x0.shape, jnp.float32)
        return sdedit(den, x0[None], noise, sigma_start, num_steps, sigma_min=e.sigma_min,
                      rho=e.rho)[0]

    @jax.jit
    def fn(params, keys, images, classes):
        x = images.astype(jnp.float32)
        if x.shape[1:3] != (size, size):
            x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear")
        return jax.vmap(lambda k, x0, c: one(params, k, x0, c))(keys, x, classes)

    return fn

