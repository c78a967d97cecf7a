"""Seed 001: augmented conditioning (unCLIP) in the few-shot and long-tail protocols.

    augdiff run --config configs/exp_seed001_augcond.py:<variant> --config.workdir=DIR

Generation is ``augdiff generate --config configs/augcond_cifar10.py:<protocol>`` (unCLIP image
conditioning with pixel / embedding CutMix, Mixup and Dropout of the conditioning embedding;
CFG 10.0 few-shot, 2.0 large-scale; 30 steps; needs unCLIP weights) into ``generate/store``.
Classifiers (ResNet18, ``configs/classify_cifar10.py``) train on the real subset only and with
50/50 real/synthetic batches (constant share 0.5), over three seeds; the store is evaluated
with the classifier trained on the real subset.

Variants
- ``fewshot``: N real images per class (``data.per_class``, 10 by default; change with
  ``--config.data.per_class``), the generator's ``fewshot`` variant.
- ``longtail``: CIFAR-10-LT with imbalance factor 100 (``n_c = 5000 · 100^(−c/9)``), the
  generator's ``longtail`` variant, which generates per class what balances the classes.
- ``fewshot_smoke`` / ``longtail_smoke`` (``smoke`` = ``fewshot_smoke``): the CPU versions with
  the tiny random-weight unCLIP model made by ``augdiff.sd.tiny``.
"""

from __future__ import annotations

import ml_collections

from augdiff.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "fewshot"
    if variant == "smoke":
        variant = "fewshot_smoke"
    protocol, _, smoke = variant.partition("_")
    if protocol not in ("fewshot", "longtail") or smoke not in ("", "smoke"):
        raise ValueError(f"exp_seed001_augcond: unknown variant {variant!r} (fewshot | longtail "
                         "| fewshot_smoke | longtail_smoke | smoke)")
    c = common.experiment(
        f"exp_seed001_augcond:{variant}",
        description=f"Seed 001 (augmented conditioning), {protocol} protocol.",
        workdir=f"runs/exp_seed001_{variant}", seeds=(0, 1, 2),
        stages=("prepare", "generate", "train_real", "train_mixed", "evaluate", "report"),
        data=common.data_config(
            per_class=10 if protocol == "fewshot" else 0,
            imbalance_factor=100.0 if protocol == "longtail" else 1.0,
        ))
    c.generator = common.generator("method", f"configs/augcond_cifar10.py:{variant}")
    c.classifier = common.classifier("configs/classify_cifar10.py")
    # 50/50 real/synthetic batches; an epoch is one pass over real + synthetic.
    c.mixed = common.mixed("0.5")
    c.evaluate = common.evaluate("configs/evaluate_cifar10.py")
    c.report = common.report(f"Seed 001 (augmented conditioning) — {variant}")

    if smoke:
        c.seeds = (0,)
        c.data.image_size = 32
        if protocol == "fewshot":
            c.data.per_class = 4
        else:
            c.data.per_class = 20  # n_max of the long-tailed subset
            c.data.imbalance_factor = 10.0
        c.generator.weights = "random"
        c.classifier.config = "configs/classify_cifar10.py:smoke"
        c.classifier.overrides = ml_collections.ConfigDict({"epochs": 1})
        c.evaluate = common.evaluate("configs/evaluate_cifar10.py:smoke", common.SMOKE_EVALUATE)
    return c
