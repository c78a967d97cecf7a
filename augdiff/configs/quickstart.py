"""Quickstart: real CIFAR-10 → the shipped EDM → synthetic store → classifiers → report.

    augdiff run --config configs/quickstart.py --config.workdir=runs/quickstart

Under ten minutes end to end on a 2-core CPU, on the shared CIFAR-10 zip (``data.path``
defaults to ``../shared/data/cifar10-jpeg.zip`` beside the repository; elsewhere point
``--config.data.path`` at an image folder ``root/<split>/<class>/*`` or a zip of one):

1. ``prepare``: 100 training images per class at 16² (1,000 images), the full test split.
2. ``generate``: Heun sampling (12 steps) of the class-conditional EDM shipped in
   ``augdiff/assets/generator_cifar10`` (trained by augdiff with
   ``configs/generator_cifar10.py`` on the full training split; see its ``generator.json``),
   loaded like a user's ``generator.checkpoint``; classes spread evenly.
3. ``train_real`` / ``train_synthetic`` / ``train_mixed``: a tiny PreActResNet on real only,
   synthetic only and real + synthetic (the union), once per seed in ``seeds``.
4. ``evaluate``: FID / KID / PRDC / replication with the ``reference`` extractor (a classifier
   trained on the full real training split on the first run, then cached), with the
   control rows (held-out real floor; noise, blur and patch-shuffle ceilings) and
   "classifier accuracy on generated samples".
5. ``report``: ``report.md`` with the results table, fidelity metrics and sample grids.

Started again it redoes nothing; killed midway it resumes (see :mod:`augdiff.pipeline.loop`).

Variants: default; ``online`` (``train_mixed`` samples the generator during training,
``mixed.online``); ``train_generator`` (train a tiny EDM on the run's 1,000 real images
instead of the shipped one: a few minutes, and its samples are still noise-like); ``test``
(a ~1-2 minute version of ``train_generator`` for the test suite: two seeds, a few dozen EDM
steps, 40 synthetic images, the ``train_real`` network as extractor).
"""

from __future__ import annotations

import ml_collections

from augdiff.config import SHIPPED_GENERATOR
from augdiff.configs import common

STAGES = ("prepare", "generate", "train_real", "train_synthetic", "train_mixed", "evaluate",
          "report")


def train_generator_section(c: ml_collections.ConfigDict) -> None:
    """Train the generator here instead (variant ``train_generator``): a tiny class-conditional
    EDM (configs/casd_cifar10.py:classcond, mode dm, shrunk) on the run's real subset."""
    c.stages = ("prepare", "train_generator") + STAGES[1:]
    c.generator.config = "configs/casd_cifar10.py:classcond"
    c.generator.checkpoint = ""
    c.generator.overrides = ml_collections.ConfigDict({
        "data": {"split": "train", "classes": ""},
        "model": {"preset": "tiny", "model_channels": 32, "dropout": 0.0},
        "train": {"batch_size": 64, "lr": 2e-3, "lr_rampup_images": 3200,
                  "ema_halflife_images": 3000, "ema_rampup_ratio": 0.05,
                  "total_images": 64 * 200, "checkpoint_every_steps": 50,
                  "keep_checkpoints": 2, "log_every_steps": 25},
        "sample": {"sampler": "heun", "num_steps": 10, "batch_size": 100, "grid": 64},
    })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    c = common.experiment(
        "quickstart",
        description=("CIFAR-10 at 16², 100 real images per class; synthetic images from the "
                     "class-conditional EDM shipped with augdiff (trained on the full CIFAR-10 "
                     "training split, so its samples carry information from all 50,000 real "
                     "images, not only the run's subset); classifiers on real / synthetic / "
                     "mixed data."),
        workdir="runs/quickstart", seeds=(0, 1), stages=STAGES,
        data=common.data_config(image_size=16, per_class=100), variant=variant)

    # The generator shipped with augdiff (augdiff/assets/generator_cifar10, trained by
    # configs/generator_cifar10.py on the full CIFAR-10 training split at 16²), loaded exactly
    # like a user's train-diffusion workdir (generator.checkpoint = user weights).
    c.generator = common.generator("edm", "configs/generator_cifar10.py",
                                   checkpoint=SHIPPED_GENERATOR, num_samples=500, overrides={
        "sample": {"sampler": "heun", "num_steps": 12, "batch_size": 100, "grid": 64},
    })

    c.classifier = common.classifier("configs/classify_cifar10.py:smoke", {
        "model": {"name": "preact_resnet_tiny", "width": 16},
        "batch_size": 64, "epochs": 4, "eval_batch_size": 1000,
        # the report reads the test split after the last epoch only; evaluating the 10,000
        # test images after every epoch was three quarters of these stages' work
        "eval_every_epochs": 0,
        "augment": {"crop_pad": 2},
        "checkpoint_every_steps": 0,
    })

    # Real + synthetic: 'union' = the share n_syn / (n_real + n_syn) of training on both.
    c.mixed = common.mixed("union")
    # kind = "edm": train_mixed samples the generator during training instead of reading the
    # store (augdiff.methods.online; fields as the classifier's synthetic.online, checkpoint ""
    # = generator.checkpoint); variant ``online``.
    c.mixed.online = ml_collections.ConfigDict({
        "kind": "none", "checkpoint": "", "share": 0.5, "num_steps": 12, "refresh_every": 1,
        "buffer_size": 0, "balance": "uniform", "seed": -1})

    # Features (and "classifier accuracy on generated samples") from the reference
    # classifier: trained on the full real training split on the first run, cached across
    # runs; control rows (held-out real floor, noise / blur / shuffle ceilings).
    c.evaluate = common.evaluate("configs/evaluate_cifar10.py:reference", {
        "evaluate": {"max_real": 1000, "max_synthetic": 1000, "max_train": 500,
                     "kid_subsets": 20, "kid_subset_size": 100, "ssim_threshold": 0.5},
    })
    # No fixed title: the report names the config, the data actually read and the generator.
    c.report = common.report()

    if variant == "default":
        pass
    elif variant == "train_generator":
        c.workdir = "runs/quickstart_train_generator"
        train_generator_section(c)
    elif variant == "online":
        c.workdir = "runs/quickstart_online"
        c.description += (" train_mixed: the generator sampled during training (a fresh image "
                          "for every synthetic row of every step, half of each batch) instead "
                          "of the store.")
        c.mixed.online.kind = "edm"
    elif variant == "test":
        train_generator_section(c)
        c.evaluate.config = "configs/evaluate_cifar10.py:smoke"
        c.workdir = "runs/quickstart_test"
        c.description = ("The test-suite version: 20 real images per class at 16², an EDM "
                         "trained for 24 steps (its samples are noise-like), one epoch each.")
        c.data.per_class = 20
        c.generator.num_samples = 40
        c.generator.overrides.model.model_channels = 16
        c.generator.overrides.train.batch_size = 32
        c.generator.overrides.train.total_images = 32 * 24
        c.generator.overrides.train.lr_rampup_images = 320
        c.generator.overrides.train.ema_halflife_images = 500
        c.generator.overrides.train.checkpoint_every_steps = 8
        c.generator.overrides.sample.num_steps = 4
        c.generator.overrides.sample.batch_size = 40
        c.generator.overrides.sample.grid = 16
        c.classifier.overrides.batch_size = 32
        c.classifier.overrides.epochs = 1
        c.classifier.overrides.checkpoint_every_steps = 3
        c.evaluate.overrides.evaluate.max_real = 200
        c.evaluate.overrides.evaluate.max_synthetic = 200
        c.evaluate.overrides.evaluate.max_train = 100
        c.evaluate.overrides.evaluate.kid_subsets = 10
        c.evaluate.overrides.evaluate.kid_subset_size = 20
        c.report.samples_per_class = 4
    else:
        raise ValueError(f"quickstart: unknown variant {variant!r} "
                         "(default | train_generator | online | test)")
    return c
