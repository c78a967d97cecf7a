"""Seeded procedural fractals: iterated function systems (IFS) rendered by the chaos game.

DiffuseMix (Islam et al., CVPR 2024, §3.3) blends each generated hybrid with a fractal image
from a fixed bank. That bank is itself made of IFS fractals (FractalDB, Kataoka et al.,
ACCV 2020), so augdiff renders its own from a seed — nothing to download, any resolution.

An IFS is a set of ``K`` affine contractions ``w_k(p) = A_k p + b_k`` chosen with
probabilities ``π_k ∝ |det A_k|`` (Barnsley, *Fractals Everywhere*, ch. III). Its attractor
is drawn with the chaos game: ``p_{t+1} = w_{k_t}(p_t)``, ``k_t ~ Categorical(π)``. Each
``A_k = R(θ_k) · diag(σ₁, d σ₂) · R(φ_k)`` with singular values ``σ ∈ [0.25, 0.85]`` (so the
map contracts) and ``d ∈ {±1}`` a random reflection.

Rendering: ``num_chains`` independent chains run in parallel (``lax.scan`` over steps, all
chains vectorised); the first ``burn_in`` steps are dropped. The points are scaled to the
image with one scale for both axes, splatted into a density histogram, and coloured by a
running average of the colours of the maps used (fractal-flame colouring:
``c_{t+1} = (c_t + colour_{k_t}) / 2``). Brightness is ``log(1 + density)`` normalised to
[0, 1]; the background is black. Everything is vmapped over the ``n`` fractals.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

MAX_MAPS = 4


def _rotation(theta: jax.Array) -> jax.Array:
    c, s = jnp.cos(theta), jnp.sin(theta)
    return jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)


def sample_ifs(key: jax.Array, num_maps: int = MAX_MAPS) -> dict[str, jax.Array]:
    """Random contractive IFS of ``2..num_maps`` maps: ``A [K,2,2]``, ``b [K,2]``, ``logp [K]``,
    ``colour [K,3]`` (unused maps have probability 0)."""
    ks = jax.random.split(key, 7)
    k = num_maps
    theta = jax.random.uniform(ks[0], (k,), minval=0.0, maxval=2 * jnp.pi)
    phi = jax.random.uniform(ks[1], (k,), minval=0.0, maxval=2 * jnp.pi)
    sigma = jax.random.uniform(ks[2], (k, 2), minval=0.25, maxval=0.85)
    reflect = jnp.where(jax.random.bernoulli(ks[3], 0.5, (k,)), -1.0, 1.0)
    diag = jax.vmap(jnp.diag)(jnp.stack([sigma[:, 0], reflect * sigma[:, 1]], -1))
    a = _rotation(theta) @ diag @ _rotation(phi)
    b = jax.random.uniform(ks[4], (k, 2), minval=-1.0, maxval=1.0)
    active = jax.random.randint(ks[5], (), 2, num_maps + 1)
    det = jnp.abs(sigma[:, 0] * sigma[:, 1])
    logp = jnp.where(jnp.arange(k) < active, jnp.log(det), -jnp.inf)
    colour = jax.random.uniform(ks[6], (k, 3), minval=0.15, maxval=1.0)
    return {"A": a, "b": b, "logp": logp, "colour": colour}


def chaos_game(
    key: jax.Array, ifs: dict[str, jax.Array], num_chains: int, steps: int, burn_in: int
) -> tuple[jax.Array, jax.Array]:
    """Points ``[(steps−burn_in)·num_chains, 2]`` on the attractor and their colours ``[…, 3]``."""
    k_init, k_run = jax.random.split(key)
    p0 = jax.random.uniform(k_init, (num_chains, 2), minval=-1.0, maxval=1.0)
    c0 = jnp.full((num_chains, 3), 0.5)

    # all map choices drawn at once: k_t ~ Categorical(π) for every step and chain
    choices = jax.random.categorical(k_run, ifs["logp"], shape=(steps, num_chains))

    def step(carry, idx):
        p, c = carry
        p = jnp.einsum("nij,nj->ni", ifs["A"][idx], p) + ifs["b"][idx]
        c = 0.5 * (c + ifs["colour"][idx])
        return (p, c), (p, c)

    _, (pts, cols) = jax.lax.scan(step, (p0, c0), choices)
    return pts[burn_in:].reshape(-1, 2), cols[burn_in:].reshape(-1, 3)


def render(points: jax.Array, colours: jax.Array, size: int, margin: float = 0.05) -> jax.Array:
    """Splat points into a ``[size, size, 3]`` image in [0, 1] (log-density × mean colour)."""
    lo, hi = points.min(0), points.max(0)
    centre = 0.5 * (lo + hi)
    half = 0.5 * jnp.max(hi - lo) * (1.0 + 2 * margin) + 1e-6
    uv = (points - centre) / (2 * half) + 0.5  # in [margin', 1 - margin']
    ij = jnp.clip(jnp.floor(uv * size).astype(jnp.int32), 0, size - 1)
    flat = (size - 1 - ij[:, 1]) * size + ij[:, 0]  # y up
    density = jnp.zeros(size * size).at[flat].add(1.0)
    colour_sum = jnp.zeros((size * size, 3)).at[flat].add(colours)
    mean_colour = colour_sum / jnp.maximum(density, 1.0)[:, None]
    brightness = jnp.log1p(density) / jnp.log1p(density.max())
    return jnp.clip(mean_colour * brightness[:, None], 0.0, 1.0).reshape(size, size, 3)


_BURN_IN, _STEPS = 24, 24 + 64


@functools.partial(jax.jit, static_argnames=("n", "num_points", "num_maps"))
def fractal_points(
    key: jax.Array, n: int, num_points: int = 1 << 16, num_maps: int = MAX_MAPS
) -> tuple[jax.Array, jax.Array]:
    """Attractor points ``[n, P, 2]`` and colours ``[n, P, 3]`` of ``n`` random IFS.

    Independent of the output resolution, so rendering at several sizes reuses one compile.
    """
    num_chains = max(1, -(-num_points // (_STEPS - _BURN_IN)))

    def one(k: jax.Array) -> tuple[jax.Array, jax.Array]:
        k_ifs, k_game = jax.random.split(k)
        ifs = sample_ifs(k_ifs, num_maps)
        return chaos_game(k_game, ifs, num_chains, _STEPS, _BURN_IN)

    return jax.vmap(one)(jax.random.split(key, n))


@functools.partial(jax.jit, static_argnames=("size",))
def render_batch(points: jax.Array, colours: jax.Array, size: int) -> jax.Array:
    """:func:`render` vmapped over a batch of point clouds."""
    return jax.vmap(lambda p, c: render(p, c, size))(points, colours).astype(jnp.float32)


def fractal_images(
    key: jax.Array, n: int, size: int, num_points: int = 1 << 16, num_maps: int = MAX_MAPS
) -> jax.Array:
    """``n`` IFS fractals as float32 ``[n, size, size, 3]`` in [0, 1], deterministic in ``key``."""
    if n <= 0 or size <= 0:
        raise ValueError(f"fractal_images: n and size must be > 0, got n={n}, size={size}")
    if num_maps < 2:
        raise ValueError(f"fractal_images: num_maps must be >= 2, got {num_maps}")
    if num_points <= 0:
        raise ValueError(f"fractal_images: num_points must be > 0, got {num_points}")
    points, colours = fractal_points(key, n, num_points, num_maps)
    return render_batch(points, colours, size)
