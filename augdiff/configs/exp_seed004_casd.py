"""Seed 004 Tables 1-2: FID of DM / SDA / CASD generators vs real-set size and data mismatch.

    augdiff run --config configs/exp_seed004_casd.py:<mode>[_n<N>][_mismatch] \
        --config.workdir=DIR --config.generator.overrides.synthetic.stores=SYN_STORE

One run trains one EDM generator (DDPM++ CIFAR-10 recipe of ``configs/casd_cifar10.py``) on
the first ``N`` real images of each class (``_n<N>``, ``data.first_per_class``: App. A.1 "we
use the first n samples"; default all 5,000) and, for ``sda`` / ``casd``, the
synthetic store(s) given in ``generator.overrides.synthetic.stores`` (seed 004 makes them
with class-conditional generators on class subsets, ``configs/casd_cifar10.py:classcond``);
then samples 50,000 images with Heun (18 steps, NFE 35; ``casd`` at source label y = 0) and
reports FID / KID / PRDC / replication with the FID-standard Inception-v3 features
(``--config.evaluate.overrides.extractor.weights=pt_inception-2015-12-05-*.pth``). A table is
the set of runs over modes × sizes:

- Table 1 (real-set size): ``dm_n500``, ``sda_n500``, ``casd_n500``, ... for N in the sizes
  of the study (any ``_n<N>``).
- Table 2 (mismatch): ``_mismatch`` marks runs whose synthetic store comes from classes or a
  distribution other than the real one; the report records which store was used.

Table 2 / Fig. 3 as the paper ran it (:mod:`augdiff.pipeline.mismatch`): ``case1`` / ``case2`` /
``case3`` (one case each) or ``table2`` (all three, sharing DM and the classifier), at full
scale (accelerators: 32², DDPM++, 10,000 synthetic images from generators trained on all
images of their classes, 50,000 samples per model; pass Inception weights with
``--config.extractor.weights=...``); the ``_reduced`` suffix sizes it for a 2-core CPU (16², a
small SongUNet, a few thousand images, classifier features for the FID)::

    augdiff run --config configs/exp_seed004_casd.py:table2_reduced --config.workdir=DIR

``--config.table2.fid_reference=train|test`` selects the real reference (EDM's protocol:
the training images of the 8 classes; or the test split).

``smoke`` runs here on the CPU in a few minutes: two real CIFAR-10 classes at 16², a red-tinted
copy of them as the mismatched synthetic source (made by the trainer itself), a tiny CASD
SongUNet, 64 samples at y = 0, a tiny classifier trained on the real data as the feature
extractor (no Inception weights exist here).
"""

from __future__ import annotations

import re

import ml_collections

from augdiff.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "casd"
    c = common.experiment(
        f"exp_seed004_casd:{variant}",
        description=("Seed 004 (CASD): an EDM generator trained on real (+ synthetic) data; "
                     "FID of its samples against the real test split."),
        workdir=f"runs/exp_seed004_{variant}", seeds=(0,),
        stages=("prepare", "train_generator", "generate", "evaluate", "report"),
        # first_per_class > 0: the first n images of each class (App. A.1), copied into the
        # generator's data config
        data=common.data_config(first_per_class=0))
    c.generator = common.generator("edm", "configs/casd_cifar10.py", num_samples=50_000,
                                   overrides={
        "mode": "casd",
        "data": {"split": "train", "classes": ""},
        "synthetic": {"stores": "", "fraction": 0.5, "shift": ""},
    })
    c.classifier = common.classifier("configs/classify_cifar10.py")
    c.evaluate = common.evaluate("configs/evaluate_cifar10.py:inception", {
        "evaluate": {"max_real": 10_000, "max_synthetic": 50_000, "classes": ""},
        "extractor": {"weights": ""},
    })
    c.report = common.report(f"Seed 004 (CASD) — {variant}")

    m2 = re.fullmatch(r"(case[123]|table2)(_reduced)?", variant)
    if m2 is not None:
        return _table2(c, m2.group(1), bool(m2.group(2)))

    if variant == "smoke":
        c.workdir = "runs/exp_seed004_smoke"
        c.stages = ("prepare", "train_generator", "generate", "train_real", "evaluate", "report")
        c.data.image_size = 16
        c.data.per_class = 64
        c.generator.config = "configs/casd_cifar10.py:smoke"
        c.generator.num_samples = 64
        c.generator.overrides = ml_collections.ConfigDict({
            "mode": "casd",
            "data": {"split": "train", "classes": "airplane,ship"},
            "synthetic": {"stores": "", "shift": "red_tint", "shift_count": 128},
            "train": {"total_images": 16 * 40, "checkpoint_every_steps": 20},
            "sample": {"batch_size": 64, "num_steps": 6, "grid": 16},
        })
        c.classifier.config = "configs/classify_cifar10.py:smoke"
        c.classifier.overrides = ml_collections.ConfigDict({
            "model": {"name": "preact_resnet_tiny", "width": 16}, "batch_size": 64, "epochs": 2,
        })
        c.evaluate.config = "configs/evaluate_cifar10.py:smoke"
        c.evaluate.overrides = ml_collections.ConfigDict({
            "evaluate": {"classes": "airplane,ship", "max_real": 500, "max_synthetic": 64,
                         "max_train": 128, "kid_subsets": 10, "kid_subset_size": 32},
        })
        return c

    m = re.fullmatch(r"(dm|sda|casd)(?:_n(\d+))?(_mismatch)?", variant)
    if m is None:
        raise ValueError(f"exp_seed004_casd: unknown variant {variant!r}; use smoke, "
                         "<dm|sda|casd>[_n<N per class>][_mismatch] or "
                         "<case1|case2|case3|table2>[_reduced]")
    mode, n, mismatch = m.group(1), m.group(2), bool(m.group(3))
    c.generator.overrides.mode = mode
    if n:
        c.data.first_per_class = int(n)  # the first n per class (App. A.1), not a random draw
    c.description += (" Synthetic source: a mismatched store (other classes / distribution)."
                      if mismatch else "")
    if mode == "dm":
        c.generator.overrides.synthetic.fraction = 0.0
    return c


def _table2(c: ml_collections.ConfigDict, which: str, reduced: bool) -> ml_collections.ConfigDict:
    """Seed 004 §4.3: real = first 8 classes x 125, synthetic from unconditional EDMs."""
    c.experiment = "casd_mismatch"
    c.workdir = "runs/exp_seed004_table2" + ("_reduced" if reduced else "")
    c.description = ("Seed 004 Table 2: DM / SDA / CASD with synthetic data whose class "
                     "support contains / is shifted from / intersects the real one.")
    c.extractor = ml_collections.ConfigDict({"name": "inception_v3", "weights": ""})
    t = c.table2 = ml_collections.ConfigDict()
    t.cases = "case1,case2,case3" if which == "table2" else which
    t.real_per_class = 125  # the first 125 of each of the first 8 classes: n = 1,000
    t.num_synthetic = 10_000
    t.generator_per_class = 0  # 0 = every training image of the generator's classes
    t.generator_images = 0  # 0 = the EDM recipe's total_images
    t.num_eval = 50_000
    t.fid_reference = "train"  # train (EDM's protocol) | test
    t.max_reference = 0  # 0 = all reference images
    t.edm_config = "configs/casd_cifar10.py"
    t.edm_overrides = ml_collections.ConfigDict()
    t.classifier_config = "configs/classify_cifar10.py"
    t.classifier_overrides = ml_collections.ConfigDict()
    # Table 2 of seed 004 (FID ↓), beside augdiff's in report.md.
    t.paper_fid = ml_collections.ConfigDict({
        "dm": {"case1": 11.28, "case2": 11.28, "case3": 11.28},
        "sda": {"case1": 9.98, "case2": 12.77, "case3": 13.71},
        "casd": {"case1": 4.10, "case2": 4.59, "case3": 4.79}})
    if reduced:
        c.seeds = (0, 1, 2)  # DM / SDA / CASD per seed; the synthetic sources trained once
        c.data.image_size = 16
        t.num_synthetic = 1_000
        t.generator_per_class = 250
        t.generator_images = 32 * 400
        t.num_eval = 300
        t.max_reference = 2_000
        t.edm_config = "configs/casd_cifar10.py:reduced"
        # DM / SDA / CASD: 200 steps of 32 (the generators: 400)
        t.edm_overrides = ml_collections.ConfigDict({"train": {"total_images": 32 * 200}})
        t.classifier_config = "configs/classify_cifar10.py:smoke"
        t.classifier_overrides = ml_collections.ConfigDict(
            {"data": {"per_class": 300}, "epochs": 2})
    return c
