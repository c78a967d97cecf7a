"""Diffusion Inversion on a class-conditional EDM (seed 003's method as an analog on the
shipped CIFAR-10 generator, not on Stable Diffusion), ``augdiff generate``::

    augdiff generate --config configs/edm_diffinv_cifar10.py[:variant] --config.workdir=DIR

Stage 1 inverts every real image of the subset into a 10-d vector in place of the generator's
one-hot class input (AdamW, the paper's constant lr 0.03 and weight decay 0.01; ``steps`` with
snapshots at ``save_steps``, the paper's 1K/2K/3K checkpoints scaled to a 10-d vector). Stage 2
samples the paper's variant grid: snapshots × guidance weights w × 5 same-class partners,
ĉ = 0.9 c_i + 0.1 c_j + 0.1 ε, mean-vector CFG (1 + w) D(ĉ) − w D(ū), EDM's Heun sampler.
The guidance weights are the paper's grid scaled down (w ∈ {0.5, 1, 2} instead of {2, 3, 4},
i.e. CFG scales 1.5–3 instead of 3–5): a 16² EDM conditioned on 10 numbers, not a 77×768 text
encoder; ``--config.sampling.guidance`` sets them.

Variants: ``inverted`` (default; Diffusion Inversion's perturbation), ``class`` (plain
class-conditional sampling under the same CFG, ū = the mean one-hot), ``embed_mixup``,
``embed_cutmix``, ``embed_cutmix+dropout`` (seed 001's augmented conditioning applied to the
inverted vectors instead of the perturbation: a same-class partner, Beta(1, 1), Dropout 0.4),
``smoke`` (2 images per class, 4 inversion steps, 2 Heun steps).
"""

from __future__ import annotations

import ml_collections

from augdiff.config import SHIPPED_GENERATOR
from augdiff.configs.common import data_config

VARIANTS = ("inverted", "class", "embed_mixup", "embed_cutmix", "embed_cutmix+dropout", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "inverted"
    if variant not in VARIANTS:
        raise ValueError(f"edm_diffinv_cifar10: unknown variant {variant!r}; choose one of "
                         f"{', '.join(VARIANTS)}")
    c = ml_collections.ConfigDict()
    c.method = "edm_diffinv"
    c.workdir = f"runs/edm_diffinv_{variant}"
    c.store_dir = ""  # default: <workdir>/store
    c.seed = 0
    c.stages = "12"  # "1" inversion, "2" sampling
    c.generator = SHIPPED_GENERATOR  # a class-conditional EDM (train-diffusion workdir)
    c.conditioning = "class" if variant == "class" else "inverted"
    c.augment = variant if variant.startswith("embed") else "none"
    c.data = data_config(per_class=50)
    c.data.image_size = 16  # the shipped generator's resolution

    c.inversion = ml_collections.ConfigDict()
    c.inversion.dir = ""  # default: <workdir>/inversion (another row's, to share one)
    c.inversion.init = "torch_linear"  # torch_linear (the code's U(±1/√fan_in)) | class
    c.inversion.fan_in = 100
    c.inversion.learning_rate = 0.03
    c.inversion.weight_decay = 1e-2
    c.inversion.steps = 90  # ~15 min for 500 images on 2 CPU cores
    c.inversion.save_steps = (30, 60, 90)
    c.inversion.group_size = 100  # images optimised at once

    c.sampling = ml_collections.ConfigDict()
    c.sampling.checkpoints = (30, 60, 90)  # inversion snapshots sampled (1/3, 2/3, 1)
    c.sampling.guidance = (0.5, 1.0, 2.0)  # w, read in guidance_form
    c.sampling.guidance_form = "paper"  # paper: (1+w) D_c − w D_u | diffusers: D_u + w (D_c − D_u)
    c.sampling.num_partners = 5
    c.sampling.interpolation_strength = 0.1
    c.sampling.noise_scale = 0.1
    c.sampling.alpha = 1.0  # Beta(α, α) of the embedding mixes
    c.sampling.dropout_p = 0.4  # seed 001's Dropout p
    c.sampling.images_per_vector = 1  # one image per real image: an equal-sized dataset
    c.sampling.num_steps = 10  # Heun N (NFE 19, ×2 for CFG)
    c.sampling.batch_size = 100
    if variant == "smoke":
        c.conditioning, c.augment = "inverted", "none"
        c.data.per_class = 2
        c.inversion.steps = 4
        c.inversion.save_steps = (2, 4)
        c.inversion.group_size = 8
        c.sampling.checkpoints = (2, 4)
        c.sampling.num_steps = 2
        c.sampling.batch_size = 8
    return c
