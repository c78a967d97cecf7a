"""Fidelity / diversity / replication of a synthetic store against CIFAR-10 (``augdiff evaluate``).

    augdiff evaluate --config configs/evaluate_cifar10.py[:variant] \
        --config.evaluate.store=STORE --config.extractor.checkpoint=RUN/checkpoints

Variants
- default: the full test split (10,000 images) against up to 10,000 synthetic images, KID over
  100 subsets of 1,000, PRDC with k = 5, replication against the full training split, features
  from the penultimate layer of a ResNet18 trained on the real data by
  ``augdiff train --config configs/classify_cifar10.py`` (``extractor.checkpoint`` = that run's
  ``checkpoints`` directory).
- ``inception``: the FID-standard Inception-v3 pool3 features; needs
  ``--config.extractor.weights=/path/to/pt_inception-2015-12-05-6726825d.pth`` (or ``.npz``).
- ``clip``: CLIP image embeddings; needs ``--config.extractor.clip_path=/path/to/clip_vision``.
- ``smoke``: 500 real test images against up to 500 synthetic images, 200 training images for
  replication, a tiny PreActResNet extractor (``extractor.checkpoint`` of the
  ``classify_cifar10.py:smoke`` run, or ``--config.extractor.random_init=True`` for an
  explicitly random network, named as such in the report).

- ``reference``: the extractor that needs no pretrained weights: a PreActResNet trained by
  augdiff on the *full* real training split (``configs/classify_cifar10.py:reference``),
  cached across runs (:mod:`augdiff.train.reference`; the CIFAR-10 one at 16² ships with
  augdiff), its penultimate features beside a texture block (``extractor.texture``); 1,000
  real against up to 1,000 synthetic images. The quickstart's default.

Every variant adds control rows under the same extractor (``evaluate.controls``): held-out
real images (the floor) and Gaussian noise / blurred / patch-shuffled real images (the
ceilings), with a warning when the extractor cannot tell the noise from real images.

Restrict to some classes with ``--config.evaluate.classes=cat,dog`` (names or ids).
"""

from __future__ import annotations

import ml_collections

from augdiff.configs.common import data_config, mesh_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    c = ml_collections.ConfigDict()
    c.workdir = "runs/evaluate_cifar10"
    c.seed = 0

    c.data = data_config(skip_corrupt=False)

    c.mesh = mesh_config()

    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.store = ""  # SyntheticStore directory (required)
    c.evaluate.classes = ""  # '' = all; else 'cat,dog' or '3,5'
    c.evaluate.real_split = "test"
    c.evaluate.train_split = "train"  # reference set of the replication measures
    c.evaluate.max_real = 10000  # 0 = all
    c.evaluate.max_synthetic = 10000
    c.evaluate.max_train = 0
    c.evaluate.kid_subsets = 100
    c.evaluate.kid_subset_size = 1000
    c.evaluate.prdc_k = 5
    c.evaluate.replication = True
    c.evaluate.nn_by = "feature"  # feature | pixel: how the nearest training image is found
    c.evaluate.ssim_threshold = 0.5  # near copy: SSIM to the nearest training image above this
    # Control rows under the same extractor: held-out real (floor), Gaussian noise, blurred and
    # patch-shuffled real images (ceilings); a warning when noise is not told from real.
    c.evaluate.controls = True

    c.extractor = ml_collections.ConfigDict()
    c.extractor.name = "classifier"  # classifier | inception_v3 | clip
    c.extractor.batch_size = 256
    c.extractor.checkpoint = ""  # classifier: orbax 'checkpoints' dir of an `augdiff train` run
    c.extractor.classifier = "resnet18"
    c.extractor.width = 64
    c.extractor.stem = "cifar"
    c.extractor.num_classes = 0  # 0 = the real data's
    c.extractor.image_size = 32
    c.extractor.random_init = False  # explicit random-weight classifier (smoke only)
    c.extractor.seed = 0
    c.extractor.weights = ""  # inception_v3: pt_inception-2015-12-05-*.pth or .npz
    c.extractor.clip_path = ""  # clip: transformers CLIPVisionModelWithProjection folder
    # reference: a classifier trained on the full real training split, cached across runs
    c.extractor.reference = "configs/classify_cifar10.py:reference"
    c.extractor.reference_epochs = 0  # 0 = the reference recipe's
    c.extractor.cache_dir = ""  # '' = $AUGDIFF_CACHE or ~/.cache/augdiff
    # reference: add the texture block (spatial std of 32 fixed random 3x3 filters) beside the
    # penultimate features; without it Gaussian noise lands inside the real k-NN balls
    # (precision of noise 0.99 on CIFAR-10 at 16², 0.00 with it; metrics.features.with_texture)
    c.extractor.texture = True

    if variant == "default":
        pass
    elif variant == "inception":
        c.extractor.name = "inception_v3"
        c.extractor.batch_size = 64
        c.workdir = "runs/evaluate_cifar10_inception"
    elif variant == "clip":
        c.extractor.name = "clip"
        c.extractor.batch_size = 64
        c.workdir = "runs/evaluate_cifar10_clip"
    elif variant == "smoke":
        c.workdir = "runs/evaluate_cifar10_smoke"
        c.evaluate.max_real = 500
        c.evaluate.max_synthetic = 500
        c.evaluate.max_train = 200
        c.evaluate.kid_subsets = 20
        c.evaluate.kid_subset_size = 100
        c.extractor.classifier = "preact_resnet_tiny"
        c.extractor.width = 16
        c.extractor.stem = ""
        c.extractor.batch_size = 128
    elif variant == "reference":
        c.workdir = "runs/evaluate_cifar10_reference"
        c.extractor.name = "reference"
        c.evaluate.max_real = 1000
        c.evaluate.max_synthetic = 1000
        c.evaluate.max_train = 500
        c.evaluate.kid_subsets = 20
        c.evaluate.kid_subset_size = 100
    else:
        raise ValueError(f"evaluate_cifar10: unknown variant {variant!r} "
                         "(default, inception, clip, smoke, reference)")
    return c
