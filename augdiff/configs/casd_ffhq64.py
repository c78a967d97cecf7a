"""CASD on FFHQ 64×64 (seed 004): the EDM DDPM++ FFHQ-64 recipe on real ∪ synthetic faces.

    augdiff train-diffusion --config configs/casd_ffhq64.py --config.data.path=FFHQ_DIR \
        --config.synthetic.stores=STORE --config.mode={dm,sda,casd} --config.workdir=DIR
    augdiff sample --config configs/casd_ffhq64.py --config.workdir=DIR --config.num_samples=N

Recipe (seed 004 Table 9; NVlabs/edm ``train.py --cond=0 --arch=ddpmpp --cres=1,2,2,2
--lr=2e-4 --dropout=0.05 --augment=0.15``): channel_mult (1, 2, 2, 2), dropout 0.05, batch 512
as Table 9 (EDM used 256: ``--config.train.batch_size=256``), augment p 0.15, Adam lr
2e-4, LR ramp-up 10 M images, EMA half-life 0.5 M images (ramp-up ratio 0.05), 60 M images
(Table 9, read as in ``configs/casd_cifar10.py``; EDM: 200 M);
Heun with 40 steps (NFE 79). ``data.path`` is an image folder / zip with a ``train`` split
(one class folder is enough). Variants: default, ``smoke`` (tiny net, CIFAR-10 at 16² with a
colour-inverted synthetic source; see ``configs/casd_cifar10.py``).
"""

from __future__ import annotations

import ml_collections

from augdiff.configs import casd_cifar10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = arg or "default"
    cifar = casd_cifar10
    if arg == "smoke":
        c = cifar.get_config("smoke")
        c.workdir = "runs/casd_ffhq64_smoke"
        c.synthetic.shift = "invert"
        return c
    if arg != "default":
        raise ValueError(f"casd_ffhq64: unknown variant {arg!r} (default | smoke)")
    c = cifar.get_config("default")
    c.workdir = "runs/casd_ffhq64"
    c.data.path = ""  # FFHQ image folder / zip with a train split: --config.data.path=...
    c.data.image_size = 64
    c.model.preset = "ffhq64"
    c.model.dropout = 0.05
    c.train.batch_size = 512  # seed 004 Table 9 (NVlabs/edm's FFHQ recipe: --batch=256)
    c.train.lr = 2e-4
    c.augment.p = 0.15  # Table 9
    c.sample.num_steps = 40  # Heun: NFE 79
    c.sample.batch_size = 128
    return c
