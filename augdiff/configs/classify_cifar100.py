"""Classifier training on CIFAR-100 with the seed 000 recipe (``augdiff train``).

    augdiff train --config configs/classify_cifar100.py[:variant] \
        --config.data.path=CIFAR100_DIR_OR_ZIP --config.workdir=DIR

CIFAR-100 is not among the shared data here: point ``data.path`` at an image-folder tree or zip
(``root/{train,test}/<class>/*``) or ``data.tfds_name`` at a prepared TFDS ``cifar100``.

Variants
- default: PreActResNet18, SGD momentum 0.9, lr 0.1 divided by 10 at epochs 100 and 200,
  weight decay 1e-4, batch 100, 300 epochs (seed 000).
- ``ls``: the same with label scaling (BCE; synthetic targets scaled by
  ``synthetic.label_weight``).
- ``smoke``: the CPU preset (tiny PreActResNet, few images, few epochs); runs in under two
  minutes on a 2-core CPU.
"""

from __future__ import annotations

import ml_collections

from augdiff.configs import classify_cifar10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    base = classify_cifar10
    c = base.seed000_recipe(base.base_config())
    c.workdir = "runs/classify_cifar100"
    c.data.path = ""
    c.data.tfds_name = "cifar100"
    variant = arg or "default"
    if variant == "default":
        pass
    elif variant == "ls":
        c.loss.kind = "bce"
        c.synthetic.label_weight = 0.8
    elif variant == "smoke":
        base.smoke_recipe(c)
        c.data.per_class = 50
        c.epochs = 2
        c.workdir = "runs/classify_cifar100_smoke"
    else:
        raise ValueError(
            f"classify_cifar100: unknown variant {variant!r}; choose default, ls or smoke"
        )
    return c
