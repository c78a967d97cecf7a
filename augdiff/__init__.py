"""augdiff: diffusion-based data augmentation in JAX/Flax.

Public modules (import the ones you need; ``import augdiff`` itself loads nothing heavy),
from the ground floor up (a module imports only from its own floor or lower ones):

- :mod:`augdiff.config`: loading, resolving and deriving configs; :mod:`augdiff.files`:
  atomic writes; :mod:`augdiff.configs`: the shipped experiment and command configs;
  :mod:`augdiff.distributed`: mesh, sharding rules, multi-process helpers;
  :mod:`augdiff.models`: classifiers and the DDPM++ ``SongUNet``.
- :mod:`augdiff.data`: real sources (folder / zip / TFDS), subsets, the synthetic store and
  its export (image folder, Hugging Face imagefolder, WebDataset),
  ``MixedLoader`` with ρ(t) schedules, on-device augmentation, IFS fractals.
- :mod:`augdiff.train`: classifier training (jitted sharded steps), losses, checkpoints.
- :mod:`augdiff.sd`: Stable Diffusion loading, samplers, guidance, unCLIP, pipelines.
- :mod:`augdiff.edm`: EDM formulation, Heun / Euler / stochastic samplers, DM/SDA/CASD.
- :mod:`augdiff.metrics`: FID, KID, PRDC, SSIM, replication; feature extractors.
- :mod:`augdiff.methods`: DiffuseMix (hybrids, fractals, semantic blending), augmented
  conditioning, Diffusion Inversion, online generation; the method registry.
- :mod:`augdiff.analysis`: CLIP-embedding PCA, seed 000's Fig. 3 and SHB measurements.
- :mod:`augdiff.pipeline`: ``augdiff run`` (stages, bookkeeping, table experiments,
  ``report.md``); :mod:`augdiff.aot`: ``augdiff compile`` (every program of an experiment
  compiled ahead of time for a TPU topology and measured per chip).
- :mod:`augdiff.commands` and :mod:`augdiff.cli`: the ``augdiff`` command line.
"""

__version__ = "0.1.0"
