"""The four published methods, composed from augdiff's shared parts.

- ``hybrids`` / ``semantic`` / ``diffusemix``: DiffuseMix and its single-prompt analysis.
- ``augcond``: augmented conditioning of an unCLIP-style model on CLIP image embeddings.
- ``inversion``: Diffusion Inversion (per-image learned conditioning vectors).
CASD lives with the EDM core in ``augdiff.edm``.
"""
