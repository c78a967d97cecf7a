"""The generation methods by name: ``config.method`` → the module that makes its store.

Each module exposes ``generate(config) -> dict`` (a summary naming the store it wrote);
``augdiff generate`` and the ``generate`` stage of ``augdiff run`` (``generator.kind =
'method'``) dispatch through :func:`get_method`.
"""

from __future__ import annotations

from types import ModuleType

from augdiff.config import ConfigError
from augdiff.methods import augcond, diffinv, diffusemix, edm_inversion
from augdiff.sd import generate as sd_generate

METHODS: dict[str, ModuleType] = {
    "sd": sd_generate,  # plain Stable Diffusion text2img / img2img
    "diffusemix": diffusemix,  # seed 000
    "augcond": augcond,  # seed 001
    "diffinv": diffinv,  # seed 003
    "edm_diffinv": edm_inversion,  # seed 003 (and 001) as an analog on a class-conditional EDM
}


def get_method(name: str) -> ModuleType:
    """The generation module of method ``name``; a ``ConfigError`` naming the valid methods
    when ``name`` is none of them."""
    if name not in METHODS:
        raise ConfigError(f"config.method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]
