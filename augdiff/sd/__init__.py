"""Stable Diffusion core in JAX/Flax: noise schedules, samplers, guidance and pipelines.

Submodules are imported explicitly (``augdiff.sd.schedulers``, ``augdiff.sd.guidance``, ...);
this package file stays import-free so that importing one piece never loads the others.
"""
