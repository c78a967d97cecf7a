"""Augmented conditioning on CIFAR-10 (Chen et al. 2025, arXiv 2502.04475), ``augdiff generate``.

    augdiff generate --config configs/augcond_cifar10.py:fewshot --config.model.path=DIR
    augdiff train --config configs/augcond_cifar10.py:fewshot_train \
        --config.synthetic.path=<workdir>/synthetic

Variants
- ``fewshot`` (default): 10 real images per class, 100 generated per class with
  Embed-CutMix-Dropout (p = 0.4), CFG 10.0 (the paper's few-shot scale), 30 DDIM steps, at the
  unCLIP model's 768² resolution stored at 32².
- ``longtail``: CIFAR-10-LT (imbalance factor 100, head class 500), generate exactly what brings
  every class to the head count (ImageNet-LT protocol), CFG 2.0 (large-scale generation).
- ``fewshot_smoke`` / ``longtail_smoke`` (``smoke`` = ``fewshot_smoke``): the same recipes on a
  tiny random-weight unCLIP model made in the workdir, 2 sampling steps at 16², CPU-sized.
- ``fewshot_train`` / ``longtail_train`` (and ``*_smoke_train``): ``augdiff train`` configs for
  the classifier side, real + synthetic with 50/50 batches (``synthetic.schedule`` constant 0.5).
"""

from __future__ import annotations

import os

import ml_collections

from augdiff.configs import classify_cifar10
from augdiff.configs.common import data_config, mesh_config

VARIANTS = (
    "fewshot",
    "longtail",
    "smoke",
    "fewshot_smoke",
    "longtail_smoke",
    "fewshot_train",
    "longtail_train",
    "fewshot_smoke_train",
    "longtail_smoke_train",
)



def _data(c: ml_collections.ConfigDict, regime: str) -> None:
    c.data = data_config(
        per_class=10 if regime == "fewshot" else 500,
        imbalance_factor=1.0 if regime == "fewshot" else 100.0,
    )


def generation_config(regime: str, smoke: bool) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "augcond"
    c.workdir = f"runs/augcond_cifar10_{regime}{'_smoke' if smoke else ''}"
    c.store_dir = ""  # default: <workdir>/synthetic
    c.seed = 0
    _data(c, regime)

    c.mesh = mesh_config()

    c.model = ml_collections.ConfigDict()
    c.model.path = "stabilityai/stable-diffusion-2-1-unclip"  # local folder or cached hub id
    c.model.tiny = False  # with path='' make a tiny random-weight unCLIP model in the workdir
    c.model.dtype = "bfloat16"
    c.model.variant = ""  # weights variant, e.g. "fp16" or "ema"
    c.model.config = ""  # a single-file path's diffusers config folder

    c.augcond = ml_collections.ConfigDict()
    c.augcond.augmentation = "embed_cutmix+dropout"  # mix (pixel_/embed_ cutmix|mixup) + dropout
    c.augcond.alpha = 1.0  # Beta(alpha, alpha) of the mix coefficient
    c.augcond.dropout_p = 0.4
    c.augcond.dropout_rescale = True  # inverted dropout e·m/(1−p); False: plain masking e·m
    c.augcond.embed_cutmix_mode = "block"  # contiguous block of dims; "subset": random dims
    c.augcond.prompt_template = "a photo of a {}"
    c.augcond.guidance = 10.0 if regime == "fewshot" else 2.0
    c.augcond.steps = 30
    c.augcond.sampler = "ddim"
    c.augcond.noise_level = 0  # unCLIP image-embedding noise augmentation level (0 = off)
    c.augcond.resolution = 768
    c.augcond.batch_size = 16
    c.augcond.count_mode = "per_class" if regime == "fewshot" else "balance"
    c.augcond.num_per_class = 100  # per_class mode
    c.augcond.multiple = 1  # multiple mode: g_c = multiple * n_c
    c.augcond.balance_to = 0  # balance mode target; 0 = the head-class count

    if smoke:
        c.model.path = ""
        c.model.tiny = True
        c.model.dtype = "float32"
        c.augcond.steps = 2
        c.augcond.resolution = 16
        c.augcond.batch_size = 8
        c.augcond.num_per_class = 2
        c.data.per_class = 3 if regime == "fewshot" else 4
        c.data.imbalance_factor = 1.0 if regime == "fewshot" else 4.0
    return c


def training_config(regime: str, smoke: bool) -> ml_collections.ConfigDict:
    classify = classify_cifar10
    c = classify.base_config()
    if smoke:
        classify.smoke_recipe(c)
    gen = generation_config(regime, smoke)
    c.data = gen.data
    c.data.train_split = "train"
    c.data.test_split = "test"
    c.data.num_workers = 0
    c.workdir = gen.workdir + "_train"
    c.synthetic.path = os.path.join(gen.workdir, "synthetic")
    c.synthetic.schedule.kind = "constant"
    c.synthetic.schedule.rho = "0.5"  # 50/50 real/synthetic batches (paper §4)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "fewshot"
    if variant not in VARIANTS:
        raise ValueError(f"augcond_cifar10: unknown variant {variant!r}; choose one of {VARIANTS}")
    if variant == "smoke":
        variant = "fewshot_smoke"
    regime = variant.split("_")[0]
    smoke = "_smoke" in variant
    if variant.endswith("_train"):
        return training_config(regime, smoke)
    return generation_config(regime, smoke)
