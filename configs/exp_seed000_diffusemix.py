"""Seed 000 Tables 1-2: DiffuseMix-style augmentation on CIFAR-100 with PreActResNet18.

    augdiff run --config configs/exp_seed000_diffusemix.py:<row> --config.workdir=DIR \
        --config.data.path=CIFAR100_DIR_OR_ZIP   (or --config.data.tfds_name=cifar100)

Generation runs ``augdiff generate --config configs/diffusemix_cifar100.py:<row>`` (InstructPix2Pix
edits, hybrids, fractal blending; needs its SD weights) into ``generate/store``; classifiers use
the seed 000 recipe (``configs/classify_cifar100.py``: PreActResNet18, SGD 0.1 /10 at epochs
100 and 200, wd 1e-4, batch 100, 300 epochs) on real only and on real + synthetic with the row's
synthetic-share schedule (seed 000 eqs. 1-3), three seeds each; FID etc. use the classifier
trained on the real data; the PCA plot shows real vs synthetic features (seed 000 Fig. 3 uses
CLIP embeddings: add ``--config.evaluate.config=configs/evaluate_cifar10.py:clip`` and
``--config.evaluate.overrides.extractor.clip_path=DIR``).

Rows (variants): ``vanilla`` (real only), ``dc`` (DiffuseMix baseline, constant 1:1),
``linear``, ``warm``, ``step`` (schedules), ``fractal`` / ``fractal_lsf`` (fractal λ = 0.2, label
scaling 1.0 / 0.8 with BCE), ``shb``, ``random`` — each row's generation settings live in the
variant of the same name of ``configs/diffusemix_cifar100.py``. ``smoke``: the CPU version on
the shared CIFAR-10 zip with that file's ``smoke`` generation (tiny random-weight SD).
"""

from __future__ import annotations

import ml_collections

from augdiff.config import data_config, mesh_config

ROWS = ("vanilla", "dc", "linear", "warm", "step", "fractal", "fractal_lsf", "shb", "random")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "dc"
    c = ml_collections.ConfigDict()
    c.name = f"exp_seed000_diffusemix:{variant}"
    c.description = "Seed 000: DiffuseMix-style synthetic data for CIFAR-100 classification."
    c.workdir = f"runs/exp_seed000_{variant}"
    c.seed = 0
    c.seeds = (0, 1, 2)
    c.stages = ("prepare", "generate", "train_real", "train_mixed", "evaluate", "pca", "report")
    c.rerun = ""

    c.data = data_config(path="", tfds_name="cifar100")

    c.mesh = mesh_config()

    c.generator = ml_collections.ConfigDict()
    c.generator.kind = "method"
    c.generator.config = f"configs/diffusemix_cifar100.py:{variant}"
    c.generator.checkpoint = ""
    c.generator.store = ""
    c.generator.weights = ""  # the SD / InstructPix2Pix weights named in the method config
    c.generator.num_samples = 0
    c.generator.overrides = ml_collections.ConfigDict()

    c.classifier = ml_collections.ConfigDict()
    c.classifier.config = "configs/classify_cifar100.py"
    c.classifier.overrides = ml_collections.ConfigDict()

    # Steps per epoch follow the union of real and synthetic data; the share follows the row.
    c.mixed = ml_collections.ConfigDict()
    c.mixed.schedule = ml_collections.ConfigDict({"kind": "constant", "rho": "1:1", "total": 0,
                                                  "warmup": 0, "t1": 0, "t2": 0})

    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.config = "configs/evaluate_cifar10.py"
    c.evaluate.overrides = ml_collections.ConfigDict({
        "extractor": {"classifier": "preact_resnet18"},
    })
    c.pca = ml_collections.ConfigDict({"max_images": 2000, "normalize": True})

    c.report = ml_collections.ConfigDict()
    c.report.title = f"Seed 000 (DiffuseMix) — {variant}"
    c.report.samples_per_class = 8

    if variant == "smoke":
        c.workdir = "runs/exp_seed000_smoke"
        c.seeds = (0,)
        c.data.path = "../shared/data/cifar10-jpeg.zip"
        c.data.tfds_name = ""
        c.data.per_class = 20
        c.generator.weights = "random"
        c.classifier.config = "configs/classify_cifar100.py:smoke"
        c.classifier.overrides = ml_collections.ConfigDict({"epochs": 1})
        c.evaluate.config = "configs/evaluate_cifar10.py:smoke"
        c.evaluate.overrides = ml_collections.ConfigDict({
            "evaluate": {"max_real": 200, "max_synthetic": 200, "max_train": 100,
                         "kid_subsets": 10, "kid_subset_size": 20}})
        c.pca.max_images = 200
        return c
    if variant not in ROWS:
        raise ValueError(f"exp_seed000_diffusemix: unknown variant {variant!r}; choose one of "
                         f"{', '.join(ROWS)} or smoke")
    s = c.mixed.schedule
    if variant == "vanilla":
        c.stages = ("prepare", "train_real", "report")
    elif variant == "linear":
        s.kind = "linear"
    elif variant == "warm":
        s.kind, s.warmup = "warmup", 100
    elif variant == "step":
        s.kind, s.t1, s.t2 = "step", 100, 200
    elif variant == "fractal_lsf":
        # BCE on the store's per-record targets 1 − λ (written by the generator), not a
        # constant weight: equal for λ = 0.2, and still right when λ is drawn from an interval.
        c.classifier.config = "configs/classify_cifar100.py:ls"
        c.classifier.overrides = ml_collections.ConfigDict({"synthetic": {"label_weight": 1.0}})
    return c
