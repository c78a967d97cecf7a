"""The reference classifier: trained once on the full real split, cached by data + config."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

CONFIG = '''
import importlib.util, os
def get_config(arg=None):
    path = {classify!r}
    spec = importlib.util.spec_from_file_location("cls_cfg_for_test", path)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    c = m.get_config("reference")
    c.batch_size = 8
    c.eval_batch_size = 8
    c.epochs = 1
    c.progress = False
    c.model.width = 8
    return c
'''


def _folder(root, per_class=8, size=8):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k, name in enumerate(["dark", "light"]):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                base = 40 if k == 0 else 210
                img = np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")


@pytest.fixture()
def setup(tmp_path, repo_root):
    _folder(tmp_path / "data")
    spec = tmp_path / "ref_cfg.py"
    spec.write_text(CONFIG.format(classify=str(repo_root / "configs/classify_cifar10.py")))
    ex = ml_collections.ConfigDict({"name": "reference", "reference": str(spec),
                                    "reference_epochs": 0, "cache_dir": str(tmp_path / "cache"),
                                    "batch_size": 8})
    data = ml_collections.ConfigDict({"path": str(tmp_path / "data"), "tfds_name": "",
                                      "image_size": 8, "channels": 3, "skip_corrupt": False,
                                      "per_class": 2, "imbalance_factor": 1.0,
                                      "train_split": "train", "test_split": "test"})
    return tmp_path, ex, data


def test_trained_once_on_the_full_split_then_reused(setup, monkeypatch):
    from augdiff.metrics import reference as R
    from augdiff.metrics.features import get_extractor

    tmp_path, ex, data = setup
    rec = R.ensure_reference(ex, data, log=lambda m: None)
    assert rec["num_train"] == 16  # the full split, not data.per_class = 2 per class
    assert (tmp_path / "cache" / "reference_classifiers" / rec["key"] / "reference.json").exists()

    import augdiff.train.classifier as C

    def boom(*a, **k):
        raise AssertionError("the cached reference classifier was trained again")

    monkeypatch.setattr(C, "train_and_evaluate", boom)
    again = R.ensure_reference(ex, data, log=lambda m: None)
    assert again["key"] == rec["key"]
    extractor = get_extractor(ex, data=data)
    assert extractor.name.startswith("reference:preact_resnet_tiny-w8:" + rec["key"][:8])
    imgs = np.zeros((3, 8, 8, 3), np.uint8)
    assert extractor(imgs).shape == (3, extractor.dim)
    assert extractor.classify(imgs).shape == (3,)

    # the key follows the data: one more training image gives another key
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data/train/dark/extra.png")
    assert R.reference_key(R.reference_config(ex, data)) != rec["key"]
    # ... but not where it lies
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    data.path = str(moved)
    assert R.reference_key(R.reference_config(ex, data)) != rec["key"]  # extra.png still there
    (moved / "train/dark/extra.png").unlink()
    assert R.reference_key(R.reference_config(ex, data)) == rec["key"]


def test_data_identity_of_a_zip_ignores_location(tmp_path):
    import zipfile

    from augdiff.metrics.reference import data_identity

    for name in ("a.zip", "b.zip"):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr("train/x/0.png", b"abc")
    ida = data_identity({"path": str(tmp_path / "a.zip")})
    assert ida == data_identity({"path": str(tmp_path / "b.zip")})
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
        zf.writestr("train/x/0.png", b"abd")
    assert data_identity({"path": str(tmp_path / "c.zip")}) != ida
    assert json.dumps(ida)  # JSON-serialisable (it is hashed into the key)
