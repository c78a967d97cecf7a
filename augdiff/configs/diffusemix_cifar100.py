"""DiffuseMix on CIFAR-100 with PreActResNet18: every row of seed 000 Tables 1-2.

    augdiff generate --config configs/diffusemix_cifar100.py:<row> \
        --config.data.path=CIFAR100_DIR_OR_ZIP --config.diffusemix.model=IP2P_DIR
    augdiff train    --config configs/diffusemix_cifar100.py:<row> \
        --config.data.path=CIFAR100_DIR_OR_ZIP

One file holds both halves: ``diffusemix.*`` drives generation (InstructPix2Pix edits into
``<store_dir>/edits``, then offline hybrids into ``<store_dir>/hybrids``;
:mod:`augdiff.methods.diffusemix`), the rest is the seed 000 classifier recipe
(``configs/classify_cifar100.py``: PreActResNet18, SGD momentum 0.9, lr 0.1 /10 at epochs 100
and 200, weight decay 1e-4, batch 100, 300 epochs) whose ``synthetic.path`` follows
``store_dir`` (default ``<workdir>/store``), so ``train`` finds what ``generate`` wrote.

Generation defaults (DiffuseMix, Islam et al. 2024): InstructPix2Pix
(``timbrooks/instruct-pix2pix``), text guidance 4, image guidance 1.5, 100 Euler-ancestral
steps at 256², one prompt per image (seed 000's single-prompt setting: ``Autumn``;
``--config.diffusemix.prompts=all`` gives DiffuseMix's nine, ``"sunset|snowy"`` any subset).

Rows (variants) — seed 000 Tables 1-2, each from the paper's definition. Every row trains
with the same loss, ``loss.kind = 'bce_softmax'`` (BCE on softmax outputs, as the seed 000
code trains every row, vanilla included); label scaling changes only the targets.
- ``baseline`` (= ``dc``, Table 2's DC): DiffuseMix as published — deterministic concatenation
  (original top/left, generated bottom/right, per image, 2.375 px seam ramp at 32² = its
  20-point linspace at 256²), then ``C = 0.8 H + 0.2 F`` with one fractal drawn uniformly per
  image; Lsf 1.00; constant share 1:1 (originals and hybrids concatenated).
- ``vanilla``: real data only.
- ``dm_lin`` / ``dm_warm`` / ``dm_step``: ``baseline`` hybrids with the share schedules of
  eqs. 1-3 (ρ = t/T; warm-up w = 50; steps at t₁ = 100, t₂ = 200). The paper gives no w or
  t₁/t₂; these are the seed 000 code's values.
- ``hybrid_<a>_<b>`` (Table 1: 0.05_0.15, 0.10_0.20, 0.15_0.25, 0.20_0.30): ``baseline`` with
  the fractal share λ ~ U[a, b] per image (eq. 4), Lsf 1.00 (no label scaling).
- ``fractal_0.20_lsf1.00`` / ``fractal_0.20_lsf0.80``: the fractal blended into the ORIGINAL
  image, ``C = 0.8 I + 0.2 F`` (no generated content), target 1.00 / 0.80 (= 1 − λ).
- ``shb``: CLIP-guided semantic hybrid blending (§3.3) instead of concatenation, no fractal
  (set ``diffusemix.shb.clip`` to a Flax CLIP folder, e.g. openai/clip-vit-base-patch32);
  ``shb_fractal``: SHB then the baseline's 0.8/0.2 fractal blend (Fig. 2d).
- ``random``: random half-area rectangle masks (§4.5) in place of concatenation; the rest as
  ``baseline`` (fractal 0.2), so it differs from DC in the mask only.
- ``interval_<a>_<b>``: alias of ``hybrid_<a>_<b>``; ``ratio_<r>_<s>``: ``baseline`` at a
  constant real:synthetic ratio r:s.
- ``online``: concatenation masks redrawn every epoch (§4.6): only edits are stored; the
  trainer pairs each edit with its parent and mixes on device (``online.kind='diffusemix'``).
- ``nine``: ``baseline`` with DiffuseMix's nine prompts (the many-prompt follow-up).
- ``smoke``: CPU end-to-end on 20 images of the shared CIFAR-10 zip with a tiny random-weight
  InstructPix2Pix (made in the workdir), two prompts, a tiny PreActResNet for two epochs.

``diffusemix.fractal_path`` may name an image folder of fractals (as DiffuseMix loads its
set); otherwise the bank is ``fractal_bank_size`` procedural IFS fractals (not FractalDB).
"""

from __future__ import annotations

import ml_collections

from augdiff.configs import classify_cifar10

HYBRID_INTERVALS = ((0.05, 0.15), (0.10, 0.20), (0.15, 0.25), (0.20, 0.30))
ROWS = ("baseline", "vanilla", "dm_lin", "dm_warm", "dm_step",
        *(f"hybrid_{a:.2f}_{b:.2f}" for a, b in HYBRID_INTERVALS),
        "fractal_0.20_lsf1.00", "fractal_0.20_lsf0.80", "dc", "shb", "shb_fractal", "random",
        "random_patches", "online", "nine")
WARMUP_EPOCHS = 50  # w of eq. 2 (the seed 000 code's value; the paper gives none)
STEP_EPOCHS = (100, 200)  # t₁, t₂ of eq. 3 (the seed 000 code's values)
SINGLE_PROMPT = "Autumn"



def _generation() -> ml_collections.ConfigDict:
    g = ml_collections.ConfigDict()
    g.model = ""  # InstructPix2Pix folder / cached hub id (timbrooks/instruct-pix2pix)
    g.tiny = False  # with model = '': make a tiny random-weight model in the workdir
    g.dtype = "float32"  # bfloat16 on accelerators
    g.seed = -1  # generation seed; < 0 = config.seed
    g.editor = "ip2p"  # ip2p (InstructPix2Pix, DiffuseMix) | edm (SDEdit with an augdiff EDM)
    g.edm = ml_collections.ConfigDict()
    g.edm.workdir = ""  # an `augdiff train-diffusion` workdir (editor = 'edm')
    g.edm.sigma_start = "1.0"  # edit strength(s) σ_start, 'a|b' for several (the "prompts")
    g.edm.steps = 8  # Heun steps from σ_start to 0
    g.prompts = SINGLE_PROMPT  # 'all' = DiffuseMix's nine, or 'p1|p2|...'
    g.text_guidance = 4.0
    g.image_guidance = 1.5
    g.steps = 100
    g.sampler = "euler_ancestral"
    g.resolution = 256  # edits are made at resolution², stored at data.image_size
    g.batch_size = 16
    g.max_images = 0  # 0 = every real training image of the data subset
    g.edits_store = ""  # an existing edits store to adopt (no edit is made); '' = make edits
    g.shard_size = 256  # examples per store shard (a killed run loses at most one shard)
    g.black_threshold = 0.0  # an edit whose every pixel is <= this (in [0, 1]) is dropped
    g.write_hybrids = True  # offline hybrids into <store_dir>/hybrids (offline policy only)
    g.hybrid_batch_size = 64
    g.fractal_bank_size = 256
    g.fractal_path = ""  # an image folder of fractals (DiffuseMix's way); '' = procedural IFS
    g.hybrid = ml_collections.ConfigDict()
    # concat | random (one half-area rectangle, the paper) | patches (gdl_term's make_mask:
    # 1-5 rectangles covering about half) | original | semantic
    g.hybrid.mask = "concat"
    g.hybrid.orientation = "random"  # vertical | horizontal | random (per pair)
    g.hybrid.ramp = 2.375  # seam ramp in px: DiffuseMix's linspace(0, 1, 20) at 256² = 19 px
    g.hybrid.policy = "offline"  # offline: mask fixed per pair; online: redrawn per epoch
    g.hybrid.fractal = True  # DiffuseMix: every emitted image is 0.8·H + 0.2·F
    g.hybrid.lam = 0.2
    g.hybrid.lam_min = -1.0  # >= 0 with lam_max: λ ~ U[lam_min, lam_max]
    g.hybrid.lam_max = -1.0
    g.hybrid.label_scaling = False  # target 1 − λ (Lsf); the loss is loss.kind either way
    g.shb = ml_collections.ConfigDict()
    g.shb.clip = ""  # Flax CLIP folder / hub id for SHB
    g.shb.tiny = False  # with clip = '': a tiny random CLIP in the workdir
    g.shb.template = "a photo of a {}"
    g.shb.kernel_size = 5  # k of the mask blur, σ = k/3 (§3.4)
    g.shb.smoothing = "paper"  # paper: k taps, reflect | code: scipy gaussian_filter(σ = k/3)
    g.shb.percentile = 50.0  # τ = P50(S) (§3.4); the seed 000 code's default is 30
    g.shb.binary = False  # the code re-binarises the smoothed mask at 0.5 (use_binary_replace)
    g.shb.features = "crops"  # crops: CLIP embeddings of crops (the code) | tokens: patch tokens
    g.shb.crop = 32  # crop and stride at 256², scaled to the edit's resolution (15 × 15 map)
    g.shb.stride = 16
    g.keep_full_edits = False  # also store edits at their resolution (on for SHB when needed)
    return g


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "dc"
    base = classify_cifar10
    c = base.seed000_recipe(base.base_config())
    c.name = f"diffusemix_cifar100:{variant}"
    c.method = "diffusemix"
    c.workdir = f"runs/diffusemix_cifar100_{variant}"
    c.data.path = ""
    c.data.tfds_name = "cifar100"
    c.store_dir = c.get_ref("workdir") + "/store"
    c.diffusemix = _generation()
    c.online = ml_collections.ConfigDict()
    c.online.kind = "none"  # none | diffusemix (pairs mixed on device, online policy)
    c.synthetic.path = c.get_ref("store_dir") + "/hybrids"
    c.synthetic.label_weight = 1.0  # per-record weights (1 − λ) come from the store
    c.synthetic.schedule.kind = "constant"
    c.synthetic.schedule.rho = "1:1"

    c.loss.kind = "bce_softmax"  # one loss for every row (the seed 000 code's choice)
    g, s = c.diffusemix, c.synthetic.schedule
    if variant == "smoke":
        base.smoke_recipe(c)
        c.workdir = "runs/diffusemix_smoke"
        c.data.path = "../shared/data/cifar10-jpeg.zip"
        c.data.tfds_name = ""
        c.data.per_class = 2
        c.batch_size = 16
        c.epochs = 2
        c.steps_per_epoch = 2
        g.tiny = True
        g.prompts = "Autumn|snowy"
        g.steps = 4
        g.resolution = 32
        g.batch_size = 8
        g.hybrid_batch_size = 16
        g.fractal_bank_size = 16
        g.hybrid.lam_min, g.hybrid.lam_max = 0.1, 0.3
        g.hybrid.label_scaling = True
        return c
    for prefix in ("hybrid_", "interval_"):
        if variant.startswith(prefix):
            try:
                lo, hi = (float(v) for v in variant[len(prefix):].split("_"))
            except ValueError:
                raise ValueError(f"diffusemix_cifar100: variant {variant!r} must read "
                                 f"{prefix}<a>_<b>, e.g. {prefix}0.10_0.20") from None
            g.hybrid.lam_min, g.hybrid.lam_max = lo, hi  # eq. 4: λ ~ U[a, b]; Lsf 1.00
            return c
    if variant.startswith("ratio_"):
        try:
            r, syn = (float(v) for v in variant[len("ratio_"):].split("_"))
        except ValueError:
            raise ValueError(f"diffusemix_cifar100: variant {variant!r} must read "
                             "ratio_<real>_<synthetic>, e.g. ratio_1_3") from None
        s.rho = f"{r:g}:{syn:g}"
        return c
    if variant not in ROWS:
        raise ValueError(
            f"diffusemix_cifar100: unknown variant {variant!r}; choose one of {', '.join(ROWS)}, "
            "interval_<a>_<b>, ratio_<r>_<s> or smoke"
        )
    if variant == "vanilla":
        c.synthetic.path = ""
        s.rho = "0"
    elif variant == "dm_lin":
        s.kind = "linear"
    elif variant == "dm_warm":
        s.kind, s.warmup = "warmup", WARMUP_EPOCHS
    elif variant == "dm_step":
        s.kind, (s.t1, s.t2) = "step", STEP_EPOCHS
    elif variant.startswith("fractal_0.20_"):
        g.hybrid.mask = "original"  # fractal into the original image, no generated content
        g.hybrid.label_scaling = variant.endswith("lsf0.80")
    elif variant == "random":
        g.hybrid.mask = "random"
    elif variant == "random_patches":  # the random row with gdl_term's 1-5 rectangle masks
        g.hybrid.mask = "patches"
    elif variant in ("shb", "shb_fractal"):
        g.hybrid.mask = "semantic"
        g.hybrid.fractal = variant == "shb_fractal"
        g.shb.clip = "openai/clip-vit-base-patch32"
    elif variant == "online":
        g.hybrid.policy = "online"
        c.online.kind = "diffusemix"
        c.synthetic.path = c.get_ref("store_dir") + "/edits"
    elif variant == "nine":
        g.prompts = "all"
    return c
