"""Online vs offline synthetic data at quickstart scale (CIFAR-10 at 16², 100 real images per
class; the question seed 000 §4.6 and seed 003 §4.1 leave open: does a generator sampled during
training beat the same generator's images written once?).

The whole experiment (stores, every row and seed, ``report.md``) is one command::

    python tools/online_experiment.py --workdir runs/online_cifar10 --seeds 0,1,2

which runs, per row and seed, ``augdiff train --config configs/online_cifar10.py:ROW
--config.seed=S --config.workdir=runs/online_cifar10/ROW/seed_S`` (the ``offline`` row with
``--config.synthetic.path`` = a store sampled by ``augdiff sample`` from the same generator
with the same sampler and seed).

The generator is the class-conditional EDM shipped in ``augdiff/assets/generator_cifar10``;
Heun ``N = 10`` (NFE 19) everywhere. Rows (half of every mixed batch synthetic, the same
classifier, 4 epochs of 15 steps unless said):

- ``real``: real images only (the whole batch real);
- ``offline``: a store of N = 512 images written before training, mixed 1:1;
- ``online_count``: the generator sampled during training, the same N = 512 generated images
  (a 128-row replay buffer refreshed every 15 steps: 4 refreshes);
- ``online_fresh``: a fresh image for every synthetic row of every step (60 · 32 = 1,920
  images), the same number of classifier steps;
- ``online_wall``: fresh rows every step for the offline row's wall time (store sampling +
  training): the driver sets ``steps_per_epoch`` from the measured times (4 epochs of
  ``K / 4`` steps).
"""

from __future__ import annotations

import ml_collections

from augdiff.config import SHIPPED_GENERATOR
from augdiff.configs import classify_cifar10

ROWS = ("real", "offline", "online_count", "online_fresh", "online_wall")
GENERATOR = SHIPPED_GENERATOR
NUM_STEPS = 10  # Heun N of every row (the offline store is sampled with the same)
NUM_GENERATED = 512


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    row = arg or "online_fresh"
    if row not in ROWS:
        raise ValueError(f"online_cifar10: row {row!r} unknown; choose from {ROWS}")
    c = classify_cifar10.get_config("smoke")
    c.workdir = f"runs/online_cifar10/{row}"
    c.data.image_size = 16
    c.data.per_class = 100
    c.model.width = 16
    c.batch_size = 64
    c.epochs = 4
    c.augment.crop_pad = 2
    c.steps_per_epoch = 15  # 1,000 real images / 64, as in the quickstart's train_real
    if row == "offline":
        c.synthetic.path = "runs/online_cifar10/store_seed_0"  # the driver sets it per seed
        c.synthetic.schedule.kind = "constant"
        c.synthetic.schedule.rho = "1:1"
    elif row.startswith("online"):
        on = c.synthetic.online
        on.kind = "edm"
        on.checkpoint = GENERATOR
        on.share = 0.5
        on.num_steps = NUM_STEPS  # NFE 19
        if row == "online_count":
            on.buffer_size, on.refresh_every = NUM_GENERATED // 4, c.steps_per_epoch
        else:
            on.buffer_size, on.refresh_every = 0, 1
    return c
