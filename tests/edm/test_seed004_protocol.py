"""Seed 004's protocol details as the paper states them (App. A.1, Table 9, §4.3).

- ``_n<N>`` rows (Table 1): "we use the first n samples as the real training data" (App.
  A.1). The wire is tested end to end: the experiment config, the generator config derived
  from it, and the rows the EDM trainer opens. Each image of the fixture carries its position
  in its class folder as its pixel value, so the expected rows are written down directly.
- Table 9's training length ("Total king | 60 | 60", OCR-garbled) read as 60 M images.
- §4.3's case 2 ("the last 8 classes"): the docstring names the classes that are missing.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from augdiff.config import load_config
from augdiff.data.sources import DataSourceError, open_real_source
from augdiff.edm import train as edm_train
from augdiff.pipeline import mismatch
from augdiff.pipeline.wiring import generator_config

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def _folder(root, per_class: int = 6) -> None:
    """Two classes; image ``j`` of class ``k`` (file ``j:03d.png``) is constant ``20 j + k``."""
    for k, name in enumerate(("a", "b")):
        d = root / "train" / name
        d.mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 20 * j + k, np.uint8)).save(d / f"{j:03d}.png")


def test_n_rows_train_on_the_first_n_images_of_each_class(repo_root, tmp_path):
    _folder(tmp_path / "data")
    c = load_config(str(repo_root / "augdiff/configs/exp_seed004_casd.py:casd_n3"))
    assert c.data.first_per_class == 3 and c.data.per_class == 0  # not a random subset
    c.data.path = str(tmp_path / "data")
    c.data.image_size = 8
    c.workdir = str(tmp_path / "run")
    sub = generator_config(c)
    assert sub.data.first_per_class == 3 and sub.data.per_class == 0
    real = edm_train.open_real(sub)
    got = sorted((int(real[i]["label"]), int(real[i]["image"][0, 0, 0]))
                 for i in range(len(real)))
    # the first three files of each class: j = 0, 1, 2 -> pixel 20 j + k
    assert got == [(0, 0), (0, 20), (0, 40), (1, 1), (1, 21), (1, 41)]
    # the experiment's own data (what `prepare` records and evaluation replicates against)
    # is the same subset: the first n are drawn where every stage opens its real data
    prep = open_real_source(c.data, "train")
    assert sorted((int(prep[i]["label"]), int(prep[i]["image"][0, 0, 0]))
                  for i in range(len(prep))) == got
    c.data.per_class = 2  # a random subset and the first n: one or the other
    with pytest.raises(DataSourceError, match="first_per_class"):
        open_real_source(c.data, "train")


def test_table9_training_length_is_60_mimg(repo_root):
    casd = load_config(str(repo_root / "augdiff/configs/casd_cifar10.py"))
    assert casd.train.total_images == 60_000_000
    ffhq = load_config(str(repo_root / "augdiff/configs/casd_ffhq64.py"))
    assert ffhq.train.total_images == 60_000_000
    # the generators of the synthetic data are plain EDMs (App. A.1.2): EDM's 200 M images
    gen = load_config(str(repo_root / "augdiff/configs/casd_cifar10.py:classcond"))
    assert gen.train.total_images == 200_000_000


def test_case2_docstring_names_the_missing_classes():
    assert mismatch.CASES["case2"] == CIFAR10[-8:]  # "the last 8 classes"
    missing = [n for n in mismatch.REAL_CLASSES if n not in mismatch.CASES["case2"]]
    assert missing == ["airplane", "automobile"]
    doc = mismatch.__doc__.split("- case 2:")[1].split("- case 3:")[0]
    assert "plane and car are missing" in doc and "bird … truck" in doc
