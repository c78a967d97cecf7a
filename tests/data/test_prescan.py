"""A user's odd image folder or zip is never silently wrong: labels by class name, class
names validated, a pre-scan that reports every problem at once before anything compiles,
skipped images counted, and generation parents never substituted."""

from __future__ import annotations

import io
import pathlib
import zipfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from augdiff.data.sources import (
    CorruptImageError,
    DataSourceError,
    open_real_source,
    prescan,
)

S = 8  # pixels of every fixture image


def _cfg(path, **kw) -> ml_collections.ConfigDict:
    base = dict(path=str(path), tfds_name="", image_size=S, channels=3, skip_corrupt=False,
                per_class=0, imbalance_factor=1.0, subset_seed=0, train_split="train",
                test_split="test")
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _png(colour=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (S, S), colour).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(
        buf, "JPEG", quality=90)
    return buf.getvalue()


def odd_folder(root: pathlib.Path, *, test_lacks: str | None = "fish",
               empty_class: bool = True, truncated: bool = True) -> dict[str, list[str]]:
    """3 classes of odd files + an empty class folder; returns the good files per class."""
    good: dict[str, list[str]] = {"cat": [], "dog": [], "fish": []}
    d = {c: root / "train" / c for c in good}
    for p in d.values():
        p.mkdir(parents=True)
    grad16 = np.tile(np.linspace(0, 65535, S).astype(np.uint16), (S, 1))
    Image.fromarray(grad16).save(d["cat"] / "g16.png")
    pal = Image.fromarray((np.arange(S * S).reshape(S, S) % 3).astype(np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    pal.save(d["cat"] / "pal.png", transparency=2)
    Image.new("CMYK", (S, S), (0, 255, 255, 0)).save(d["cat"] / "cmyk.jpg")
    Image.new("LA", (S, S), (90, 128)).save(d["cat"] / "la.png")
    good["cat"] = ["g16.png", "pal.png", "cmyk.jpg", "la.png"]
    Image.new("RGBA", (S, S), (0, 0, 255, 64)).save(d["dog"] / "rgba.png")
    Image.new("RGB", (S, S), (1, 2, 3)).save(d["dog"] / "t.tiff")
    frames = [Image.new("RGB", (S, S), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(d["dog"] / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (S, S), (9, 9, 9)).save(d["dog"] / "w.webp", lossless=True)
    Image.new("RGB", (S, S), (7, 7, 7)).save(d["dog"] / "b.bmp")
    good["dog"] = ["rgba.png", "t.tiff", "anim.gif", "w.webp", "b.bmp"]
    if truncated:
        (d["dog"] / "trunc.jpg").write_bytes(_jpeg_bytes()[:300])
    (d["fish"] / "ok.png").write_bytes(_png())
    (d["fish"] / ".hidden.png").write_bytes(_png())
    (d["fish"] / "readme.txt").write_text("not an image")
    good["fish"] = ["ok.png"]
    if empty_class:
        (root / "train" / "zebra").mkdir()
    for c in good:
        if c == test_lacks:
            continue
        (root / "test" / c).mkdir(parents=True)
        (root / "test" / c / "t.png").write_bytes(_png())
    if empty_class and test_lacks is None:
        (root / "test" / "zebra").mkdir(parents=True)
        (root / "test" / "zebra" / "z.png").write_bytes(_png())
    return good


def _zip(root: pathlib.Path, out: pathlib.Path, extra: dict[str, bytes] | None = None):
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(root.rglob("*")):
            arc = str(p.relative_to(root))
            if p.is_dir():
                zf.writestr(arc + "/", b"")
            else:
                zf.write(p, arc)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


# ----------------------------------------------------------------------------- the pre-scan


@pytest.mark.parametrize("as_zip", [False, True])
def test_odd_folder_prescan_reports_every_problem_at_once(tmp_path, as_zip):
    root = tmp_path / "odd"
    odd_folder(root)
    path = _zip(root, tmp_path / "odd.zip") if as_zip else root
    report = prescan(_cfg(path), progress=False)
    with pytest.raises(DataSourceError) as info:
        report.check()
    msg = str(info.value)
    # all of them, in one error
    assert "empty class 'zebra' (no images)" in msg
    assert "trunc.jpg" in msg and "data.skip_corrupt=True" in msg
    assert "test split" in msg and "lacks class 'fish'" in msg
    assert msg.count("\n  - ") == len(report.problems) == 3
    # every good file decoded: counts per class exclude only the truncated one
    assert report.counts["train"] == {"cat": 4, "dog": 5, "fish": 1, "zebra": 0}
    assert report.counts["test"] == {"cat": 1, "dog": 1}
    assert [n.rsplit("/", 1)[-1] for n, _ in report.unreadable["train"]] == ["trunc.jpg"]
    ignored = {n.rsplit("/", 1)[-1] for n in report.ignored["train"]}
    assert {".hidden.png", "readme.txt"} <= ignored
    assert report.scanned == 4 + 6 + 1 + 2


def test_odd_folder_with_skip_corrupt_decodes_every_good_file(tmp_path):
    root = tmp_path / "odd"
    good = odd_folder(root, test_lacks=None, empty_class=False)
    cfg = _cfg(root, skip_corrupt=True)
    report = prescan(cfg, progress=False)
    report.check()  # no problems: the truncated file is skipped
    rec = report.skipped_images()
    assert rec["train"] == 1 and rec["test"] == 0
    assert [f.rsplit("/", 1)[-1] for f in rec["files"]] == ["trunc.jpg"]
    src = open_real_source(cfg, "train", skip=report.skipped("train"))
    names = sorted(src.name_of(i).rsplit("/", 1)[-1] for i in range(len(src)))
    assert names == sorted(f for files in good.values() for f in files)
    for i in range(len(src)):
        img = src[i]["image"]
        assert img.shape == (S, S, 3) and img.dtype == np.uint8
        assert src.num_skipped == 0  # nothing met at read time: the scan left it out
    # spot checks against colours written here
    by_name = {src.name_of(i).rsplit("/", 1)[-1]: src[i]["image"] for i in range(len(src))}
    np.testing.assert_array_equal(by_name["anim.gif"][0, 0], [255, 0, 0])  # first frame
    np.testing.assert_array_equal(by_name["la.png"][0, 0], [int(90 * 128 / 255 + 255 * 127 / 255
                                                               + 0.5)] * 3)
    np.testing.assert_array_equal(by_name["t.tiff"][0, 0], [1, 2, 3])
    assert by_name["g16.png"][..., 0].max() == 255 and by_name["g16.png"][..., 0].min() == 0
    assert (by_name["g16.png"] == 255).mean() < 0.5


def test_skipped_names_capped_at_20(tmp_path):
    d = tmp_path / "r" / "train" / "a"
    d.mkdir(parents=True)
    (d / "ok.png").write_bytes(_png())
    for i in range(25):
        (d / f"bad{i:02d}.png").write_bytes(b"\x89PNG broken")
    report = prescan(_cfg(tmp_path / "r", skip_corrupt=True), ["train"], progress=False)
    rec = report.skipped_images()
    assert rec["train"] == 25 and len(rec["files"]) == 20
    strict = prescan(_cfg(tmp_path / "r"), ["train"], progress=False)
    with pytest.raises(DataSourceError, match="25 unreadable image.*and 5 more"):
        strict.check()


def test_subset_too_large_names_the_class_and_the_flag(tmp_path):
    root = tmp_path / "r"
    for c, n in (("ant", 3), ("bee", 1)):
        (root / "train" / c).mkdir(parents=True)
        for i in range(n):
            (root / "train" / c / f"{i}.png").write_bytes(_png())
    cfg = _cfg(root, per_class=2)
    report = prescan(cfg, ["train"], progress=False)
    assert report.problems == [
        "subset: class 'bee' (1) has 1 images, 2 requested; lower data.per_class, or set "
        "data.per_class=0 to use every image"]
    with pytest.raises(DataSourceError, match=r"class 'bee'.*data\.per_class=0"):
        open_real_source(cfg, "train")


# ----------------------------------------------------------------------------- labels by name


def _labelled(root: pathlib.Path, split: str, classes) -> None:
    for k, c in enumerate(classes):
        (root / split / c).mkdir(parents=True)
        for i in range(k + 1):  # different sizes, so a shifted label changes counts
            (root / split / c / f"{i}.png").write_bytes(_png((k * 20, 0, 0)))


def test_split_missing_a_class_is_an_error_naming_both_sets(tmp_path):
    root = tmp_path / "r"
    _labelled(root, "train", ["ant", "bee", "cat"])
    _labelled(root, "test", ["ant", "cat", "dog"])
    with pytest.raises(DataSourceError) as info:
        open_real_source(_cfg(root), "test")
    msg = str(info.value)
    assert "\n" not in msg
    assert "test split of" in msg and "lacks class 'bee'" in msg
    assert "has class 'dog' that train split lacks" in msg
    assert "train split has ant, bee, cat" in msg
    zpath = _zip(root, tmp_path / "r.zip")
    with pytest.raises(DataSourceError, match=r"test split of .*r\.zip.*lacks class 'bee'"):
        open_real_source(_cfg(zpath), "test")


def test_labels_follow_class_names_not_positions(tmp_path):
    root = tmp_path / "r"
    _labelled(root, "train", ["ant", "bee", "cat"])
    _labelled(root, "test", ["ant", "bee", "cat"])
    order = ["cat", "ant", "bee"]  # a store's order, say: not sorted
    for split in ("train", "test"):
        for path in (root, _zip(root, tmp_path / f"{split}.zip")):
            src = open_real_source(_cfg(path), split, class_names=order)
            assert src.class_names == order
            for i in range(len(src)):
                folder = src.name_of(i).rsplit("/", 2)[-2]
                assert order[int(src[i]["label"])] == folder
    train = open_real_source(_cfg(root), "train")
    test = open_real_source(_cfg(root), "test")
    assert train.class_names == test.class_names == ["ant", "bee", "cat"]
    for i in range(len(test)):
        assert train.class_names[int(test.labels[i])] == test.name_of(i).rsplit("/", 2)[-2]


def test_hidden_class_folder_is_ignored_not_a_class(tmp_path):
    root = tmp_path / "r"
    _labelled(root, "train", ["ant", "bee"])
    _labelled(root, "test", ["ant", "bee"])
    (root / "test" / ".ipynb_checkpoints").mkdir()
    (root / "test" / ".ipynb_checkpoints" / "x.png").write_bytes(_png())
    assert open_real_source(_cfg(root), "test").class_names == ["ant", "bee"]
    report = prescan(_cfg(root), progress=False)
    assert report.problems == []
    assert any(".ipynb_checkpoints" in n for n in report.ignored["test"])


# ----------------------------------------------------------------------------- class names


@pytest.mark.parametrize("member", [
    "data/train/../evil.png",
    "data/train/./x.png",
    "data/train//x.png",
    "data/train/a\x01b/x.png",
    "data/train/a\\b/x.png",
])
def test_crafted_zip_class_names_are_errors_naming_the_member(tmp_path, member):
    zpath = tmp_path / "c.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for c in ("ant", "bee"):
            zf.writestr(f"data/train/{c}/0.png", _png())
        zf.writestr(member, _png())
    with pytest.raises(DataSourceError) as info:
        open_real_source(_cfg(zpath), "train")
    assert repr(member) in str(info.value)
    report = prescan(_cfg(zpath), ["train"], progress=False)
    assert any(repr(member) in p for p in report.problems)
    assert report.counts["train"] == {"ant": 1, "bee": 1}  # no class '..' or '.'


def test_folder_class_name_with_control_character(tmp_path):
    root = tmp_path / "r"
    _labelled(root, "train", ["ant", "b\x7fee"])
    with pytest.raises(DataSourceError, match="control character"):
        open_real_source(_cfg(root), "train")


# ----------------------------------------------------------------------------- parents


def test_generation_parent_is_never_substituted(tmp_path):
    root = tmp_path / "r"
    d = root / "train" / "ant"
    d.mkdir(parents=True)
    (d / "a.png").write_bytes(_png())
    (d / "b.png").write_bytes(b"\x89PNG truncated")
    src = open_real_source(_cfg(root, skip_corrupt=True), "train")
    bad = [i for i in range(len(src)) if src.name_of(i).endswith("b.png")][0]
    assert src[bad]["image"].shape == (S, S, 3)  # training may substitute (counted) ...
    with pytest.raises(CorruptImageError, match=r"b\.png.*never made from another"):
        src.image(bad)  # ... a parent read never does
    good = 1 - bad
    np.testing.assert_array_equal(src.image(good), np.full((S, S, 3), (10, 200, 30), np.uint8))


# ----------------------------------------------------------------------------- training wires


def _classifier_config(path, workdir, **data):
    import importlib

    c = importlib.import_module("augdiff.configs.classify_cifar10").get_config("smoke")
    c.workdir = str(workdir)
    c.data.path = str(path)
    c.data.image_size = S
    c.data.per_class = 0
    c.data.update(data)
    c.batch_size = 8
    c.eval_batch_size = 8
    c.epochs = 1
    c.progress = False
    return c


def test_training_reports_every_problem_before_compiling(tmp_path, monkeypatch):
    from augdiff.train import classifier

    def compiled(*a, **k):
        raise AssertionError("the classifier was built before the data was checked")

    monkeypatch.setattr(classifier, "build_classifier", compiled)
    odd_folder(tmp_path / "odd")
    cfg = _classifier_config(tmp_path / "odd", tmp_path / "w")
    with pytest.raises(DataSourceError) as info:
        classifier.train_and_evaluate(cfg)
    msg = str(info.value)
    assert "'zebra'" in msg and "trunc.jpg" in msg and "lacks class 'fish'" in msg


def test_training_data_skips_and_records_unreadable_images(tmp_path, capsys):
    from augdiff.train import classifier

    odd_folder(tmp_path / "odd", test_lacks=None, empty_class=False)
    cfg = _classifier_config(tmp_path / "odd", tmp_path / "w", skip_corrupt=True)
    real, test, _, _, _, skipped = classifier._open_data(cfg)
    assert skipped["train"] == 1 and skipped["test"] == 0
    assert [f.rsplit("/", 1)[-1] for f in skipped["files"]] == ["trunc.jpg"]
    assert len(real) == 10 and len(test) == 3
    assert not any(real.name_of(i).endswith("trunc.jpg") for i in range(len(real)))
    assert "data pre-scan" in capsys.readouterr().out


def test_large_truncated_jpeg_caught_at_reduced_scale(tmp_path):
    """The scan decodes big JPEGs at a reduced DCT scale; truncation is still caught."""
    d = tmp_path / "r" / "train" / "a"
    d.mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8)).save(
        buf, "JPEG")
    (d / "big.jpg").write_bytes(buf.getvalue())
    (d / "cut.jpg").write_bytes(buf.getvalue()[:-300])
    report = prescan(_cfg(tmp_path / "r"), ["train"], progress=False)
    assert report.counts["train"] == {"a": 1}
    assert [n.rsplit("/", 1)[-1] for n, _ in report.unreadable["train"]] == ["cut.jpg"]
