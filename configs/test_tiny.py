"""Tiny variants of the real stage configs for the multi-process and reliability tests.

    augdiff train --config configs/test_tiny.py:classify --config.data.path=DIR --config.workdir=W
    augdiff train-diffusion --config configs/test_tiny.py:edm --config.data.path=ZIP ...
    augdiff sample --config configs/test_tiny.py:edm --config.workdir=W --config.num_samples=N

Variants (every field of the full configs is kept, only sizes shrink, so these exercise the
same code paths as the real experiments):

- ``classify`` (alias ``smoke``): ``classify_cifar10`` with a width-8 ``preact_resnet_tiny``,
  global batch 8, two epochs of at most 4 steps, a checkpoint after every step, no progress
  bar. Point ``data.path`` at a small image folder (the tests cut one out of the CIFAR-10 zip)
  so that the per-epoch evaluation of the *whole* test split stays cheap.
- ``edm``: ``casd_cifar10`` in ``dm`` mode (no synthetic store to build) on two CIFAR-10
  classes at 8x8: a tiny SongUNet, global batch 8, 6 steps, a checkpoint every 2 steps;
  sampling with Heun over 3 steps (NFE 5) writing store shards of ``sample.shard_size``
  examples, so that a killed sampling run has complete shards to resume from.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def _sibling(name: str):
    """Import ``configs/<name>.py`` (configs is not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"augdiff_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def classify() -> ml_collections.ConfigDict:
    c = _sibling("classify_cifar10").get_config("smoke")
    c.workdir = "runs/test_tiny_classify"
    c.data.per_class = 0
    c.model.width = 8
    c.batch_size = 8
    c.epochs = 2
    c.steps_per_epoch = 4
    c.eval_batch_size = 8
    c.checkpoint_every_steps = 1
    c.keep_checkpoints = 2
    c.log_every_steps = 1
    c.progress = False
    return c


def edm() -> ml_collections.ConfigDict:
    c = _sibling("casd_cifar10").get_config("smoke")
    c.workdir = "runs/test_tiny_edm"
    c.mode = "dm"
    c.num_samples = 12
    c.data.image_size = 8
    c.data.per_class = 16
    c.data.classes = "airplane,ship"
    c.synthetic.shift = ""
    c.synthetic.shift_count = 0
    c.model.model_channels = 8
    c.train.batch_size = 8
    c.train.total_images = 48  # 6 steps
    c.train.lr_rampup_images = 16
    c.train.checkpoint_every_steps = 2
    c.train.log_every_steps = 1
    c.sample.num_steps = 3
    c.sample.batch_size = 4
    c.sample.grid = 0
    c.sample.shard_size = 4  # examples per store shard (resume granularity)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "smoke"
    if variant in ("smoke", "classify"):
        return classify()
    if variant == "edm":
        return edm()
    raise ValueError(f"test_tiny: unknown variant {variant!r} (smoke | classify | edm)")
