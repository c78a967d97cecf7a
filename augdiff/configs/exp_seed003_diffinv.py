"""Seed 003 Table 7: ResNet18 on real / generated / real + generated data (Diffusion Inversion).

    augdiff run --config configs/exp_seed003_diffinv.py[:variant] --config.workdir=DIR

Generation is ``augdiff generate --config configs/diffinv_cifar10.py`` (stage 1 learns one
conditioning vector per real image with a frozen Stable Diffusion UNet, stage 2 samples
perturbed vectors with CFG; needs SD weights, see that file) into ``generate/store``. Then
ResNet18 (the seed 003 recipe of ``configs/classify_cifar10.py``: SGD 0.1, cosine, wd 5e-4,
batch 128, 200 epochs) is trained on the real data only, on the generated data only and on
their union (Table 7's three columns), over three seeds, and the store is evaluated with the
classifier trained on real data (``--config.evaluate.config=configs/evaluate_cifar10.py:
inception`` with the Inception weights gives standard FIDs).

Variants: default (CIFAR-10, all 50,000 real images), ``lowdata`` (100 per class, where the
method helps most), ``smoke`` (the CPU check: ``diffinv_cifar10.py:smoke`` with a tiny
random-weight SD model, a handful of images, one seed).
"""

from __future__ import annotations

import ml_collections

from augdiff.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    c = common.experiment(
        f"exp_seed003_diffinv:{variant}",
        description="Seed 003 (Diffusion Inversion) Table 7: real / generated / real + generated.",
        workdir=f"runs/exp_seed003_{variant}", seeds=(0, 1, 2),
        stages=("prepare", "generate", "train_real", "train_synthetic", "train_mixed",
                "evaluate", "report"),
        data=common.data_config())
    c.generator = common.generator("method", "configs/diffinv_cifar10.py")
    c.classifier = common.classifier("configs/classify_cifar10.py")
    c.mixed = common.mixed("union")
    c.evaluate = common.evaluate("configs/evaluate_cifar10.py")
    c.report = common.report(f"Seed 003 (Diffusion Inversion) Table 7 — {variant}")

    if variant == "default":
        pass
    elif variant == "lowdata":
        c.data.per_class = 100
    elif variant == "smoke":
        c.workdir = "runs/exp_seed003_smoke"
        c.seeds = (0,)
        c.data.per_class = 10
        c.generator.config = "configs/diffinv_cifar10.py:smoke"
        c.generator.weights = "random"
        c.classifier.config = "configs/classify_cifar10.py:smoke"
        c.classifier.overrides = ml_collections.ConfigDict({"epochs": 1})
        c.evaluate.config = "configs/evaluate_cifar10.py:smoke"
        c.evaluate.overrides = ml_collections.ConfigDict({
            "evaluate": {"max_real": 200, "max_synthetic": 200, "max_train": 100,
                         "kid_subsets": 10, "kid_subset_size": 20}})
    else:
        raise ValueError(f"exp_seed003_diffinv: unknown variant {variant!r} "
                         "(default | lowdata | smoke)")
    return c
