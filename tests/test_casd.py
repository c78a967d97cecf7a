"""CASD's source label does what seed 004 says (the issue's point 3), on the CPU in minutes.

Real data: CIFAR-10 airplanes and ships at 8². Synthetic data: the same images with a strong
red cast (:func:`augdiff.edm.train.shift_colours`, ``(0.5R + 127, 0.4G, 0.4B)``), mixed 1:1.
A tiny SongUNet is trained with equal budgets (same steps, batch, seed, data stream) in SDA
mode (no label) and in CASD mode (source label y), then sampled with the Heun sampler — CASD
with y = 0 (real). Statistic: the redness ``mean(R − (G + B)/2)`` of the images, in uint8
units, and where samples sit on the segment real (0) → synthetic (1). Measured (80 steps of
32, 32 samples, Heun 6 steps, seed 0): real −10.2, synthetic +136.0, SDA +47.7 (position
0.40: it learns the mixture), CASD with y = 0 −11.8 (position −0.01: the real statistics).
"""

from __future__ import annotations

import numpy as np
import pytest

from augdiff.config import load_config
from augdiff.data.store import SyntheticStore
from augdiff.edm import sampling
from augdiff.edm import train as edm_train


def redness(images: np.ndarray) -> float:
    """``mean(R − (G + B)/2)`` over all pixels of uint8 RGB images [N, H, W, 3]."""
    x = images.astype(np.float64)
    return float(np.mean(x[..., 0] - 0.5 * (x[..., 1] + x[..., 2])))


def _config(repo_root, cifar_zip, workdir, mode):
    c = load_config(str(repo_root / "configs/casd_cifar10.py:smoke"))
    c.workdir = str(workdir)
    c.mode = mode
    c.data.path = str(cifar_zip)
    c.data.image_size = 8
    c.data.per_class = 64
    c.data.classes = "airplane,ship"
    c.synthetic.shift = "red_tint"
    c.synthetic.shift_count = 128
    c.synthetic.fraction = 0.5
    c.train.batch_size = 32
    c.train.total_images = 32 * 80
    c.train.lr = 2e-3
    c.train.lr_rampup_images = 32 * 20
    c.train.ema_halflife_images = 32 * 10
    c.train.checkpoint_every_steps = 10_000
    c.train.log_every_steps = 40
    c.num_samples = 32
    c.sample.num_steps = 6
    c.sample.batch_size = 32
    c.sample.source_label = 0
    c.sample.grid = 16
    return c


@pytest.mark.slow
def test_casd_label_keeps_real_statistics_where_sda_drifts(repo_root, cifar_zip, tmp_path):
    stats = {}
    for mode in ("sda", "casd"):
        c = _config(repo_root, cifar_zip, tmp_path / mode, mode)
        edm_train.train(c)
        sampling.sample_to_store(c)
        store = SyntheticStore(tmp_path / mode / "store")
        stats[mode] = redness(np.stack([store[i]["image"] for i in range(len(store))]))
    real = edm_train.open_real(c)
    real_imgs = np.stack([real[i]["image"] for i in range(len(real))])
    stats["real"] = redness(real_imgs)
    stats["synthetic"] = redness(edm_train.shift_colours(real_imgs, "red_tint"))
    print("redness", stats)
    gap = stats["synthetic"] - stats["real"]
    # where the samples sit between real (0) and synthetic (1)
    pos = {m: (stats[m] - stats["real"]) / gap for m in ("sda", "casd")}
    print("position between real (0) and synthetic (1)", pos)
    assert abs(pos["casd"]) < 0.15  # CASD y = 0 reproduces the real colour statistics
    assert pos["sda"] > 0.25  # SDA drifts toward the synthetic source
    assert pos["sda"] - pos["casd"] > 0.25
