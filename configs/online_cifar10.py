"""Online vs offline synthetic data at quickstart scale (CIFAR-10 at 16², 100 real images per
class; the question seed 000 §4.6 and seed 003 §4.1 leave open: does a generator sampled during
training beat the same generator's images written once?).

Needs the quickstart's generator and store (``augdiff run --config configs/quickstart.py
--config.workdir=runs/quickstart``), then one ``augdiff train`` per row and seed::

    augdiff train --config configs/online_cifar10.py:ROW --config.seed=S \\
        --config.workdir=runs/online_cifar10/ROW/seed_S

Rows (half of every batch synthetic, the same classifier, 4 epochs of 15 steps):

- ``real``: real images only (the whole batch real);
- ``offline``: the quickstart store of N = 500 images, mixed 1:1;
- ``online_count``: the generator sampled during training, the same total N ≈ 500 generated
  images (a 128-row replay buffer refreshed every 15 steps: 4 refreshes, 512 images);
- ``online_unbounded``: a fresh image for every synthetic row of every step (60 · 32 = 1,920
  images); compare at equal wall time by the ``train_loop_s`` of ``run.json``.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

ROWS = ("real", "offline", "online_count", "online_unbounded")
HERE = os.path.dirname(os.path.abspath(__file__))


def _classify():
    spec = importlib.util.spec_from_file_location("classify_cifar10",
                                                  os.path.join(HERE, "classify_cifar10.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    row = arg or "online_unbounded"
    if row not in ROWS:
        raise ValueError(f"online_cifar10: row {row!r} unknown; choose from {ROWS}")
    c = _classify().get_config("smoke")
    c.workdir = f"runs/online_cifar10/{row}"
    c.data.image_size = 16
    c.data.per_class = 100
    c.model.width = 16
    c.batch_size = 64
    c.epochs = 4
    c.augment.crop_pad = 2
    c.steps_per_epoch = 15  # 1,000 real images / 64, as in the quickstart's train_real
    if row == "offline":
        c.synthetic.path = "runs/quickstart/generate/store"
        c.synthetic.schedule.kind = "constant"
        c.synthetic.schedule.rho = "1:1"
    elif row.startswith("online"):
        on = c.synthetic.online
        on.kind = "edm"
        on.checkpoint = "runs/quickstart/train_generator"
        on.share = 0.5
        on.num_steps = 10  # the quickstart's sample.num_steps (NFE 19)
        if row == "online_count":
            on.buffer_size, on.refresh_every = 128, 15
        else:
            on.buffer_size, on.refresh_every = 0, 1
    return c
