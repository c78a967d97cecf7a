"""The reference classifier: trained once on the full real split, cached by data + config."""

from __future__ import annotations

import json
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import augdiff.train.classifier as C
from augdiff.config import load_config
from augdiff.data.selection import load_images, select_rows
from augdiff.data.sources import open_real_source
from augdiff.metrics.features import get_extractor, reference_extractor
from augdiff.models.classifiers import get_classifier
from augdiff.train import reference as R
from augdiff.train.checkpoint import Checkpointer
from augdiff.train.reference import data_identity

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


def _make(tmp_path, repo_root):
    _folder(tmp_path / "data")
    spec = tmp_path / "ref_cfg.py"
    spec.write_text(CONFIG.format(classify=str(repo_root / "augdiff/configs/classify_cifar10.py")))
    ex = ml_collections.ConfigDict({"name": "reference", "reference": str(spec),
                                    "reference_epochs": 0, "cache_dir": str(tmp_path / "cache"),
                                    "batch_size": 8, "texture": True})
    data = ml_collections.ConfigDict({"path": str(tmp_path / "data"), "tfds_name": "",
                                      "image_size": 8, "channels": 3, "skip_corrupt": False,
                                      "per_class": 2, "imbalance_factor": 1.0,
                                      "train_split": "train", "test_split": "test"})
    return tmp_path, ex, data


@pytest.fixture()
def setup(tmp_path, repo_root):
    return _make(tmp_path, repo_root)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, repo_root):
    """A reference run in the cache without training: a randomly initialised classifier saved
    where :func:`ensure_reference` looks (its weights do not matter to the tests below)."""
    tmp_path, ex, data = _make(tmp_path_factory.mktemp("ref"), repo_root)
    key = R.reference_key(R.reference_config(ex, data))
    run = tmp_path / "cache" / "reference_classifiers" / key
    model = get_classifier("preact_resnet_tiny", 2, width=8, stem="cifar")
    v = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 3)), train=False))(
        jax.random.key(3))
    with Checkpointer(run / "checkpoints", max_to_keep=None) as ck:
        ck.save(1, {"params": v["params"], "batch_stats": v["batch_stats"]}, {})
    rec = {"key": key, "model": "preact_resnet_tiny", "width": 8, "stem": "cifar",
           "image_size": 8, "num_classes": 2, "num_train": 16, "test_top1": 0.5, "epochs": 1}
    (run / "reference.json").write_text(json.dumps(rec))
    return tmp_path, ex, data, R.ensure_reference(ex, data, log=lambda m: None)


def _numpy_texture(images, seed=0, num=32):
    """τ(x) written from its definition: filters N(0, 1) / sqrt(9 C) from numpy's PCG64,
    zero-padded 3x3 correlation of the [-1, 1] image, spatial std per filter."""
    x = images.astype(np.float64) / 127.5 - 1.0
    b, h, w, c = x.shape
    filt = np.random.default_rng(seed).standard_normal((3, 3, c, num)) / np.sqrt(9.0 * c)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((b, h, w, num))
    for dy in range(3):
        for dx in range(3):
            y += np.einsum("bhwc,cn->bhwn", xp[:, dy:dy + h, dx:dx + w], filt[dy, dx])
    return y.std(axis=(1, 2))


def _train_images(root):
    paths = sorted((root / "data" / "train").rglob("*.png"))
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def test_texture_block_follows_its_definition(trained):
    tmp_path, ex, data, rec = trained
    plain = get_extractor(ml_collections.ConfigDict({**ex.to_dict(), "texture": False}),
                          data=data)
    both = get_extractor(ex, data=data)
    assert both.dim == plain.dim + 32 and "texture" in both.name
    train = _train_images(tmp_path)  # 16 images < 1,000: all of them set the scales
    probe = np.random.default_rng(5).integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    got = both(probe)

    def total_std(f):  # sqrt(trace of the covariance, ddof = 1)
        f = np.asarray(f, np.float64)
        return np.sqrt(((f - f.mean(0)) ** 2).sum() / (len(f) - 1))

    np.testing.assert_allclose(got[:, :plain.dim], plain(probe) / total_std(plain(train)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[:, plain.dim:],
                               _numpy_texture(probe) / total_std(_numpy_texture(train)),
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(both.classify(probe), plain.classify(probe))


def test_shipped_copy_is_found_before_training(trained, tmp_path, monkeypatch):
    """export_reference → the package-data layout → found with an empty cache, loaded through
    the same restore path, same features, no training."""
    root, ex, data, rec = trained
    before = get_extractor(ex, data=data)
    assets = tmp_path / "assets"
    out = R.export_reference(rec["workdir"], str(assets))
    assert out.endswith(rec["key"]) and (assets / "reference_classifiers" / rec["key"] /
                                          "reference.json").exists()

    def boom(*a, **k):
        raise AssertionError("the shipped reference classifier was trained again")

    monkeypatch.setattr(C, "train_and_evaluate", boom)
    monkeypatch.setattr(R, "SHIPPED", str(assets))
    empty = ml_collections.ConfigDict({**ex.to_dict(), "cache_dir": str(tmp_path / "empty")})
    found = R.ensure_reference(empty, data, log=lambda m: None)
    assert found["workdir"] == out
    after = get_extractor(empty, data=data)
    probe = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3)).astype(np.uint8)
    np.testing.assert_allclose(after(probe), before(probe), rtol=1e-6)
    state = assets / "reference_classifiers" / rec["key"] / "checkpoints"
    assert not any("opt_state" in p.read_text(errors="ignore")
                   for p in state.rglob("_METADATA"))  # parameters + BN statistics only


def test_trained_once_on_the_full_split_then_reused(setup, monkeypatch):
    tmp_path, ex, data = setup
    rec = R.ensure_reference(ex, data, log=lambda m: None)
    assert rec["num_train"] == 16  # the full split, not data.per_class = 2 per class
    assert (tmp_path / "cache" / "reference_classifiers" / rec["key"] / "reference.json").exists()

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
    for name in ("a.zip", "b.zip"):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr("train/x/0.png", b"abc")
    ida = data_identity({"path": str(tmp_path / "a.zip")})
    assert ida == data_identity({"path": str(tmp_path / "b.zip")})
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
        zf.writestr("train/x/0.png", b"abd")
    assert data_identity({"path": str(tmp_path / "c.zip")}) != ida
    assert json.dumps(ida)  # JSON-serialisable (it is hashed into the key)


def test_shipped_cifar10_reference_is_used_by_the_quickstart(cifar_zip, repo_root, tmp_path,
                                                             monkeypatch):
    """The quickstart's extractor config on the real zip finds the copy in
    ``augdiff/assets`` with an empty cache (no training) and it has learned CIFAR-10."""

    def boom(*a, **k):
        raise AssertionError("the shipped reference classifier was trained again")

    monkeypatch.setattr(C, "train_and_evaluate", boom)
    monkeypatch.setenv("AUGDIFF_CACHE", str(tmp_path / "empty"))
    qs = load_config(str(repo_root / "augdiff/configs/quickstart.py"))
    qs.data.path = str(cifar_zip)
    ex = load_config(qs.evaluate.config).extractor
    ex.texture = False
    rec = R.ensure_reference(ex, qs.data, log=lambda m: None)
    shipped = repo_root / "augdiff/assets/reference_classifiers" / rec["key"]
    assert rec["workdir"] == str(shipped) and rec["num_train"] == 50000
    extractor = reference_extractor(ex, qs.data)
    test = open_real_source(qs.data, "test", subset=False)
    images, labels = load_images(test, select_rows(np.asarray(test.labels), None, 300, 0))
    acc = float(np.mean(extractor.classify(images) == labels))
    assert acc > 0.6, acc  # recorded: 74.3 % on the full test split; chance is 10 %


def test_reference_key_ignores_synthetic_fields_and_not_training_fields(repo_root):
    """The judge trains on real data only: a synthetic-data field added to the classifier
    config must not move its key off the shipped copy; a training field must."""
    qs = load_config(str(repo_root / "augdiff/configs/quickstart.py"))
    sub = R.reference_config(load_config(qs.evaluate.config).extractor, qs.data)
    key = R.reference_key(sub)
    assert (repo_root / "augdiff/assets/reference_classifiers" / key / "reference.json").exists()
    assert sub.synthetic.path == "" and sub.synthetic.online.kind == "none"
    with sub.unlocked():
        sub.synthetic.online.some_new_field = 7
        sub.synthetic.label_weight = 0.5
    assert R.reference_key(sub) == key
    sub.epochs = int(sub.epochs) + 1
    assert R.reference_key(sub) != key
