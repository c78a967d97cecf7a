"""Diffusion Inversion for MedMNIST-like data: 28² grayscale images generated at 128².

    augdiff generate --config configs/diffinv_medmnist.py --config.data.path=MEDMNIST_FOLDER \
        --config.model.path=SD15_DIR

Images (1 channel, 28²) are replicated to RGB and upsampled to 128² for the VAE; generated
images are stored back at 28² grayscale (ITU-R 601 luma). Point ``data.path`` at an image
folder or zip of a MedMNIST subset (``<root>/train/<class>/*.png``).

Variants: ``default``; ``smoke`` (tiny random-weight SD on CIFAR-10 converted to 28² grayscale
as a stand-in, 16² generation, a few steps; CPU-sized).
"""

from __future__ import annotations

import ml_collections

from augdiff.configs import diffinv_cifar10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    base = diffinv_cifar10
    c = base.base_config("medmnist")
    c.data.path = ""  # a MedMNIST image folder or zip: --config.data.path=...
    c.data.image_size = 28
    c.data.channels = 1
    c.inversion.resolution = 128
    # The code learns 500 vectors per class, one class per group: nn.Linear(500, ·) init
    # (±1/√500) and the group mean is the class mean.
    c.inversion.init_fan_in = 500
    c.sampling.uncond = "global"  # the paper; "class" is the code's per-class mean
    if variant == "default":
        return c
    if variant == "smoke":
        base.smoke(c)
        c.data.path = "../shared/data/cifar10-jpeg.zip"
        return c
    raise ValueError(f"diffinv_medmnist: unknown variant {variant!r}; choose default or smoke")
