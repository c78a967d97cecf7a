"""The four published methods, composed from augdiff's shared parts, and their registry.

- ``diffusemix`` (driver) with ``edits`` (both editors), ``hybrids`` / ``semantic`` / ``shb``
  (hybrid images) and ``online`` (pairs and generators made on device while a classifier
  trains): DiffuseMix and its single-prompt analysis.
- ``augcond``: augmented conditioning of an unCLIP-style model on CLIP image embeddings.
- ``inversion`` (stage 1: per-image learned conditioning vectors) and ``diffinv`` (stage 2:
  sampling from perturbed vectors; the command): Diffusion Inversion.
CASD lives with the EDM core in ``augdiff.edm``.

:mod:`augdiff.methods.registry` maps each ``config.method`` of ``augdiff generate`` and of
``augdiff run``'s ``generate`` stage to its module.
"""
