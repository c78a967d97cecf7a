"""augdiff: diffusion-based data augmentation in JAX/Flax.

Public modules (import the ones you need; ``import augdiff`` itself loads nothing heavy):

- :mod:`augdiff.data`: real sources (folder / zip / TFDS), subsets, the synthetic store,
  ``MixedLoader`` with ρ(t) schedules, on-device augmentation, IFS fractals.
- :mod:`augdiff.models`: classifiers and the DDPM++ ``SongUNet``.
- :mod:`augdiff.train`: classifier training (jitted sharded steps), losses, checkpoints.
- :mod:`augdiff.edm`: EDM formulation, Heun / Euler / stochastic samplers, DM/SDA/CASD.
- :mod:`augdiff.sd`: Stable Diffusion loading, samplers, guidance, unCLIP, pipelines.
- :mod:`augdiff.methods`: DiffuseMix (hybrids, fractals, semantic blending), augmented
  conditioning, Diffusion Inversion.
- :mod:`augdiff.metrics`: FID, KID, PRDC, SSIM, replication; feature extractors.
- :mod:`augdiff.analysis`: CLIP-embedding PCA plots.
- :mod:`augdiff.distributed`: mesh, sharding rules, multi-process helpers.
- :mod:`augdiff.runner`: ``augdiff run`` (stages, bookkeeping, ``report.md``).
"""

__version__ = "0.1.0"
