"""Seed 000 Tables 1-2: DiffuseMix-style augmentation on CIFAR-100 with PreActResNet18.

    augdiff run --config configs/exp_seed000_diffusemix.py:<row> --config.workdir=DIR \
        --config.data.path=CIFAR100_DIR_OR_ZIP   (or --config.data.tfds_name=cifar100)

Generation runs ``augdiff generate --config configs/diffusemix_cifar100.py:<row>`` (InstructPix2Pix
edits, hybrids, fractal blending; needs its SD weights) into ``generate/store``; classifiers use
the seed 000 recipe (``configs/classify_cifar100.py``: PreActResNet18, SGD 0.1 /10 at epochs
100 and 200, wd 1e-4, batch 100, 300 epochs) on real only and on real + synthetic with the row's
synthetic-share schedule (seed 000 eqs. 1-3), three seeds each; FID etc. use the classifier
trained on the real data; the ``pca`` stage plots real vs synthetic features (CLIP ones with
``--config.evaluate.config=configs/evaluate_cifar10.py:clip`` and
``--config.evaluate.overrides.extractor.clip_path=DIR``). Seed 000's
Fig. 3 itself (PCA fitted on the originals' CLIP embeddings, generations with the row's editor:
InstructPix2Pix with DiffuseMix's prompts, or the EDM editor's strengths; the hybrids' own
fractals) is the table experiments' ``fig3`` analysis (:mod:`augdiff.analysis.fig3`), at any
scale; ``fig3.clip=DIR`` gives it real CLIP weights.

Rows (variants), named as in Tables 1-2 (definitions in ``configs/diffusemix_cifar100.py``,
whose variant of the same name holds each row's generation settings): ``baseline`` (DiffuseMix:
concatenation + 0.8/0.2 fractal, constant 1:1), ``vanilla`` (real only), ``dm_lin`` /
``dm_warm`` / ``dm_step`` (eqs. 1-3; w = 50, t₁ = 100, t₂ = 200), ``hybrid_0.05_0.15`` …
``hybrid_0.20_0.30`` (λ ~ U[a, b], Lsf 1.00), ``fractal_0.20_lsf1.00`` /
``fractal_0.20_lsf0.80`` (fractal into the original image: as the paper's code runs them,
every real image blended on device with a fresh fractal each step, no clean originals; the
``_stored`` variants write one blend per image and mix it 1:1 with the originals), ``dc``
(= baseline, Table 2),
``shb``, ``shb_fractal``, ``random`` (one half-area rectangle, as the paper describes it;
the row ``random_patches`` (also ``cpu-random_patches``): gdl_term's 1–5 rectangles).
Every row trains for the same number of steps (``mixed.epoch_budget``: an epoch draws as
many images as the real set holds; ``'union'`` for a pass over originals ∪ hybrids). Every
row's classifier trains with one loss,
``bce_softmax`` (the seed 000 code's BCE on softmax outputs; label scaling changes only the
targets). ``smoke``: the CPU version on the shared CIFAR-10 zip with that file's ``smoke``
generation (tiny random-weight SD). ``PAPER`` holds the paper's numbers for the report.

Every row in one run (the table experiments, ``experiment = 'rows'``)::

    augdiff run --config configs/exp_seed000_diffusemix.py:cpu --config.workdir=DIR

``cpu`` runs each row of :data:`TABLE_ROWS` as the sub-experiment ``cpu-<row>`` in
``DIR/<row>`` (real CIFAR-10 zip at 16², 100 images per class, the shipped class-conditional
EDM as an SDEdit editor at σ_start = 1, a tiny PreActResNet for 12 epochs; baseline makes the
edits, every other row adopts them, the Fractal rows make none), then the analyses ``fig3``
(Fig. 3, PCA fitted on the originals' CLIP embeddings; the "prompts" are the SDEdit strengths
``fig3.strengths``) and ``shb_measure`` (SHB masks at
256²), and writes ``DIR/report.md``: the paper-layout table, the direction of each finding
(:data:`FINDINGS`), wall times, the analyses. Rows resume on their own;
``--config.rerun_rows=shb,shb_fractal`` starts rows over. ``ci`` is the same at CI size.
"""

from __future__ import annotations

import ml_collections

from augdiff.config import SHIPPED_GENERATOR, resolve_path
from augdiff.configs import common

# The class-conditional EDM shipped with augdiff, as an absolute path (the editor's workdir).
SHIPPED_EDM = resolve_path(SHIPPED_GENERATOR)

ROWS = ("baseline", "vanilla", "dm_lin", "dm_warm", "dm_step", "hybrid_0.05_0.15",
        "hybrid_0.10_0.20", "hybrid_0.15_0.25", "hybrid_0.20_0.30", "fractal_0.20_lsf1.00",
        "fractal_0.20_lsf0.80", "dc", "shb", "shb_fractal", "random")
# Rows outside the paper's tables: the random row with the paper code's masks; the Fractal
# rows from a store (one fixed 0.8·I + 0.2·F per image, mixed 1:1 with clean originals).
EXTRA_ROWS = ("random_patches", "fractal_0.20_lsf1.00_stored", "fractal_0.20_lsf0.80_stored")


def online_fractal_row(row: str) -> bool:
    """Table 1's Fractal rows as the paper's code runs them (``--train fractal_mixup``): every
    real image blended with a fresh fractal each step (``online.kind='fractal'``), no store."""
    return row.startswith("fractal_0.20_") and not row.endswith("_stored")
LOSS = "bce_softmax"  # one loss for every row of Tables 1-2
WARMUP_EPOCHS, STEP_EPOCHS = 50, (100, 200)

# Seed 000 Tables 1-2 (CIFAR-100, PreActResNet18): row -> (Method, Sch., Ratio, Lsf, Top-1, Top-5).
PAPER = {
    "baseline": ("Baseline", "Con", "0.0", "1.00", 68.63, 87.92),
    "vanilla": ("Vanilla", "Con", "0.0", "1.00", 75.35, 91.66),
    "dm_lin": ("DM", "Lin", "0.0", "1.00", 70.69, 90.55),
    "dm_warm": ("DM", "Warm", "0.0", "1.00", 70.39, 90.25),
    "dm_step": ("DM", "Step", "0.0", "1.00", 70.94, 89.59),
    "hybrid_0.05_0.15": ("Hybrid", "Con", "0.05–0.15", "1.00", 66.61, 87.45),
    "hybrid_0.10_0.20": ("Hybrid", "Con", "0.10–0.20", "1.00", 66.55, 87.15),
    "hybrid_0.15_0.25": ("Hybrid", "Con", "0.15–0.25", "1.00", 65.51, 86.15),
    "hybrid_0.20_0.30": ("Hybrid", "Con", "0.20–0.30", "1.00", 64.86, 85.92),
    "fractal_0.20_lsf1.00": ("Fractal", "Con", "0.20", "1.00", 74.27, 91.81),
    "fractal_0.20_lsf0.80": ("Fractal", "Con", "0.20", "0.80", 74.21, 91.50),
    "dc": ("Baseline (DC)", "Con", "—", "1.00", 68.63, 87.92),
    "shb": ("Ours (SHB)", "Con", "—", "1.00", 69.50, 87.99),
    "shb_fractal": ("SHB + fractal", "Con", "0.20", "1.00", None, None),
    "random": ("Random", "Con", "—", "1.00", None, None),
}


# Reduced profiles that run here (real CIFAR-10 zip, 16², the shipped class-conditional EDM
# as the SDEdit editor, a tiny PreActResNet). ``cpu``: 100 images/class, 12 epochs (~30 min on
# 2 free cores); ``ci``: 2 images/class, 1 epoch, 2 Heun steps (a test runs it). Schedules and
# milestones keep the paper's fractions of training (w = T/6, t₁ = T/3, t₂ = 2T/3).
PROFILES = {
    "cpu": dict(per_class=100, epochs=12, edm_steps=8, steps_per_epoch=0, batch_size=100),
    "ci": dict(per_class=2, epochs=1, edm_steps=2, steps_per_epoch=1, batch_size=16),
}
# The table experiments run every row (dc = baseline: the same definition, not trained twice;
# baseline first: it makes the edits every other row reuses).
TABLE_ROWS = ("baseline", "vanilla", "dm_lin", "dm_warm", "dm_step", "hybrid_0.05_0.15",
              "hybrid_0.10_0.20", "hybrid_0.15_0.25", "hybrid_0.20_0.30",
              "fractal_0.20_lsf1.00", "fractal_0.20_lsf0.80", "random", "shb", "shb_fractal")
CI_ROWS = ("baseline", "fractal_0.20_lsf0.80", "shb_fractal")
# The paper's findings, as "a<b" (row a scores below row b) with the paper's answer.
FINDINGS = (("DC falls below vanilla", "dc<vanilla", True),
            ("SHB beats DC", "dc<shb", True),
            ("random falls below DC", "random<dc", True),
            ("DM Lin beats the constant baseline", "baseline<dm_lin", True),
            ("DM Warm beats the constant baseline", "baseline<dm_warm", True),
            ("DM Step beats the constant baseline", "baseline<dm_step", True),
            ("Lsf 0.80 falls below Lsf 1.00 (74.21 vs 74.27)",
             "fractal_0.20_lsf0.80<fractal_0.20_lsf1.00", True),
            ("a larger hybrid ratio falls below a smaller one (0.20–0.30 vs 0.05–0.15)",
             "hybrid_0.20_0.30<hybrid_0.05_0.15", True))


def _table_config(profile: str) -> ml_collections.ConfigDict:
    """Every row of Tables 1-2 as one ``augdiff run``: each row is a sub-experiment
    (``<profile>-<row>``) in ``<workdir>/<row>``, resumable on its own; ``report.md`` holds the
    paper-layout table (augdiff beside the paper) and the direction of each finding."""
    c = ml_collections.ConfigDict()
    c.name = f"exp_seed000_diffusemix:{profile}"
    c.experiment = "rows"
    c.workdir = f"runs/exp_seed000_{profile}"
    c.rows = ",".join(TABLE_ROWS if profile == "cpu" else CI_ROWS)
    c.row_config = f"configs/exp_seed000_diffusemix.py:{profile}-{{row}}"
    c.aliases = ml_collections.ConfigDict({"dc": "baseline"})
    # Rows other than baseline adopt baseline's edits (one edit stage for the table).
    c.links = "generator.overrides.diffusemix.edits_store=baseline:generate/store/edits"
    c.rerun_rows = ""  # rows to start over (e.g. "shb,shb_fractal" after an SHB change)
    c.seeds = (0,)
    c.data = common.data_config(path="../shared/data/cifar10-jpeg.zip", tfds_name="")
    c.data.image_size = 16
    c.data.per_class = PROFILES[profile]["per_class"]
    c.mesh = common.mesh_config()
    c.analyses = "fig3,shb_measure"
    # Fig. 3 with the tiny RANDOM CLIP unless fig3.clip names real weights; the "prompts" are
    # SDEdit strengths (the table's single prompt is σ_start = 1).
    c.fig3 = ml_collections.ConfigDict({"max_images": 150 if profile == "cpu" else 8,
                                        "clip": "", "tiny": True, "row": "baseline",
                                        "strengths": "0.5|1|2" if profile == "cpu" else "1"})
    c.shb_measure = ml_collections.ConfigDict({"max_images": 64 if profile == "cpu" else 4})
    c.report = ml_collections.ConfigDict({"title": f"Seed 000 Tables 1-2 ({profile} profile)"})
    # The paper's side of report.md: Tables 1-2 in the paper's row order, and its findings.
    c.paper = ml_collections.ConfigDict()
    c.paper.table = tuple((row, *PAPER[row]) for row in ROWS)
    c.paper.findings = FINDINGS
    return c


def _reduced_row(c: ml_collections.ConfigDict, profile: str, row: str) -> None:
    """Row ``row`` of the reduced ``profile`` (see :data:`PROFILES`), in place."""
    p = PROFILES[profile]
    e = int(p["epochs"])
    c.name = f"exp_seed000_diffusemix:{profile}-{row}"
    c.workdir = f"runs/exp_seed000_{profile}/{row}"
    c.seeds = (0,)
    c.data.path = "../shared/data/cifar10-jpeg.zip"
    c.data.tfds_name = ""
    c.data.image_size = 16
    c.data.per_class = int(p["per_class"])
    c.stages = (("prepare", "train_real", "report")
                if row == "vanilla" or online_fractal_row(row)
                else ("prepare", "generate", "train_mixed", "report"))
    c.generator.overrides = ml_collections.ConfigDict({"diffusemix": {
        "editor": "edm", "edm": {"workdir": SHIPPED_EDM, "sigma_start": "1.0",
                                 "steps": int(p["edm_steps"])},
        "batch_size": int(p["batch_size"]), "hybrid_batch_size": int(p["batch_size"]),
        "edits_store": "", "shb": {"clip": "", "tiny": True}}, "progress": False})
    milestones = (max(1, e // 3), max(1, 2 * e // 3))
    c.classifier.overrides = ml_collections.ConfigDict({
        "loss": {"kind": LOSS}, "model": {"name": "preact_resnet_tiny", "width": 16},
        "epochs": e, "optim": {"milestones": milestones}, "progress": False,
        "batch_size": int(p["batch_size"]), "steps_per_epoch": int(p["steps_per_epoch"])})
    if online_fractal_row(row):
        c.classifier.overrides.online = ml_collections.ConfigDict({"kind": "fractal"})
    s = c.mixed.schedule
    if row == "dm_warm":
        s.warmup = max(1, round(e * WARMUP_EPOCHS / 300))
    elif row == "dm_step":
        s.t1, s.t2 = milestones
    c.report.title = f"Seed 000 (DiffuseMix) — {profile}-{row}"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "dc"
    if variant in PROFILES:
        return _table_config(variant)
    profile, _, row = variant.partition("-")
    if profile in PROFILES and row:
        c = get_config(row)
        _reduced_row(c, profile, row)
        return c
    c = common.experiment(
        f"exp_seed000_diffusemix:{variant}",
        description="Seed 000: DiffuseMix-style synthetic data for CIFAR-100 classification.",
        workdir=f"runs/exp_seed000_{variant}", seeds=(0, 1, 2),
        stages=("prepare", "generate", "train_real", "train_mixed", "evaluate", "pca", "report"),
        data=common.data_config(path="", tfds_name="cifar100"))
    # generator.weights: the SD / InstructPix2Pix weights named in the method config
    gen_row = variant.removesuffix("_stored")
    c.generator = common.generator("method", f"configs/diffusemix_cifar100.py:{gen_row}")
    c.classifier = common.classifier("configs/classify_cifar100.py")
    # The share follows the row. An epoch draws as many images as the real set from the
    # row's pool (originals ∪ hybrids), so every row trains for vanilla's steps: gdl_term's
    # default (enlarge_dataset=False; augdiff.data.budget). 'union': one pass over
    # originals ∪ hybrids (DiffuseMix's concatenation; twice the steps at 1:1).
    c.mixed = common.mixed("1:1")
    c.mixed.epoch_budget = "real"  # real | union
    c.evaluate = common.evaluate("configs/evaluate_cifar10.py", {
        "extractor": {"classifier": "preact_resnet18"},
    })
    c.pca = ml_collections.ConfigDict({"max_images": 2000, "normalize": True})
    c.report = common.report(f"Seed 000 (DiffuseMix) — {variant}")

    if variant == "smoke":
        c.workdir = "runs/exp_seed000_smoke"
        c.seeds = (0,)
        c.data.path = "../shared/data/cifar10-jpeg.zip"
        c.data.tfds_name = ""
        c.data.per_class = 20
        c.generator.weights = "random"
        c.classifier.config = "configs/classify_cifar100.py:smoke"
        c.classifier.overrides = ml_collections.ConfigDict({"epochs": 1, "loss": {"kind": LOSS}})
        c.evaluate = common.evaluate("configs/evaluate_cifar10.py:smoke", common.SMOKE_EVALUATE)
        c.pca.max_images = 200
        return c
    if variant not in ROWS + EXTRA_ROWS:
        raise ValueError(f"exp_seed000_diffusemix: unknown variant {variant!r}; choose one of "
                         f"{', '.join(ROWS + EXTRA_ROWS)} or smoke")
    c.classifier.overrides = ml_collections.ConfigDict({"loss": {"kind": LOSS}})
    s = c.mixed.schedule
    if variant == "vanilla":
        c.stages = ("prepare", "train_real", "report")
    elif online_fractal_row(variant):
        # real images only, each blended on device with a fresh fractal per step (λ, Lsf
        # from the row's diffusemix config); the stored variant: <row>_stored
        c.stages = ("prepare", "train_real", "report")
        c.classifier.config = f"configs/diffusemix_cifar100.py:{variant}"
        c.classifier.overrides.online = ml_collections.ConfigDict({"kind": "fractal"})
    elif variant == "dm_lin":
        s.kind = "linear"
    elif variant == "dm_warm":
        s.kind, s.warmup = "warmup", WARMUP_EPOCHS
    elif variant == "dm_step":
        s.kind, (s.t1, s.t2) = "step", STEP_EPOCHS
    # Label scaling (fractal_0.20_lsf0.80) needs no classifier change: the generator (stored)
    # or the online transform writes the target 1 − λ as the row's weight, and the loss is the
    # same for every row.
    return c
