"""The four published methods, composed from augdiff's shared parts, and their registry.

- ``diffusemix`` (driver) with ``edits`` (both editors), ``hybrids`` / ``semantic`` / ``shb``
  (hybrid images) and ``online`` (pairs and generators made on device while a classifier
  trains): DiffuseMix and its single-prompt analysis.
- ``augcond``: augmented conditioning of an unCLIP-style model on CLIP image embeddings.
- ``inversion``: Diffusion Inversion (per-image learned conditioning vectors).
CASD lives with the EDM core in ``augdiff.edm``.

:data:`METHODS` names the module behind each ``config.method`` of ``augdiff generate``; each
exposes ``generate(config) -> dict``. :func:`get_method` imports one on demand, so one method
never loads another's dependencies.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from augdiff.config import ConfigError

METHODS = {
    "sd": "augdiff.sd.generate",
    "diffusemix": "augdiff.methods.diffusemix",
    "augcond": "augdiff.methods.augcond",
    "diffinv": "augdiff.methods.inversion",
}
"""``config.method`` → the module whose ``generate(config)`` makes that method's store."""


def get_method(name: str) -> ModuleType:
    """The generation module of method ``name`` (imported now); a ``ConfigError`` naming the
    valid methods when ``name`` is none of them."""
    if name not in METHODS:
        raise ConfigError(f"config.method must be one of {sorted(METHODS)}, got {name!r}")
    return importlib.import_module(METHODS[name])
