"""Replication measures: does a generator copy its training images?

Following the memorisation analysis of seed 004 (Table 3: SSIM of each generated image to its
closest training image), for every generated image g we find its nearest training image
t*(g) = argmin_t ‖φ(g) − φ(t)‖₂, either in the extractor's feature space φ (``nn_by="feature"``,
the default) or in pixel space (``nn_by="pixel"``: φ = the flattened uint8 image), and report

- the nearest-training-neighbour distance ‖φ(g) − φ(t*(g))‖₂ (mean, median, min);
- SSIM(g, t*(g)) (Wang et al. 2004, :mod:`augdiff.metrics.ssim`; mean, max);
- the share of near-copies: the fraction of generated images with SSIM(g, t*(g)) above a
  threshold (default 0.5).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from augdiff.metrics.prdc import nearest_neighbours
from augdiff.metrics.ssim import ssim


def replication(
    gen_images: np.ndarray,
    train_images: np.ndarray,
    gen_features: np.ndarray | jax.Array | None = None,
    train_features: np.ndarray | jax.Array | None = None,
    *,
    nn_by: str = "feature",
    threshold: float = 0.5,
    batch_size: int = 256,
    mesh: Mesh | None = None,
) -> dict[str, object]:
    """Nearest-training-neighbour distances and SSIMs of generated images (module docstring).

    ``gen_images`` [M, H, W, C] and ``train_images`` [N, H, W, C] are uint8. With
    ``nn_by="feature"``, ``gen_features`` [M, D] and ``train_features`` [N, D] are required.
    Returns summary floats plus per-image arrays ``nn_index``, ``nn_distance`` and ``ssim``.
    """
    gen_images = np.asarray(gen_images)
    train_images = np.asarray(train_images)
    if gen_images.ndim != 4 or gen_images.shape[1:] != train_images.shape[1:]:
        raise ValueError(
            f"replication: images must be NHWC of one size, got {gen_images.shape} and "
            f"{train_images.shape}"
        )
    if nn_by == "feature":
        if gen_features is None or train_features is None:
            raise ValueError("replication: nn_by='feature' needs gen_features and train_features")
        q, r = gen_features, train_features
    elif nn_by == "pixel":
        q = gen_images.reshape(len(gen_images), -1).astype(np.float32)
        r = train_images.reshape(len(train_images), -1).astype(np.float32)
    else:
        raise ValueError(f"replication: nn_by must be 'feature' or 'pixel', got {nn_by!r}")
    if len(q) != len(gen_images) or len(r) != len(train_images):
        raise ValueError("replication: features and images disagree in number of rows")
    d2, idx = nearest_neighbours(q, r, 1, mesh=mesh)
    nn_idx = idx[:, 0]
    nn_dist = np.sqrt(np.maximum(d2[:, 0], 0.0))
    scores = np.concatenate([
        np.asarray(ssim(gen_images[s:s + batch_size], train_images[nn_idx[s:s + batch_size]]))
        for s in range(0, len(gen_images), batch_size)
    ])
    return {
        "nn_by": nn_by,
        "nn_distance_mean": float(nn_dist.mean()),
        "nn_distance_median": float(np.median(nn_dist)),
        "nn_distance_min": float(nn_dist.min()),
        "ssim_mean": float(scores.mean()),
        "ssim_max": float(scores.max()),
        "near_copy_threshold": float(threshold),
        "near_copy_share": float((scores > threshold).mean()),
        "nn_index": nn_idx,
        "nn_distance": nn_dist,
        "ssim": scores,
    }
