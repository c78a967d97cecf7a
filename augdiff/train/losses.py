"""Classification losses and metrics, each written once.

Targets are dense class distributions ``t`` of shape ``[N, C]``: one-hot labels, Mixup/CutMix
mixtures, or -- for label scaling -- one-hot rows scaled by a per-example weight.

- Softmax cross-entropy with soft targets:
  ``L_CE = (1/N) sum_i  -sum_c t_ic log softmax(z_i)_c``.
- Binary cross-entropy with scaled targets (label scaling of the synthetic-data schedule
  recipe, "seed 000"): each class is an independent sigmoid unit and the true class's target
  is the example's weight ``w_i`` (1 for real images, ``w < 1`` for down-weighted synthetic
  ones) instead of 1:
  ``t_ic = w_i [c = y_i]`` and
  ``L_BCE = (1/N) sum_i sum_c -( t_ic log sigma(z_ic) + (1 - t_ic) log(1 - sigma(z_ic)) )``.
  Summing over classes (rather than averaging over ``N x C`` as torch's default
  ``reduction="mean"``) keeps the gradient scale of the true class equal to CE's, so the
  same learning rate serves both losses.
- Binary cross-entropy on softmax outputs (``kind="bce_softmax"``; the seed 000 code, which
  follows PuzzleMix, trains every row, vanilla included, with ``BCELoss(softmax(z), t)``):
  ``L = (1/(N C)) sum_i sum_c -( t_ic log p_ic + (1 - t_ic) log(1 - p_ic) )``,
  ``p = softmax(z)``, averaged over ``N x C`` exactly as torch's ``reduction="mean"`` (each
  log is clamped at -100 as torch does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSSES = ("ce", "bce", "bce_softmax")


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN/inf. Raised by every trainer in augdiff (classifiers, EDM);
    the message names the step, what was in the batch and the last good checkpoint."""


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example ``-sum_c t_c log softmax(z)_c`` (``targets`` may be soft). Shape ``[N]``."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(targets * logp, axis=-1)


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example ``sum_c -(t_c log sigma(z_c) + (1 - t_c) log(1 - sigma(z_c)))``. Shape ``[N]``.

    Uses ``log sigma(z) = -softplus(-z)`` and ``log(1 - sigma(z)) = -softplus(z)`` for stability.
    """
    z = logits.astype(jnp.float32)
    return jnp.sum(targets * jax.nn.softplus(-z) + (1.0 - targets) * jax.nn.softplus(z), axis=-1)


def softmax_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example ``(1/C) sum_c -(t_c log p_c + (1 - t_c) log(1 - p_c))``, ``p = softmax(z)``,
    logs clamped at -100 (torch ``BCELoss``). Shape ``[N]``; its batch mean is torch's
    ``BCELoss()(softmax(z), t)``."""
    z = logits.astype(jnp.float32)
    logp = jnp.maximum(jax.nn.log_softmax(z, axis=-1), -100.0)
    log1mp = jnp.maximum(jnp.log1p(-jax.nn.softmax(z, axis=-1)), -100.0)
    return -jnp.mean(targets * logp + (1.0 - targets) * log1mp, axis=-1)


def per_example_loss(kind: str, logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The per-example loss ``[N]`` of ``kind`` (one of :data:`LOSSES`) against dense targets."""
    if kind == "ce":
        return softmax_cross_entropy(logits, targets)
    if kind == "bce":
        return sigmoid_binary_cross_entropy(logits, targets)
    if kind == "bce_softmax":
        return softmax_binary_cross_entropy(logits, targets)
    raise ValueError(f"unknown loss kind {kind!r}; choose from {LOSSES}")


def scaled_targets(labels: jax.Array, weights: jax.Array, num_classes: int) -> jax.Array:
    """Label-scaling targets ``t_ic = w_i [c = y_i]``."""
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * weights[:, None]


def classification_loss(
    kind: str,
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean loss over the (unmasked) batch.

    ``kind="ce"``: softmax cross-entropy against ``targets`` (the weights are not used).
    ``kind="bce"`` / ``"bce_softmax"``: sigmoid / softmax BCE against
    ``targets * weights[:, None]`` -- the label-scaling targets when ``targets`` is one-hot
    (also applied to mixed targets).
    """
    if kind not in LOSSES:
        raise ValueError(f"unknown loss kind {kind!r}; choose from {LOSSES}")
    if kind != "ce" and weights is not None:
        targets = targets * weights[:, None].astype(jnp.float32)
    per_example = per_example_loss(kind, logits, targets)
    if mask is None:
        return jnp.mean(per_example)
    mask = mask.astype(jnp.float32)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Per-example 1.0 where the label is among the ``k`` highest logits (ties broken by index).

    Computed as ``#{c : z_c > z_y} + #{c < y : z_c = z_y} < k`` -- the rank of the true class --
    which needs no sort and is exact for ``k >= num_classes``.
    """
    z = logits.astype(jnp.float32)
    zy = jnp.take_along_axis(z, labels[:, None].astype(jnp.int32), axis=-1)
    idx = jnp.arange(z.shape[-1])[None, :]
    rank = jnp.sum(z > zy, axis=-1) + jnp.sum((z == zy) & (idx < labels[:, None]), axis=-1)
    return (rank < k).astype(jnp.float32)
