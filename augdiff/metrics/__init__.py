"""Fidelity, diversity and replication metrics for synthetic data, over pluggable features.

- :mod:`augdiff.metrics.fid`: FID (Fréchet distance of fitted Gaussians) and KID (unbiased
  MMD² with the cubic polynomial kernel).
- :mod:`augdiff.metrics.prdc`: precision, recall, density, coverage (Naeem et al. 2020) and
  blockwise k-nearest-neighbour search.
- :mod:`augdiff.metrics.ssim`: SSIM (Wang et al. 2004).
- :mod:`augdiff.metrics.replication`: nearest-training-image distances, SSIMs, near copies.
- :mod:`augdiff.metrics.features`: extractors ``inception_v3`` / ``clip`` / ``classifier`` /
  ``reference`` (the reference classifier of :mod:`augdiff.train.reference`, with its texture
  block).
- :mod:`augdiff.metrics.inception`: the FID Inception-v3 in Flax and its weight loader.
- :mod:`augdiff.metrics.evaluate`: ``evaluate_store(config)`` behind ``augdiff evaluate``.
"""

from augdiff.metrics.fid import (
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    kid,
    mmd2_unbiased,
)
from augdiff.metrics.prdc import nearest_neighbours, prdc
from augdiff.metrics.replication import replication
from augdiff.metrics.ssim import ssim

__all__ = [
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "kid",
    "mmd2_unbiased",
    "nearest_neighbours",
    "prdc",
    "replication",
    "ssim",
]
