"""Diffusion Inversion at 256² for STL-10 / Imagenette-like data (96²-160² images).

    augdiff generate --config configs/diffinv_stl10.py --config.model.path=SD15_DIR

STL-10 comes from TFDS (``stl10``, 96², 5,000 labelled training images); an Imagenette-like
image folder works with ``--config.data.tfds_name= --config.data.path=DIR``. Stage 1 at 256²
(32² latents), 5 tokens, AdamW lr 0.03, 3K steps (checkpoints 1K/2K/3K); stage 2 as CIFAR.

Variants: ``default``; ``smoke`` (tiny random-weight SD on CIFAR-10 images upsampled to 48²
standing in for STL-10, 32² generation, a few steps; CPU-sized).
"""

from __future__ import annotations

import ml_collections

from augdiff.configs import diffinv_cifar10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    base = diffinv_cifar10
    c = base.base_config("stl10")
    c.data.path = ""
    c.data.tfds_name = "stl10"
    c.data.image_size = 96
    c.inversion.resolution = 256
    c.inversion.batch_size = 32
    c.sampling.batch_size = 16
    if variant == "default":
        return c
    if variant == "smoke":
        base.smoke(c)
        c.data.path = "../shared/data/cifar10-jpeg.zip"
        c.data.tfds_name = ""
        c.data.image_size = 48
        c.inversion.resolution = 32
        return c
    raise ValueError(f"diffinv_stl10: unknown variant {variant!r}; choose default or smoke")
