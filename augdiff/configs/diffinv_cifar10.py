"""Diffusion Inversion on CIFAR-10/100 at 128² (Zhou et al. 2023), ``augdiff generate``.

    augdiff generate --config configs/diffinv_cifar10.py --config.model.path=SD15_DIR
    augdiff train --config configs/classify_cifar10.py --config.synthetic.path=<workdir>/synthetic

Stage 1 learns a 5-token conditioning tensor per training image (SD-1.x text width 768) at 128²
(16² latents), AdamW lr 0.03, 3K steps with checkpoints at 1K/2K/3K, 64 images optimised at
once, starting from PyTorch's default ``nn.Linear`` init (±0.1 for the code's groups of 100);
stage 2 samples the paper's 45 variants per vector = 3 checkpoints (1K/2K/3K) × 3 guidance
weights w ∈ {2, 3, 4} × 5 same-class partners, each ĉ = 0.9 c_i + 0.1 c_j + 0.1 ε, with 100 PNDM
steps (SD-1.4's default scheduler) against the mean of all learned vectors (App. B.1, B.2.2).
Images are stored at the data resolution (32²).

Guidance: ``sampling.guidance_form='paper'`` reads w as the paper's ε̂ = (1 + w) ε_c − w ε_u, so
w ∈ {2, 3, 4} are UNet CFG scales 3, 4, 5; ``'diffusers'`` reads w as the original code's
``guidance_scale`` (ε_u + w (ε_c − ε_u)), CFG scales 2, 3, 4. ``sampling.uncond``: ``global``
(paper, the mean of all vectors) or ``group`` / ``class`` (the code's mean of one group).

Variants: ``default`` (CIFAR-10), ``cifar100`` (the same recipe on a CIFAR-100 image folder,
``data.path`` to be given), ``smoke`` (tiny random-weight SD made in the workdir, 2 images per
class, 4 inversion steps, 2 variants, 2 sampling steps at 16²; CPU-sized).
"""

from __future__ import annotations

import ml_collections

from augdiff.configs.common import data_config, mesh_config


def base_config(name: str) -> ml_collections.ConfigDict:
    """Every field of a Diffusion Inversion experiment, at the paper's values (128²)."""
    c = ml_collections.ConfigDict()
    c.method = "diffinv"
    c.workdir = f"runs/diffinv_{name}"
    c.store_dir = ""  # default: <workdir>/synthetic
    c.seed = 0
    c.stages = "12"  # which stages to run: "1", "2" or "12"

    c.data = data_config()

    c.mesh = mesh_config()

    c.model = ml_collections.ConfigDict()
    c.model.path = "CompVis/stable-diffusion-v1-4"  # local diffusers folder or cached hub id
    c.model.tiny = False  # with path='' make a tiny random-weight SD in the workdir
    c.model.dtype = "bfloat16"
    c.model.variant = ""  # weights variant, e.g. "fp16" or "ema"
    c.model.config = ""  # a single-file path's diffusers config folder

    c.inversion = ml_collections.ConfigDict()
    c.inversion.resolution = 128  # generation resolution (latents = resolution / 8)
    c.inversion.num_tokens = 5
    c.inversion.init = "torch_linear"  # torch_linear (code) | empty | class_prompt | random
    c.inversion.init_fan_in = 100  # torch_linear: U(±1/sqrt(fan_in)), the code's group size
    c.inversion.prompt_template = "a photo of a {}"  # for init='class_prompt'
    c.inversion.learning_rate = 0.03
    c.inversion.weight_decay = 1e-2
    c.inversion.steps = 3000
    c.inversion.save_steps = (1000, 2000, 3000)
    c.inversion.use_step = 0  # the checkpoint whose vectors stage 2 uses; 0 = steps
    c.inversion.batch_size = 64  # images optimised at once (sharded over the devices)
    c.inversion.chunk = 50  # steps per jitted call (progress granularity)
    c.inversion.max_images = 0  # 0 = every image of the data subset

    c.sampling = ml_collections.ConfigDict()
    c.sampling.steps = 100
    c.sampling.sampler = "pndm"  # SD-1.4's default PNDMScheduler (PLMS, skip_prk_steps)
    c.sampling.checkpoints = (1000, 2000, 3000)  # stage-1 steps whose vectors are sampled
    c.sampling.guidance_scales = (2.0, 3.0, 4.0)  # w, read in guidance_form
    c.sampling.guidance_form = "paper"  # paper: (1+w)ε_c − wε_u | diffusers: ε_u + w(ε_c − ε_u)
    c.sampling.num_partners = 5  # same-class partners per (checkpoint, w): 3·3·5 = 45 variants
    c.sampling.interpolation_strength = 0.1  # s of (1 − s) c_i + s c_j (0 = off)
    c.sampling.noise_scale = 0.1  # λ of ĉ + λε, after the interpolation (0 = off)
    c.sampling.uncond = "global"  # global (paper) | group | class (the code's group mean)
    c.sampling.batch_size = 32
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Tiny random-weight SD, a handful of images, a few steps: seconds on a CPU."""
    c.workdir = c.workdir + "_smoke"
    c.model.path = ""
    c.model.tiny = True
    c.model.dtype = "float32"
    c.data.per_class = 1
    c.inversion.resolution = 16
    c.inversion.steps = 4
    c.inversion.save_steps = (2, 4)
    c.inversion.batch_size = 8
    c.inversion.chunk = 2
    c.sampling.steps = 2
    c.sampling.checkpoints = (2, 4)
    c.sampling.guidance_scales = (2.0, 3.0)
    c.sampling.num_partners = 1  # 2 checkpoints × 2 w × 1 partner = 4 variants per vector
    c.sampling.batch_size = 8
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    if variant == "default":
        return base_config("cifar10")
    if variant == "cifar100":
        c = base_config("cifar100")
        c.data.path = ""  # a CIFAR-100 image folder or zip: --config.data.path=...
        return c
    if variant == "smoke":
        return smoke(base_config("cifar10"))
    raise ValueError(
        f"diffinv_cifar10: unknown variant {variant!r}; choose default, cifar100 or smoke"
    )
