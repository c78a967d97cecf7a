"""The config pieces experiments share, written once (big_vision's ``configs/common.py``).

An experiment config (``configs/exp_*.py``, ``configs/quickstart.py``) is
:func:`experiment` (name, workdir, seeds, stages, ``data``, ``mesh``) plus the sections of
``augdiff run`` it uses: :func:`generator`, :func:`classifier`, :func:`mixed`,
:func:`evaluate` and :func:`report`. Command configs take :func:`data_config` and
:func:`mesh_config`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

DEFAULT_DATA_PATH = "../shared/data/cifar10-jpeg.zip"


def data_config(**fields: Any) -> ml_collections.ConfigDict:
    """The ``data`` block every experiment shares (one home for its fields and defaults).

    ``path`` is an image-folder tree ``root/<split>/<class>/*`` or the same tree in a zip
    (default: the shared CIFAR-10 zip beside the repository); ``tfds_name`` a TFDS dataset
    instead; ``per_class`` > 0 takes a few-shot subset, ``imbalance_factor`` > 1 a long-tailed
    one (both drawn from ``subset_seed``). Extra keyword fields are added as they are.
    """
    c = ml_collections.ConfigDict()
    c.path = DEFAULT_DATA_PATH
    c.tfds_name = ""
    c.image_size = 32
    c.channels = 3
    c.skip_corrupt = True
    c.per_class = 0
    c.imbalance_factor = 1.0
    c.subset_seed = 0
    c.train_split = "train"
    c.test_split = "test"
    for k, v in fields.items():
        c[k] = v
    return c


def mesh_config(data: int = -1, fsdp: int = 1) -> ml_collections.ConfigDict:
    """The ``mesh`` block: ``data`` × ``fsdp`` devices (-1 = all that are left)."""
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp})


def experiment(name: str, *, description: str, workdir: str, seeds: Sequence[int],
               stages: Sequence[str], data: ml_collections.ConfigDict,
               variant: str = "") -> ml_collections.ConfigDict:
    """The top of an ``augdiff run`` config: its ``name`` and ``variant`` (the report's title
    names both), ``seed`` 0 (subsets, generation), the training ``seeds``, the ``stages`` in
    order, ``rerun`` (stages to start over), ``data`` and an all-devices ``mesh``."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.variant = variant
    c.description = description
    c.workdir = workdir
    c.seed = 0
    c.seeds = tuple(seeds)
    c.stages = tuple(stages)
    c.rerun = ""  # comma-separated stages to start over (with every later stage)
    c.data = data
    c.mesh = mesh_config()
    return c


def _section(**fields: Any) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    for k, v in fields.items():
        c[k] = v
    return c


def _overrides(values: Mapping[str, Any] | None) -> ml_collections.ConfigDict:
    """A section's ``overrides``: nested fields set on the stage's own config."""
    return ml_collections.ConfigDict(dict(values or {}))


def generator(kind: str, config: str, *, checkpoint: str = "", store: str = "",
              weights: str = "", num_samples: int = 0,
              overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """``generator``: ``kind`` edm (``config`` an EDM train/sample config; ``checkpoint`` a
    train-diffusion workdir or shipped generator, else the ``train_generator`` stage trains
    one) | method (``config`` an ``augdiff generate`` config; ``weights`` names the SD weights
    it uses, for the report) | store (``store`` an existing synthetic store)."""
    return _section(kind=kind, config=config, checkpoint=checkpoint, store=store,
                    weights=weights, num_samples=num_samples, overrides=_overrides(overrides))


def classifier(config: str, overrides: Mapping[str, Any] | None = None
               ) -> ml_collections.ConfigDict:
    """``classifier``: the ``augdiff train`` config of the training stages."""
    return _section(config=config, overrides=_overrides(overrides))


def mixed(rho: str, kind: str = "constant") -> ml_collections.ConfigDict:
    """``mixed``: the synthetic share of ``train_mixed`` batches (a ρ(t) schedule of
    :mod:`augdiff.data.schedules`; ``rho = 'union'`` is the share ``n_syn / (n_real + n_syn)``
    of training on the union)."""
    return _section(schedule=ml_collections.ConfigDict(
        {"kind": kind, "rho": rho, "total": 0, "warmup": 0, "t1": 0, "t2": 0}))


def evaluate(config: str, overrides: Mapping[str, Any] | None = None
             ) -> ml_collections.ConfigDict:
    """``evaluate``: the ``augdiff evaluate`` config of the ``evaluate`` / ``pca`` stages."""
    return _section(config=config, overrides=_overrides(overrides))


def report(title: str = "", samples_per_class: int = 8) -> ml_collections.ConfigDict:
    """``report``: the title of ``report.md`` (``""``: written from the run — config name and
    variant, the data read, the generator) and the sample-grid size."""
    return _section(title=title, samples_per_class=samples_per_class)


# The smoke variants' evaluation sizes (a few hundred images, small KID subsets).
SMOKE_EVALUATE = {"evaluate": {"max_real": 200, "max_synthetic": 200, "max_train": 100,
                               "kid_subsets": 10, "kid_subset_size": 20}}
