"""The class-conditional CIFAR-10 EDM generator shipped with augdiff (``augdiff/assets``).

    augdiff train-diffusion --config configs/generator_cifar10.py \
        --config.workdir=runs/generator_cifar10

A plain class-conditional EDM (``mode=dm``, ``model.class_conditional``, label_dim 10: the
class labels enter through EDM's ``map_label`` path, Karras et al. 2022 App. F.2) on the full
real CIFAR-10 training split (50,000 images) resized to 16², the resolution of the
quickstart. The network is the ``tiny`` SongUNet preset (32 channels, channel multipliers
1, 2, one block per resolution, attention at the 8² bottleneck only): 750,243 parameters, so
the EMA weights are 3 MB in float32 (1.5 MB in float16). The
optimiser, EDM preconditioning and loss are those of ``configs/casd_cifar10.py`` (NVlabs/edm)
with the schedule shortened for a CPU budget: Adam lr 2e-3 ramped over 20k images, EMA
half-life 50k images (ramp-up ratio 0.1), batch 128. Rerunning the command resumes.

Sampling (``augdiff sample``): Heun, 12 steps. The shipped checkpoint is exported from the
run's EMA parameters with ``augdiff.edm.assets.export_generator``; its README/JSON beside it
records the config, data, duration and measured figures.

Variants: default; ``test`` (a few steps, for the test suite).
"""

from __future__ import annotations

import ml_collections

from augdiff.configs import casd_cifar10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = arg or "default"
    if arg not in ("default", "test"):
        raise ValueError(f"generator_cifar10: unknown variant {arg!r} (default | test)")
    c = casd_cifar10.get_config("classcond")
    c.workdir = "runs/generator_cifar10"
    c.num_samples = 1000
    c.data.image_size = 16
    c.data.split = "train"
    c.data.classes = ""
    c.model.preset = "tiny"
    c.model.model_channels = 32
    c.model.num_blocks = 1
    c.model.dropout = 0.0
    # Trained before EDM's augmentation pipe existed in augdiff: no pipe (p = 0), no augment
    # labels; the shipped checkpoint records the same.
    c.augment.p = 0.0
    # Trained with the loss averaged over pixels (the reduction of augdiff before EDM's sum
    # over pixels became the default); with Adam the two differ only by a constant factor in
    # the gradients, but a resumed run must keep the one its optimiser state was built with.
    c.train.loss_reduction = "mean"
    c.train.batch_size = 128
    c.train.lr = 2e-3
    c.train.lr_rampup_images = 20_000
    c.train.ema_halflife_images = 50_000
    c.train.ema_rampup_ratio = 0.1
    c.train.total_images = 128 * 40_000
    c.train.checkpoint_every_steps = 100
    c.train.keep_checkpoints = 0  # keep every checkpoint (the accuracy-vs-images curve)
    c.train.log_every_steps = 50
    c.sample.sampler = "heun"
    c.sample.num_steps = 12
    c.sample.batch_size = 250
    c.sample.grid = 100
    if arg == "test":
        c.workdir = "runs/generator_cifar10_test"
        c.data.per_class = 4
        c.model.model_channels = 16
        c.train.batch_size = 8
        c.train.total_images = 8 * 4
        c.train.checkpoint_every_steps = 2
        c.train.log_every_steps = 1
        c.sample.num_steps = 3
        c.sample.batch_size = 10
        c.sample.grid = 10
    return c
