"""Diffusion Inversion on a class-conditional EDM, not on Stable Diffusion: seed 003's Table 7
question (and seed 001's embedding mixes) asked of augdiff's own generator, as an analog.

    augdiff run --config configs/exp_seed003_edm_analog.py:cpu --config.workdir=DIR

Seed 003 claims that inverting each real image into a conditioning vector of a frozen
generator and sampling from perturbed vectors gives training data that beats plain
class-conditional sampling, approaches real data, and adds to it (Table 7: CIFAR-10 real 95.1,
generated 94.6, real + generated 95.2). Seed 001 claims that mixing conditioning embeddings
(CutMix, Mixup, then Dropout 0.4) adds diversity that helps (Embed-CutMix-Dropout best, 66.9 %
on its ImageNet-LT subset). Neither generator is available here, so the question is asked of
the class-conditional EDM shipped with augdiff (CIFAR-10 at 16², step 4,000): its one-hot class
input is replaced by one learned 10-d vector per real image
(:mod:`augdiff.methods.edm_inversion`; method config ``configs/edm_diffinv_cifar10.py``).
The paper's numbers sit beside augdiff's for direction only.

Rows (each a sub-experiment ``<profile>-<row>`` in ``DIR/<row>``, 3 classifier seeds):

- ``real``: the real subset only;
- ``classcond``: one class-conditional sample per real image (same sampler and mean-vector
  CFG grid as the inverted rows, ū = the mean one-hot), synthetic only;
- ``inverted``: one Diffusion Inversion sample per real image (0.9/0.1 same-class
  interpolation, λ = 0.1 noise, 3 snapshots × 3 w × 5 partners), synthetic only;
- ``real_classcond`` / ``real_inverted``: real + that row's store (the same images), 1:1;
- ``real_embed_mixup`` / ``real_embed_cutmix`` / ``real_embed_cutmix_dropout``: real + samples
  whose conditioning is seed 001's mix of two inverted same-class vectors (the inversion of
  ``inverted`` reused), 1:1.

Every row's classifier takes the same number of steps (an epoch draws as many images as the
real subset holds: ``mixed.epoch_budget = 'real'``); every store is as large as the real
subset. ``report.md`` states each finding's paired difference with its 95 % interval and a
verdict. ``ci``: the same at CI size (2 images per class, 4 inversion steps, 1 epoch).
"""

from __future__ import annotations

import ml_collections

from augdiff.configs import common

ROWS = ("real", "classcond", "inverted", "real_classcond", "real_inverted",
        "real_embed_mixup", "real_embed_cutmix", "real_embed_cutmix_dropout")
CI_ROWS = ("real", "inverted", "real_embed_cutmix_dropout")
# row -> (training data, conditioning, synthetic share, paper, Top-1 paper, Top-5 paper)
PAPER = {
    "real": ("real", "—", "0", "seed 003 Table 7", 95.1, None),
    "classcond": ("synthetic", "class one-hot", "1", "—", None, None),
    "inverted": ("synthetic", "inverted vector (DI)", "1", "seed 003 Table 7", 94.6, None),
    "real_classcond": ("real + synthetic", "class one-hot", "1:1", "—", None, None),
    "real_inverted": ("real + synthetic", "inverted vector (DI)", "1:1", "seed 003 Table 7",
                      95.2, None),
    "real_embed_mixup": ("real + synthetic", "Embed-Mixup of inverted", "1:1", "—", None, None),
    "real_embed_cutmix": ("real + synthetic", "Embed-CutMix of inverted", "1:1", "—", None,
                          None),
    "real_embed_cutmix_dropout": ("real + synthetic", "Embed-CutMix-Dropout of inverted", "1:1",
                                  "seed 001 Table 1 (ImageNet-LT)", 66.9, None),
}
# The papers' findings, as "a<b" (row a scores below row b) with the papers' answer.
FINDINGS = (
    ("inverted vectors beat class-conditional sampling (seed 003)", "classcond<inverted", True),
    ("synthetic-only stays below real (seed 003 Table 7)", "inverted<real", True),
    ("real + inverted beats real (seed 003 Table 7)", "real<real_inverted", True),
    ("real + inverted beats real + class-conditional", "real_classcond<real_inverted", True),
    ("Embed-CutMix-Dropout beats no augmentation (seed 001)",
     "real_inverted<real_embed_cutmix_dropout", True),
    ("Embed-CutMix beats Embed-Mixup (seed 001)", "real_embed_mixup<real_embed_cutmix", True),
    ("Dropout adds to Embed-CutMix (seed 001)",
     "real_embed_cutmix<real_embed_cutmix_dropout", True),
)
METHOD_VARIANT = {"classcond": "class", "inverted": "inverted",
                  "real_embed_mixup": "embed_mixup", "real_embed_cutmix": "embed_cutmix",
                  "real_embed_cutmix_dropout": "embed_cutmix+dropout"}
ADOPTS = {"real_classcond": "classcond", "real_inverted": "inverted"}
MIX_ROWS = ("real_embed_mixup", "real_embed_cutmix", "real_embed_cutmix_dropout")
PROFILES = {
    "cpu": dict(per_class=50, epochs=24, batch_size=100, steps_per_epoch=0),
    "ci": dict(per_class=2, epochs=1, batch_size=16, steps_per_epoch=1),
}


def _table(profile: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = f"exp_seed003_edm_analog:{profile}"
    c.experiment = "rows"
    c.workdir = f"runs/exp_seed003_edm_analog_{profile}"
    c.rows = ",".join(ROWS if profile == "cpu" else CI_ROWS)
    c.row_config = f"configs/exp_seed003_edm_analog.py:{profile}-{{row}}"
    c.aliases = ml_collections.ConfigDict()
    # The 1:1 rows train on the synthetic rows' stores; the mixes reuse inverted's inversion.
    c.links = ",".join(
        [f"{r}>generator.store={src}:generate/store" for r, src in ADOPTS.items()] +
        ["|".join(MIX_ROWS) + ">generator.overrides.inversion.dir=inverted:generate/inversion"])
    c.rerun_rows = ""
    c.seeds = (0, 1, 2) if profile == "cpu" else (0,)
    c.data = common.data_config(path="../shared/data/cifar10-jpeg.zip", tfds_name="")
    c.data.image_size = 16
    c.data.per_class = PROFILES[profile]["per_class"]
    c.mesh = common.mesh_config()
    c.analyses = ""
    c.report = ml_collections.ConfigDict({"title": (
        f"Diffusion Inversion on a class-conditional EDM, not on Stable Diffusion "
        f"(seed 003 Table 7 and seed 001's mixes as an analog; {profile} profile)")})
    c.paper = ml_collections.ConfigDict()
    c.paper.columns = ("Training data", "Conditioning", "Synthetic share", "Paper number from")
    c.paper.table = tuple((row, *PAPER[row]) for row in ROWS)
    c.paper.findings = FINDINGS
    return c


def _row(profile: str, row: str) -> ml_collections.ConfigDict:
    p = PROFILES[profile]
    c = common.experiment(
        f"exp_seed003_edm_analog:{profile}-{row}",
        description="Diffusion Inversion on a class-conditional EDM (analog), one row.",
        workdir=f"runs/exp_seed003_edm_analog_{profile}/{row}", seeds=(0, 1, 2),
        stages=("prepare", "train_real", "report"),
        data=common.data_config(path="../shared/data/cifar10-jpeg.zip", tfds_name=""))
    c.data.image_size = 16
    c.data.per_class = int(p["per_class"])
    method = f"configs/edm_diffinv_cifar10.py:{METHOD_VARIANT.get(row, 'inverted')}"
    overrides: dict = {"inversion": {"dir": ""}}
    if profile == "ci":
        overrides["inversion"].update(steps=4, save_steps=(2, 4), group_size=10)
        overrides["sampling"] = {"checkpoints": (2, 4), "num_steps": 2, "batch_size": 10}
    c.generator = common.generator("method", method, overrides=overrides)
    c.classifier = common.classifier("configs/classify_cifar10.py", {
        "model": {"name": "preact_resnet_tiny", "width": 16}, "epochs": int(p["epochs"]),
        "batch_size": int(p["batch_size"]), "steps_per_epoch": int(p["steps_per_epoch"]),
        "progress": False})
    c.mixed = common.mixed("1:1")
    c.mixed.epoch_budget = "real"
    c.report = common.report(f"Diffusion Inversion on a class-conditional EDM — {row}")
    if row in METHOD_VARIANT and not row.startswith("real_"):
        c.stages = ("prepare", "generate", "train_synthetic", "report")
    elif row in ADOPTS:
        c.generator = common.generator("store", "", store="")  # set by the table's links
        c.stages = ("prepare", "generate", "train_mixed", "report")
    elif row in MIX_ROWS:
        c.stages = ("prepare", "generate", "train_mixed", "report")
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "cpu"
    if variant in PROFILES:
        return _table(variant)
    profile, _, row = variant.partition("-")
    if profile in PROFILES and row in ROWS:
        return _row(profile, row)
    raise ValueError(f"exp_seed003_edm_analog: unknown variant {variant!r}; choose cpu, ci or "
                     f"<cpu|ci>-<row> with a row of {', '.join(ROWS)}")
