"""The EDM formulation (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"): noise schedule, preconditioning, loss weight, denoiser and training loss.

Every formula of Table 1 ("EDM" column) lives here exactly once:

- sampling noise levels (eq. 5):
  ``σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`` for ``i < N``, ``σ_N = 0``;
- preconditioning (eq. 7 and App. B.6):
  ``c_skip = σ_d²/(σ²+σ_d²)``, ``c_out = σ·σ_d/√(σ²+σ_d²)``, ``c_in = 1/√(σ²+σ_d²)``,
  ``c_noise = ¼·ln σ``;
- denoiser ``D_θ(x; σ) = c_skip(σ)·x + c_out(σ)·F_θ(c_in(σ)·x; c_noise(σ))`` (eq. 7);
- training noise distribution ``ln σ ~ N(P_mean, P_std²)`` and loss weight
  ``λ(σ) = (σ²+σ_d²)/(σ·σ_d)²`` (eq. 8, Table 1);
- loss ``E_{σ,y,n} λ(σ)·‖D_θ(y+n; σ) − y‖²`` with ``n ~ N(0, σ²I)`` (eq. 2/8).

All functions are pure, take explicit ``jax.random`` keys and compute in float32 whatever
the network's compute dtype (the network output is cast before the skip connection, as in
NVlabs/edm's ``EDMPrecond``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
# ``net_apply(params, c_in·x, c_noise[B], class_labels, *, train=..., rngs=...) -> F_θ``:
# the contract of ``flax.linen.Module.apply`` for :class:`augdiff.models.songunet.SongUNet`.
NetApply = Callable[..., Array]


@dataclasses.dataclass(frozen=True)
class EDMConfig:
    """EDM hyper-parameters (Karras et al. 2022, Table 1 and §5)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2

    def __post_init__(self) -> None:
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"EDMConfig: need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )
        if self.rho <= 0 or self.sigma_data <= 0 or self.P_std <= 0:
            raise ValueError(
                f"EDMConfig: rho, sigma_data and P_std must be > 0, got rho={self.rho}, "
                f"sigma_data={self.sigma_data}, P_std={self.P_std}"
            )


def sigma_schedule(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> Array:
    """Noise levels ``[σ_0, …, σ_{N−1}, σ_N = 0]`` of EDM eq. 5 (Table 1), float32 ``[N+1]``.

    ``σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`` for ``i = 0 … N−1``, so
    ``σ_0 = σ_max`` and ``σ_{N−1} = σ_min``; then ``σ_N = 0``.
    """
    if int(num_steps) != num_steps or num_steps < 2:
        raise ValueError(f"sigma_schedule: num_steps must be an integer >= 2, got {num_steps!r}")
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(
            f"sigma_schedule: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}"
        )
    i = jnp.arange(num_steps, dtype=jnp.float32)
    inv_rho = 1.0 / rho
    sigmas = (
        sigma_max**inv_rho + i / (num_steps - 1) * (sigma_min**inv_rho - sigma_max**inv_rho)
    ) ** rho
    return jnp.concatenate([sigmas, jnp.zeros((1,), jnp.float32)])


def preconditioning(
    sigma: Array | float, sigma_data: float = 0.5
) -> tuple[Array, Array, Array, Array]:
    """``(c_skip, c_out, c_in, c_noise)`` of EDM eq. 7 / Table 1, elementwise in ``σ``.

    ``c_skip = σ_d²/(σ²+σ_d²)``, ``c_out = σ·σ_d/√(σ²+σ_d²)``, ``c_in = 1/√(σ²+σ_d²)``,
    ``c_noise = ¼·ln σ``.
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data * jax.lax.rsqrt(total)
    c_in = jax.lax.rsqrt(total)
    c_noise = 0.25 * jnp.log(sigma)
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: Array | float, sigma_data: float = 0.5) -> Array:
    """EDM loss weight ``λ(σ) = (σ²+σ_d²)/(σ·σ_d)²`` (Table 1), i.e. ``1/c_out(σ)²``."""
    sigma = jnp.asarray(sigma, jnp.float32)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma_train(key: Array, shape: tuple[int, ...], cfg: EDMConfig = EDMConfig()) -> Array:
    """Training noise levels ``ln σ ~ N(P_mean, P_std²)`` (EDM Table 1), float32 of ``shape``."""
    return jnp.exp(cfg.P_mean + cfg.P_std * jax.random.normal(key, shape, jnp.float32))


def _per_example_sigma(sigma: Array | float, batch: int) -> Array:
    """``σ`` as a float32 vector ``[B]``: a scalar is broadcast, ``[B]``/``[B,1,1,1]`` reshaped."""
    sigma = jnp.asarray(sigma, jnp.float32)
    if sigma.size == 1:
        return jnp.broadcast_to(sigma.reshape(()), (batch,))
    if sigma.size != batch:
        raise ValueError(
            f"denoise: sigma has {sigma.size} values for a batch of {batch}; pass a scalar, "
            f"[B] or [B,1,1,1]"
        )
    return sigma.reshape(batch)


def denoise(
    net_apply: NetApply,
    params: Any,
    x: Array,
    sigma: Array | float,
    class_labels: Array | None = None,
    *,
    train: bool = False,
    rngs: Mapping[str, Array] | None = None,
    sigma_data: float = 0.5,
) -> Array:
    """The preconditioned denoiser ``D_θ(x; σ) = c_skip·x + c_out·F_θ(c_in·x; c_noise)`` (eq. 7).

    ``net_apply(params, c_in·x, c_noise, class_labels, train=train, rngs=rngs)`` evaluates the
    raw network ``F_θ`` (e.g. ``SongUNet.apply``; bind extra conditioning such as CASD source
    labels with ``functools.partial``). ``sigma`` is a scalar or one value per example. The
    skip connection and scaling are computed in float32, whatever dtype the network runs in.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 2:
        raise ValueError(f"denoise: x must be batched [B, ...], got shape {x.shape}")
    sigma_b = _per_example_sigma(sigma, x.shape[0])
    c_skip, c_out, c_in, c_noise = preconditioning(
        sigma_b.reshape((-1,) + (1,) * (x.ndim - 1)), sigma_data
    )
    f = net_apply(params, c_in * x, c_noise.reshape(-1), class_labels, train=train, rngs=rngs)
    return c_skip * x + c_out * jnp.asarray(f, jnp.float32)


def edm_loss(
    key: Array,
    net_apply: NetApply,
    params: Any,
    x0: Array,
    class_labels: Array | None,
    *,
    cfg: EDMConfig = EDMConfig(),
    train: bool = True,
    rngs: Mapping[str, Array] | None = None,
) -> Array:
    """Per-example EDM training loss ``λ(σ)·mean‖D_θ(y+n; σ) − y‖²`` (eq. 8, Table 1), ``[B]``.

    ``ln σ ~ N(P_mean, P_std²)`` and ``n ~ N(0, σ²I)`` are drawn from ``key``; the squared
    error is averaged over pixels (NVlabs/edm sums it; the mean only rescales the learning
    rate). ``rngs`` (e.g. ``{'dropout': k}``) go to the network.
    """
    x0 = jnp.asarray(x0, jnp.float32)
    if x0.ndim < 2:
        raise ValueError(f"edm_loss: x0 must be batched [B, ...], got shape {x0.shape}")
    k_sigma, k_noise = jax.random.split(key)
    sigma = sample_sigma_train(k_sigma, (x0.shape[0],), cfg)
    bshape = (-1,) + (1,) * (x0.ndim - 1)
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32) * sigma.reshape(bshape)
    d = denoise(
        net_apply, params, x0 + noise, sigma, class_labels,
        train=train, rngs=rngs, sigma_data=cfg.sigma_data,
    )
    sq_err = jnp.mean(jnp.square(d - x0), axis=tuple(range(1, x0.ndim)))
    return loss_weight(sigma, cfg.sigma_data) * sq_err
