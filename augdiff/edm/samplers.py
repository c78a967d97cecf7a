"""EDM samplers of the probability-flow ODE ``dx/dσ = (x − D(x; σ))/σ`` (Karras et al. 2022).

- :func:`heun_sampler`: deterministic 2nd-order Heun, EDM Algorithm 1 (= CASD's Algorithm 2);
  the last step to ``σ_N = 0`` is an Euler step, so ``NFE = 2N − 1``.
- :func:`euler_sampler`: 1st-order Euler, ``NFE = N``.
- :func:`stochastic_sampler`: EDM Algorithm 2, Heun plus "churn" (``S_churn``, ``S_min``,
  ``S_max``, ``S_noise``); with ``S_churn = 0`` it is Algorithm 1.

Every sampler takes ``denoiser(x, σ) -> D(x; σ)`` (``σ`` a scalar broadcast to the batch) and
the noise levels of :func:`augdiff.edm.core.sigma_schedule`, runs its whole loop inside one
``lax.fori_loop`` and is jittable. Jit the caller with the network parameters as arguments,
not as closed-over constants, e.g.::

    @jax.jit
    def draw(params, key):
        den = lambda x, s: denoise(model.apply, params, x, s, labels)
        return sample(key, den, (n, 32, 32, 3), num_steps=18)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from augdiff.edm.core import EDMConfig, sigma_schedule

Array = jax.Array
Denoiser = Callable[[Array, Array], Array]

SAMPLERS = ("heun", "euler", "stochastic")


def _check_sigmas(sigmas: Array) -> int:
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(
            f"sampler: sigmas must be a 1-D schedule [N+1] with N >= 1, got shape {sigmas.shape}"
        )
    return int(sigmas.shape[0]) - 1


def _ode_step(
    denoiser: Denoiser, x_hat: Array, t_hat: Array, t_next: Array, second_order: bool
) -> Array:
    """One step of Algorithm 1/2 from ``t_hat`` to ``t_next`` (lines 4-8 of Algorithm 1).

    Euler: ``d_i = (x̂ − D(x̂; t̂))/t̂``, ``x_{i+1} = x̂ + (t_{i+1} − t̂)·d_i``. Heun then
    corrects with ``d'_i = (x_{i+1} − D(x_{i+1}; t_{i+1}))/t_{i+1}`` and
    ``x_{i+1} = x̂ + (t_{i+1} − t̂)·(½d_i + ½d'_i)``.
    """
    d_cur = (x_hat - denoiser(x_hat, t_hat)) / t_hat
    x_next = x_hat + (t_next - t_hat) * d_cur
    if second_order:
        d_prime = (x_next - denoiser(x_next, t_next)) / t_next
        x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def heun_sampler(denoiser: Denoiser, x_T: Array, sigmas: Array) -> Array:
    """EDM Algorithm 1: Heun steps ``i = 0 … N−2`` then a final Euler step to ``σ_N``.

    ``x_T`` is the starting noise already scaled by ``σ_0``; ``NFE = 2N − 1``.
    """
    n = _check_sigmas(sigmas)
    x = jnp.asarray(x_T, jnp.float32)

    def body(i: Array, x: Array) -> Array:
        return _ode_step(denoiser, x, sigmas[i], sigmas[i + 1], second_order=True)

    x = jax.lax.fori_loop(0, n - 1, body, x)
    return _ode_step(denoiser, x, sigmas[n - 1], sigmas[n], second_order=False)


def euler_sampler(denoiser: Denoiser, x_T: Array, sigmas: Array) -> Array:
    """First-order Euler integration of the probability-flow ODE; ``NFE = N``."""
    n = _check_sigmas(sigmas)
    x = jnp.asarray(x_T, jnp.float32)

    def body(i: Array, x: Array) -> Array:
        return _ode_step(denoiser, x, sigmas[i], sigmas[i + 1], second_order=False)

    return jax.lax.fori_loop(0, n, body, x)


def _churn(
    key: Array,
    x: Array,
    t_cur: Array,
    num_steps: int,
    S_churn: float,
    S_min: float,
    S_max: float,
    S_noise: float,
) -> tuple[Array, Array]:
    """Lines 4-6 of EDM Algorithm 2: raise the noise level from ``t_i`` to ``t̂_i``.

    ``γ_i = min(S_churn/N, √2 − 1)`` if ``t_i ∈ [S_min, S_max]`` else 0; ``t̂_i = t_i + γ_i·t_i``;
    ``x̂_i = x_i + √(t̂_i² − t_i²)·ε_i`` with ``ε_i ~ N(0, S_noise²I)``.
    """
    gamma_max = min(S_churn / num_steps, math.sqrt(2.0) - 1.0)
    gamma = jnp.where((t_cur >= S_min) & (t_cur <= S_max), gamma_max, 0.0)
    t_hat = t_cur + gamma * t_cur
    eps = S_noise * jax.random.normal(key, x.shape, x.dtype)
    # √(t̂² − t²) written as t·√(γ(2+γ)): never the root of a rounding-negative difference.
    x_hat = x + t_cur * jnp.sqrt(gamma * (2.0 + gamma)) * eps
    return x_hat, t_hat


def stochastic_sampler(
    key: Array,
    denoiser: Denoiser,
    x_T: Array,
    sigmas: Array,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
) -> Array:
    """EDM Algorithm 2 (stochastic Heun with churn); step ``i`` draws ``ε_i`` from
    ``fold_in(key, i)``. With ``S_churn = 0`` it reduces to Algorithm 1; ``NFE = 2N − 1``."""
    n = _check_sigmas(sigmas)
    if S_churn < 0 or S_noise < 0:
        raise ValueError(f"stochastic_sampler: S_churn and S_noise must be >= 0, got "
                         f"S_churn={S_churn}, S_noise={S_noise}")
    x = jnp.asarray(x_T, jnp.float32)
    churn = dict(num_steps=n, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise)

    def step(i: Array, x: Array, second_order: bool) -> Array:
        x_hat, t_hat = _churn(jax.random.fold_in(key, i), x, sigmas[i], **churn)
        return _ode_step(denoiser, x_hat, t_hat, sigmas[i + 1], second_order)

    x = jax.lax.fori_loop(0, n - 1, lambda i, x: step(i, x, True), x)
    return step(n - 1, x, False)


def guided_denoiser(
    denoise_fn: Callable[[Array, Array, Any], Array],
    labels: Array,
    uncond_labels: Array,
    guidance: float | Array,
) -> Denoiser:
    """Classifier-free guidance ``D_w = D(x; σ, u) + w·(D(x; σ, c) − D(x; σ, u))``.

    ``denoise_fn(x, σ, labels)`` is evaluated once on the batch doubled along axis 0
    (conditional rows first), so labels must be arrays with a leading batch axis.
    ``w = 1`` gives the conditional denoiser, ``w = 0`` the unconditional one.
    """
    labels = jnp.asarray(labels)
    uncond_labels = jnp.asarray(uncond_labels)
    if labels.shape != uncond_labels.shape:
        raise ValueError(
            f"guided_denoiser: labels {labels.shape} and uncond_labels {uncond_labels.shape} "
            f"must have the same shape"
        )
    both = jnp.concatenate([labels, uncond_labels], axis=0)

    def denoiser(x: Array, sigma: Array) -> Array:
        d = denoise_fn(jnp.concatenate([x, x], axis=0), sigma, both)
        d_cond, d_uncond = jnp.split(d, 2, axis=0)
        return d_uncond + guidance * (d_cond - d_uncond)

    return denoiser


def nfe(sampler: str, num_steps: int) -> int:
    """Network evaluations of ``sampler`` over ``num_steps`` steps (Heun: ``2N − 1``)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"nfe: unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    return num_steps if sampler == "euler" else 2 * num_steps - 1


def sample(
    key: Array,
    denoiser: Denoiser,
    shape: tuple[int, ...],
    num_steps: int,
    sampler: str = "heun",
    cfg: EDMConfig = EDMConfig(),
    *,
    sharding: jax.sharding.Sharding | None = None,
    **kw: Any,
) -> Array:
    """Draw ``x_T = σ_max·n``, ``n ~ N(0, I)`` of ``shape`` and integrate to ``σ = 0``.

    ``sampler`` is ``'heun'`` (Algorithm 1), ``'euler'`` or ``'stochastic'`` (Algorithm 2;
    ``kw`` = ``S_churn``, ``S_min``, ``S_max``, ``S_noise``). ``sharding`` (e.g.
    ``augdiff.distributed.batch_sharding(mesh)``) lays the batch out over devices; the values
    do not depend on it. The noise uses ``fold_in(key, 0)``, the churn ``fold_in(key, 1)``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sample: unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    if kw and sampler != "stochastic":
        raise ValueError(f"sample: options {sorted(kw)} only apply to sampler='stochastic'")
    sigmas = sigma_schedule(num_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    x_T = jax.random.normal(jax.random.fold_in(key, 0), shape, jnp.float32) * sigmas[0]
    if sharding is not None:
        x_T = jax.lax.with_sharding_constraint(x_T, sharding)
    if sampler == "heun":
        return heun_sampler(denoiser, x_T, sigmas)
    if sampler == "euler":
        return euler_sampler(denoiser, x_T, sigmas)
    return stochastic_sampler(jax.random.fold_in(key, 1), denoiser, x_T, sigmas, **kw)
