"""Precision, recall, density and coverage (Naeem, Oh, Uh, Choi & Yoo, ICML 2020), and the
blockwise k-nearest-neighbour search they (and :mod:`augdiff.metrics.replication`) rest on.

With real features X = {x_i}_{i≤N}, fake features Y = {y_j}_{j≤M}, ``NND_k(z)`` the distance
from z to its k-th nearest neighbour within its own set (itself excluded) and
B(z, r) the closed ball, Naeem et al. eq. 1-4 (precision/recall after Kynkäänniemi et al. 2019)::

    precision = 1/M Σ_j 1[∃ i: y_j ∈ B(x_i, NND_k(x_i))]
    recall    = 1/N Σ_i 1[∃ j: x_i ∈ B(y_j, NND_k(y_j))]
    density   = 1/(kM) Σ_j Σ_i 1[y_j ∈ B(x_i, NND_k(x_i))]
    coverage  = 1/N Σ_i 1[∃ j: y_j ∈ B(x_i, NND_k(x_i))]

(k = 5 by default, as recommended in the paper.) Distances are Euclidean, computed in JAX from
the Gram form ‖a‖² + ‖b‖² − 2 a·b in float32 at HIGHEST matmul precision, one block of query
rows at a time (``lax.map`` / ``lax.scan`` inside one jit), so memory stays
O(block × N) rather than O(M × N). When a mesh is given, each block's rows are split over its
``('data', 'fsdp')`` axes while the reference set is replicated. All comparisons are done on
squared distances, so no square root can move a point across a ball's edge.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from augdiff import distributed

_HI = jax.lax.Precision.HIGHEST


def sq_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared Euclidean distances between the rows of ``a`` [B, D] and ``b`` [N, D]: [B, N]."""
    aa = jnp.sum(a * a, axis=-1)[:, None]
    bb = jnp.sum(b * b, axis=-1)[None, :]
    return jnp.maximum(aa + bb - 2.0 * jnp.matmul(a, b.T, precision=_HI), 0.0)


def _block_size(block_size: int, mesh: Mesh | None) -> int:
    shards = distributed.num_batch_shards(mesh) if mesh is not None else 1
    return max(shards, -(-int(block_size) // shards) * shards)


def _blocks(q: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Pad query rows to a multiple of ``block`` and reshape to [nb, block, D]; also a row mask."""
    n = q.shape[0]
    nb = -(-n // block)
    pad = nb * block - n
    qp = jnp.concatenate([q, jnp.zeros((pad, q.shape[1]), q.dtype)], axis=0) if pad else q
    mask = jnp.arange(nb * block) < n
    return qp.reshape(nb, block, q.shape[1]), mask.reshape(nb, block)


def _constrain(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(distributed.DATA_AXES)))


@functools.partial(jax.jit, static_argnames=("k", "block", "mesh"))
def _knn(q: jax.Array, ref: jax.Array, k: int, block: int, mesh: Mesh | None):
    qb, _ = _blocks(q, block)

    def one(b):
        d = sq_distances(_constrain(b, mesh), ref)
        neg, idx = jax.lax.top_k(-d, k)
        return -neg, idx

    d, idx = jax.lax.map(one, qb)
    n = q.shape[0]
    return d.reshape(-1, k)[:n], idx.reshape(-1, k)[:n]


def nearest_neighbours(
    query: np.ndarray | jax.Array,
    ref: np.ndarray | jax.Array,
    k: int = 1,
    *,
    block_size: int = 1024,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``ref`` for every row of ``query``, nearest first.

    Returns (squared distances [Q, k] float32, indices [Q, k] int32) as numpy.
    """
    query = jnp.asarray(query, jnp.float32)
    ref = jnp.asarray(ref, jnp.float32)
    if query.ndim != 2 or ref.ndim != 2 or query.shape[1] != ref.shape[1]:
        raise ValueError(f"knn: features must be [Q, D] and [N, D], got {query.shape}, {ref.shape}")
    if not 1 <= k <= ref.shape[0]:
        raise ValueError(f"knn: k={k} must be between 1 and the reference set size {ref.shape[0]}")
    d, idx = _knn(query, ref, int(k), _block_size(block_size, mesh), mesh)
    return np.asarray(d), np.asarray(idx)


def knn_radii_sq(
    x: np.ndarray | jax.Array, k: int = 5, *, block_size: int = 1024, mesh: Mesh | None = None
) -> np.ndarray:
    """NND_k(x_i)² for every row: the squared distance to its k-th nearest *other* row.

    The k+1 nearest rows include the row itself at distance 0, so the radius is the
    (k+1)-th smallest distance.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.shape[0] <= k:
        raise ValueError(f"prdc: k={k} needs more than k samples per set, got {x.shape[0]}")
    d, _ = nearest_neighbours(x, x, k + 1, block_size=block_size, mesh=mesh)
    return d[:, k]


@functools.partial(jax.jit, static_argnames=("block", "mesh"))
def _prdc_counts(real, fake, r_real, r_fake, block: int, mesh: Mesh | None):
    fb, mask = _blocks(fake, block)
    rfb, _ = _blocks(r_fake[:, None], block)
    n = real.shape[0]

    def step(carry, inp):
        min_d, recalled = carry
        yb, m, rf = inp
        d = sq_distances(_constrain(yb, mesh), real)  # [block, N]
        inside = (d <= r_real[None, :]) & m[:, None]  # y_j in B(x_i, NND_k(x_i))
        count = jnp.sum(inside, axis=1)  # per fake row
        hit = jnp.any(inside, axis=1)
        min_d = jnp.minimum(min_d, jnp.min(jnp.where(m[:, None], d, jnp.inf), axis=0))
        recalled = recalled | jnp.any((d <= rf) & m[:, None], axis=0)  # x_i in B(y_j, ...)
        return (min_d, recalled), (count, hit)

    init = (jnp.full((n,), jnp.inf, jnp.float32), jnp.zeros((n,), bool))
    (min_d, recalled), (count, hit) = jax.lax.scan(step, init, (fb, mask, rfb))
    return min_d, recalled, count.reshape(-1), hit.reshape(-1), mask.reshape(-1)


def prdc(
    real: np.ndarray | jax.Array,
    fake: np.ndarray | jax.Array,
    k: int = 5,
    *,
    block_size: int = 1024,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` [M, D] against ``real`` [N, D]."""
    real = jnp.asarray(real, jnp.float32)
    fake = jnp.asarray(fake, jnp.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"prdc: features must be [N, D] and [M, D], got {real.shape}, {fake.shape}")
    r_real = jnp.asarray(knn_radii_sq(real, k, block_size=block_size, mesh=mesh))
    r_fake = jnp.asarray(knn_radii_sq(fake, k, block_size=block_size, mesh=mesh))
    min_d, recalled, count, hit, mask = _prdc_counts(
        real, fake, r_real, r_fake, _block_size(block_size, mesh), mesh
    )
    mask = np.asarray(mask)
    count = np.asarray(count)[mask].astype(np.float64)
    hit = np.asarray(hit)[mask]
    m = fake.shape[0]
    return {
        "precision": float(hit.mean()),
        "recall": float(np.asarray(recalled).mean()),
        "density": float(count.sum() / (k * m)),
        "coverage": float((np.asarray(min_d) <= np.asarray(r_real)).mean()),
        "k": int(k),
    }
