"""Real sources (folder, zip, TFDS, the shared CIFAR-10 zip) and deterministic subsets."""

from __future__ import annotations

import pickle
import zipfile

import grain
import ml_collections
import numpy as np
import pytest
from PIL import Image

from augdiff.data import subsets
from augdiff.data.sources import CorruptImageError, DataSourceError, open_real_source

CIFAR_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def data_cfg(**kw) -> ml_collections.ConfigDict:
    base = dict(
        path="",
        tfds_name="",
        image_size=8,
        channels=3,
        skip_corrupt=False,
        per_class=0,
        imbalance_factor=1.0,
        subset_seed=0,
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _write_tree(root, corrupt=False, empty_class=False):
    """root/train/{cat,ant,bee}/ with RGB png, grayscale jpg, RGBA png and odd sizes."""
    rng = np.random.default_rng(0)
    files = {
        "cat": [("0.png", Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)))],
        "ant": [
            ("a.jpg", Image.fromarray(rng.integers(0, 256, (10, 6), np.uint8), "L")),
            ("b.png", Image.fromarray(np.full((16, 16, 3), 200, np.uint8))),
        ],
        "bee": [
            # fully transparent RGBA: composited over white
            ("t.png", Image.fromarray(np.zeros((12, 12, 4), np.uint8), "RGBA")),
            ("u.PNG", Image.fromarray(rng.integers(0, 256, (4, 20, 3), np.uint8))),
        ],
    }
    for cls, items in files.items():
        d = root / "train" / cls
        d.mkdir(parents=True)
        for name, img in items:
            img.save(d / name)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "train" / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    if empty_class:
        (root / "train" / "dog").mkdir()
    return root


def _zip_tree(tree, zip_path, prefix="mydata/"):
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(tree.rglob("*")):
            arc = prefix + str(p.relative_to(tree))
            if p.is_dir():
                zf.writestr(arc + "/", b"")
            else:
                zf.write(p, arc)
    return zip_path


def test_folder_source_layout_and_conversion(tmp_path):
    root = _write_tree(tmp_path / "ds")
    src = open_real_source(data_cfg(path=str(root)), "train")
    assert src.class_names == ["ant", "bee", "cat"]
    assert src.num_classes == 3 and len(src) == 5
    np.testing.assert_array_equal(src.labels, [0, 0, 1, 1, 2])
    for i in range(len(src)):
        rec = src[i]
        assert rec["image"].shape == (8, 8, 3) and rec["image"].dtype == np.uint8
        assert rec["label"].dtype == np.int32 and int(rec["label"]) == src.labels[i]
        assert int(rec["source"]) == 0 and float(rec["weight"]) == 1.0 and int(rec["index"]) == i
    # grayscale JPEG → 3 equal channels; transparent RGBA → white; constant image stays constant
    gray = src[0]["image"].astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert (src[1]["image"] == 200).all()
    assert (src[2]["image"] == 255).all()
    one = open_real_source(data_cfg(path=str(root), channels=1, image_size=5), "train")
    assert one[3]["image"].shape == (5, 5, 1)
    with pytest.raises(DataSourceError, match="channels"):
        open_real_source(data_cfg(path=str(root), channels=4), "train")


def test_zip_equals_folder_and_is_picklable(tmp_path):
    root = _write_tree(tmp_path / "ds")
    zpath = _zip_tree(root, tmp_path / "ds.zip")
    folder = open_real_source(data_cfg(path=str(root)), "train")
    zipped = open_real_source(data_cfg(path=str(zpath)), "train")
    assert zipped.class_names == folder.class_names
    np.testing.assert_array_equal(zipped.labels, folder.labels)
    zipped[0]  # opens the handle; pickling must drop it
    clone = pickle.loads(pickle.dumps(zipped))
    for i in range(len(folder)):
        np.testing.assert_array_equal(zipped[i]["image"], folder[i]["image"])
        np.testing.assert_array_equal(clone[i]["image"], folder[i]["image"])
    ds = grain.MapDataset.source(zipped)
    np.testing.assert_array_equal(ds[4]["image"], folder[4]["image"])


def test_corrupt_image_error_names_file_or_is_skipped(tmp_path):
    root = _write_tree(tmp_path / "ds", corrupt=True)
    src = open_real_source(data_cfg(path=str(root)), "train")
    names = [src.name_of(i) for i in range(len(src))]
    bad = int(np.flatnonzero([n.endswith("broken.jpg") for n in names])[0])
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        src[bad]
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        src.validate()
    skipping = open_real_source(data_cfg(path=str(root), skip_corrupt=True), "train")
    rec = skipping[bad]
    assert skipping.num_skipped == 1
    # replaced deterministically by the next readable image of the same class
    assert int(rec["label"]) == skipping.labels[bad] == skipping.class_names.index("bee")
    same_class = [i for i in np.flatnonzero(skipping.labels == rec["label"]) if i != bad]
    assert any((skipping[i]["image"] == rec["image"]).all() for i in same_class)
    np.testing.assert_array_equal(skipping[bad]["image"], rec["image"])
    assert skipping.num_skipped == 1  # counted once per file
    zpath = _zip_tree(root, tmp_path / "c.zip", prefix="")
    with pytest.raises(CorruptImageError, match=r"c\.zip:train/bee/broken\.jpg"):
        open_real_source(data_cfg(path=str(zpath)), "train").validate()


def test_empty_class_and_missing_split_are_errors(tmp_path):
    root = _write_tree(tmp_path / "ds", empty_class=True)
    with pytest.raises(DataSourceError, match="empty class.*dog"):
        open_real_source(data_cfg(path=str(root)), "train")
    zpath = _zip_tree(root, tmp_path / "e.zip")
    with pytest.raises(DataSourceError, match="empty class.*dog"):
        open_real_source(data_cfg(path=str(zpath)), "train")
    with pytest.raises(DataSourceError, match="'test'"):
        open_real_source(data_cfg(path=str(root)), "test")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_real_source(data_cfg(path=str(tmp_path / "nowhere")), "train")
    with pytest.raises(DataSourceError, match="either"):
        open_real_source(data_cfg(path=str(root), tfds_name="mnist"), "train")


def test_real_cifar_zip(cifar_zip):
    train = open_real_source(data_cfg(path=str(cifar_zip), image_size=32), "train")
    assert train.class_names == CIFAR_CLASSES
    assert len(train) == 50_000
    np.testing.assert_array_equal(np.bincount(train.labels), [5000] * 10)
    test = open_real_source(data_cfg(path=str(cifar_zip), image_size=32), "test")
    np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
    for i in (0, 12_345, 49_999):
        rec = train[i]
        assert rec["image"].shape == (32, 32, 3) and rec["image"].dtype == np.uint8
        assert rec["image"].std() > 5  # a real photo, not a blank
        assert train.class_names[int(rec["label"])] in train.name_of(i)
    # the subset applies to train only; test stays whole
    lt = data_cfg(path=str(cifar_zip), image_size=32, per_class=100, imbalance_factor=10.0)
    lt_train = open_real_source(lt, "train")
    np.testing.assert_array_equal(
        np.bincount(lt_train.labels), subsets.long_tailed_counts(100, 10, 10.0)
    )
    assert len(open_real_source(lt, "test")) == 10_000


def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=100, policy=tfds.testing.MockPolicy.USE_CODE):
        src = open_real_source(data_cfg(tfds_name="mnist", image_size=8, channels=3), "train")
        assert src.class_names == [str(i) for i in range(10)]
        assert len(src) == 100
        rec = src[7]
        assert rec["image"].shape == (8, 8, 3) and int(rec["label"]) == src.labels[7]
        raw = open_real_source(data_cfg(tfds_name="mnist", image_size=0, channels=1), "train")
        assert raw[0]["image"].shape == (28, 28, 1)
        few = open_real_source(
            data_cfg(tfds_name="mnist", image_size=8, per_class=2, subset_seed=1), "train"
        )
        np.testing.assert_array_equal(np.bincount(few.labels, minlength=10), [2] * 10)


# --------------------------------------------------------------------------- subsets


def test_long_tailed_counts_closed_form():
    counts = subsets.long_tailed_counts(5000, 10, 100.0)
    expected = [int(np.floor(5000 * 100.0 ** (-c / 9) + 1e-9)) for c in range(10)]
    np.testing.assert_array_equal(counts, expected)
    assert counts[0] == 5000 and counts[-1] == 50
    assert (np.diff(counts) <= 0).all()
    np.testing.assert_array_equal(subsets.long_tailed_counts(7, 3, 1.0), [7, 7, 7])
    with pytest.raises(ValueError, match="imbalance_factor"):
        subsets.long_tailed_counts(10, 3, 0.5)


def test_subsets_exact_and_deterministic():
    labels = np.repeat(np.arange(5), 40)
    np.random.default_rng(3).shuffle(labels)
    a = subsets.per_class_subset(labels, 7, seed=11)
    b = subsets.per_class_subset(labels, 7, seed=11)
    c = subsets.per_class_subset(labels, 7, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.bincount(labels[a]), [7] * 5)
    assert len(np.unique(a)) == len(a) and (np.diff(a) > 0).all()
    lt = subsets.select_subset(labels, imbalance_factor=8.0, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[lt]), subsets.long_tailed_counts(40, 5, 8.0))
    # class c's pick depends only on (seed, c): a larger N extends a smaller one
    small = set(subsets.per_class_subset(labels, 3, seed=11))
    assert small <= set(a)
    assert subsets.select_subset(labels) is None
    with pytest.raises(ValueError, match="class 0 has 40 images, 41 requested"):
        subsets.per_class_subset(labels, 41, seed=0)
