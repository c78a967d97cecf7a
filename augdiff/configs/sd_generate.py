"""Plain Stable Diffusion generation into a synthetic store (``augdiff generate``).

Variants: ``smoke`` (tiny random-weight SD made on the fly, 2 classes x 2 text2img images of the
real CIFAR-10 zip, CPU), ``img2img_smoke`` (the same for img2img), ``text2img`` / ``img2img``
(SD-1.5 from a local folder or the hub cache, 512² generation resized to 32²).
"""

from __future__ import annotations

import ml_collections

from augdiff.configs.common import data_config, mesh_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "text2img"
    if variant not in ("smoke", "img2img_smoke", "text2img", "img2img"):
        raise ValueError(f"sd_generate: unknown variant {variant!r}")
    c = ml_collections.ConfigDict()
    c.method = "sd"
    c.workdir = f"/tmp/augdiff/sd_generate_{variant}"
    c.store_dir = ""  # default: <workdir>/synthetic
    c.seed = 0

    c.data = data_config()

    c.mesh = mesh_config()

    c.sd = ml_collections.ConfigDict()
    c.sd.model = "runwayml/stable-diffusion-v1-5"  # local diffusers folder or cached hub id
    c.sd.tiny = False  # with model='' build a tiny random-weight model in <workdir>/tiny_sd
    c.sd.dtype = "bfloat16"
    c.sd.variant = ""  # weights variant, e.g. "fp16" or "ema"
    c.sd.model_config = ""  # a single-file path's diffusers config folder
    c.sd.mode = "img2img" if variant.startswith("img2img") else "text2img"
    c.sd.prompt_template = "a photo of a {}"
    c.sd.negative_prompt = ""
    c.sd.guidance = 7.5
    c.sd.steps = 50
    c.sd.sampler = "dpmpp_2m"
    c.sd.eta = 0.0
    c.sd.strength = 0.5
    c.sd.resolution = 512
    c.sd.batch_size = 16
    c.sd.num_per_class = 500
    c.sd.num_per_image = 1
    c.sd.max_images = 0  # img2img: 0 = every real image of the subset

    if variant in ("smoke", "img2img_smoke"):
        c.sd.model = ""
        c.sd.tiny = True
        c.sd.dtype = "float32"
        c.sd.steps = 3
        c.sd.sampler = "ddim"
        c.sd.resolution = 16
        c.sd.batch_size = 4
        c.sd.num_per_class = 2
        c.sd.max_images = 4
        c.sd.num_per_image = 1
        c.data.per_class = 2
    return c
