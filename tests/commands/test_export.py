"""``augdiff export``: crafted stores cannot write outside ``--out``, a non-empty ``--out`` is
refused, a failure leaves no half export, class names come from the manifest, and the
``imagefolder`` / ``webdataset`` exports load with the real ``datasets`` / ``webdataset``.

Stores are written here in the on-disk format of ``augdiff/data/store.py`` by hand (one
ArrayRecord file per shard of ``uint32 n | n bytes of JSON header | PNG`` records, an optional
``.idx.json`` key index, ``manifest-p00000.json``), so crafted keys get in whatever the
store's writer accepts, and expected values are read back from those bytes independently.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import struct

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from PIL import Image

from augdiff.cli import main as cli_main
from augdiff.data.export import contained_path

NAMES = ["ship", "cat", "dog"]  # not sorted: a name-for-index mix-up shows


def _record(key, image, label, prov):
    header = json.dumps({"key": key, "label": label, "source": 1, "provenance": prov}).encode()
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return struct.pack("<I", len(header)) + header + buf.getvalue()


def craft_store(root, items, *, shard_size=3, class_names=None, index=True):
    """A store with ``items`` = [(key, image, label, provenance)], written by hand."""
    os.makedirs(root, exist_ok=True)
    for s in range(0, len(items), shard_size):
        part = items[s : s + shard_size]
        path = os.path.join(root, f"shard-p00000-{s // shard_size:06d}.array_record")
        w = ArrayRecordWriter(path, "group_size:1")
        for key, image, label, prov in part:
            w.write(_record(key, image, label, prov))
        w.close()
        if index:
            with open(path + ".idx.json", "w") as f:
                json.dump({"keys": [k for k, *_ in part], "labels": [it[2] for it in part]}, f)
    manifest = {"format": "augdiff-store/1", "method": "test/method", "config": {},
                "process_index": 0, "num_examples": len(items), "counters": {}, "shards": []}
    if class_names is not None:
        manifest["class_names"] = class_names
    with open(os.path.join(root, "manifest-p00000.json"), "w") as f:
        json.dump(manifest, f)


def good_items(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"k{i:04d}", rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), i % 3,
             {"method": "test/method", "parent": 100 + i, "seed": 7, "example": i,
              "lam": 0.5 if i % 2 else 1, "prompt": f"p{i}"}) for i in range(n)]


def read_back(root):
    """{key: (label, image)} from every shard's records, decoded here."""
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "shard-*.array_record"))):
        r = ArrayRecordReader(path)
        for rec in r.read_all():
            (n,) = struct.unpack_from("<I", rec, 0)
            h = json.loads(rec[4 : 4 + n])
            out[h["key"]] = (h["label"], np.asarray(Image.open(io.BytesIO(rec[4 + n :]))))
        r.close()
    return out


def run(*args):
    return cli_main(["augdiff", "export", *map(str, args)])


def tree(root):
    """Every file under ``root`` except the writer locks (an export's lock lies beside its
    output, ``.<out>.export-lock``; a store writer's in its store): empty files whose holding
    is what counts."""
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs
                  if not (f.endswith(".export-lock") or f.startswith(".writer-p")))


# --------------------------------------------------------------------------- containment


@pytest.mark.parametrize("fmt", ["folder", "imagefolder", "webdataset"])
@pytest.mark.parametrize("bad", ["../../x", "ABS", "..", ".hidden", "a\\b", "ok\nx", ""])
@pytest.mark.parametrize("index", [True, False])
def test_crafted_key_refused_before_anything_is_written(tmp_path, capsys, bad, fmt, index):
    work = tmp_path / "a" / "b"
    bad = str(tmp_path / "abs" / "path" / "y") if bad == "ABS" else bad
    items = good_items(4)
    items[2] = (bad, *items[2][1:])
    craft_store(str(work / "store"), items, shard_size=2, class_names=NAMES, index=index)
    before = tree(tmp_path)
    assert run("--store", work / "store", "--out", work / "out", "--format", fmt) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "shard-p00000-000001.array_record" in err and repr(bad) in err
    assert tree(tmp_path) == before  # nothing written anywhere: no x.png, no y.png, no tmp
    assert not os.path.exists(work / "out")


def test_record_key_differing_from_its_index_is_refused(tmp_path, capsys):
    """A key index naming a harmless key over a record whose header holds ``../x``."""
    items = good_items(3)
    craft_store(str(tmp_path / "store"), items, class_names=NAMES)
    idx = tmp_path / "store" / "shard-p00000-000000.array_record.idx.json"
    craft_store(str(tmp_path / "evil"), [("../x", *items[0][1:]), *items[1:]],
                class_names=NAMES, index=False)
    (tmp_path / "evil" / idx.name).write_text(idx.read_text())
    assert run("--store", tmp_path / "evil", "--out", tmp_path / "o" / "out") == 1
    err = capsys.readouterr().err
    assert "'../x'" in err and "shard-p00000-000000.array_record" in err
    assert not os.path.exists(tmp_path / "x.png") and tree(tmp_path / "o") == []


@pytest.mark.parametrize("names", [["cat", ".."], ["cat", "a/b"], ["", "dog"], ["cat", "cat"],
                                   ["cat", "metadata.jsonl"], ["provenance.csv", "dog"]])
def test_crafted_class_names_refused(tmp_path, capsys, names):
    craft_store(str(tmp_path / "store"), [it[:2] + (it[2] % 2,) + it[3:] for it in good_items(4)],
                class_names=names)
    assert run("--store", tmp_path / "store", "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "manifest-p00000.json" in err and "\n" not in err.strip()
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_contained_path_follows_symlinks(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "cls")
    assert contained_path(str(root), "ok", "k.png") == os.path.join(str(root), "ok", "k.png")
    with pytest.raises(RuntimeError, match="outside"):
        contained_path(str(root), "cls", "k.png")
    for bad in ("..", "../x", "/etc/passwd", "a/b", ".git"):
        with pytest.raises(RuntimeError, match="refusing"):
            contained_path(str(root), bad)


def test_label_outside_the_class_names_refused(tmp_path, capsys):
    items = good_items(4)
    items[3] = (items[3][0], items[3][1], 5, items[3][3])
    craft_store(str(tmp_path / "store"), items, class_names=NAMES)
    assert run("--store", tmp_path / "store", "--out", tmp_path / "out") == 1
    assert "'k0003' has label 5" in capsys.readouterr().err


# --------------------------------------------------------------------------- destination


def test_non_empty_destination_needs_overwrite(tmp_path, capsys):
    craft_store(str(tmp_path / "store"), good_items(4), class_names=NAMES)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert run("--store", tmp_path / "store", "--out", out) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and "\n" not in err.strip()
    assert tree(out) == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"

    assert run("--store", tmp_path / "store", "--out", out, "--overwrite") == 0
    assert "mine.txt" not in tree(out) and len(glob.glob(str(out / "*" / "*.png"))) == 4
    assert sorted(os.listdir(tmp_path)) == ["out", "store"]  # no tmp / old folder left

    (tmp_path / "empty").mkdir()  # an existing empty folder is fine
    assert run("--store", tmp_path / "store", "--out", tmp_path / "empty") == 0
    # the store itself, or a folder holding it, is never a destination
    assert run("--store", tmp_path / "store", "--out", tmp_path, "--overwrite") == 1
    assert run("--store", tmp_path / "store", "--out", tmp_path / "store" / "x") == 1
    assert "overlap" in capsys.readouterr().err
    assert os.path.exists(tmp_path / "store" / "manifest-p00000.json")


@pytest.mark.parametrize("fmt", ["folder", "webdataset"])
def test_corrupt_record_midway_leaves_no_export(tmp_path, capsys, fmt):
    craft_store(str(tmp_path / "store"), good_items(7), shard_size=3, class_names=NAMES)
    shard = tmp_path / "store" / "shard-p00000-000001.array_record"
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert run("--store", tmp_path / "store", "--out", out, "--format", fmt) == 1
    err = capsys.readouterr().err
    assert shard.name in err and "\n" not in err.strip()
    assert sorted(os.listdir(tmp_path)) == ["store"]  # no out, no half-written tmp folder
    out.mkdir()
    (out / "old.png").write_bytes(b"x")  # an earlier export survives a failed --overwrite
    assert run("--store", tmp_path / "store", "--out", out, "--format", fmt, "--overwrite") == 1
    assert tree(out) == ["old.png"] and sorted(os.listdir(tmp_path)) == ["out", "store"]


def test_temporary_folder_of_a_killed_export_is_removed(tmp_path):
    craft_store(str(tmp_path / "store"), good_items(3), class_names=NAMES)
    dead = tmp_path / ".out.export-tmp-999999999"  # beyond any pid_max: its writer is gone
    (dead / "ship").mkdir(parents=True)
    live = tmp_path / f".out.export-tmp-{os.getppid()}"  # a running export's folder is kept
    live.mkdir()
    assert run("--store", tmp_path / "store", "--out", tmp_path / "out") == 0
    assert sorted(os.listdir(tmp_path)) == sorted(["out", "store", live.name])


# --------------------------------------------------------------------------- class names, folder


def test_folder_names_classes_from_the_manifest(tmp_path):
    items = good_items(7)
    craft_store(str(tmp_path / "store"), items, class_names=NAMES)
    assert run("--store", tmp_path / "store", "--out", tmp_path / "out") == 0
    expect = read_back(str(tmp_path / "store"))
    with open(tmp_path / "out" / "provenance.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["key"] for r in rows) == sorted(expect)
    for r in rows:
        label, image = expect[r["key"]]
        assert r["path"] == f"{NAMES[label]}/{r['key']}.png" and r["class"] == NAMES[label]
        assert int(r["label"]) == label
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / r["path"])), image)
    assert sorted(os.listdir(tmp_path / "out")) == ["cat", "dog", "provenance.csv", "ship"]


def test_store_writer_to_export_carries_class_names(tmp_path):
    """The wire from the writer's manifest to the export: no --data needed."""
    from augdiff.data.store import StoreWriter

    items = good_items(5)
    with StoreWriter(str(tmp_path / "store"), method="test/method", process_index=0,
                     config={"class_names": NAMES}, shard_size=2) as w:
        for key, image, label, prov in items:
            w.add(key, image, label, provenance=prov)
    assert run("--store", tmp_path / "store", "--out", tmp_path / "out") == 0
    for key, (label, image) in read_back(str(tmp_path / "store")).items():
        png = np.asarray(Image.open(tmp_path / "out" / NAMES[label] / f"{key}.png"))
        assert np.array_equal(png, image)


def test_data_names_classes_when_the_store_does_not(tmp_path, capsys):
    data = tmp_path / "data"
    for c in ("bee", "ant", "cat"):  # the folder's classes, sorted: ant, bee, cat
        (data / "train" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(data / "train" / c / "a.png")
    craft_store(str(tmp_path / "plain"), good_items(4))
    assert run("--store", tmp_path / "plain", "--out", tmp_path / "o1", "--data", data) == 0
    assert sorted(os.listdir(tmp_path / "o1")) == ["ant", "bee", "cat", "provenance.csv"]
    assert os.path.exists(tmp_path / "o1" / "bee" / "k0001.png")  # label 1 -> bee
    craft_store(str(tmp_path / "named"), good_items(4), class_names=NAMES)
    assert run("--store", tmp_path / "named", "--out", tmp_path / "o2", "--data", data) == 1
    err = capsys.readouterr().err
    assert "manifest-p00000.json" in err and "--data" in err and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("names", [None, []])
def test_no_class_names_anywhere_gives_class_ids(tmp_path, names):
    craft_store(str(tmp_path / "store"), good_items(4), class_names=names)
    assert run("--store", tmp_path / "store", "--out", tmp_path / "out", "--table", "jsonl") == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "provenance.jsonl").read_text().splitlines()]
    assert {r["path"] for r in rows} == {f"class_{i % 3:03d}/k{i:04d}.png" for i in range(4)}


# --------------------------------------------------------------------------- other tools


def test_imagefolder_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    items = good_items(7)
    items[1][3]["parent"] = "a-name"  # a column of mixed types still loads
    craft_store(str(tmp_path / "store"), items, class_names=NAMES)
    out = tmp_path / "out"
    assert run("--store", tmp_path / "store", "--out", out, "--format", "imagefolder") == 0
    assert "metadata.jsonl" in os.listdir(out)
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train",
                               cache_dir=str(tmp_path / "hf"))
    expect = read_back(str(tmp_path / "store"))
    assert len(ds) == len(expect) == 7
    for row in ds:
        label, image = expect[row["key"]]
        assert row["label"] == label and row["class"] == NAMES[label]
        assert np.array_equal(np.asarray(row["image"]), image)
        assert json.loads(row["provenance"])["example"] == int(row["key"][1:])
    assert {r["lambda"] for r in ds} == {0.5, 1.0}


def test_webdataset_shards_load_with_webdataset(tmp_path):
    wds = pytest.importorskip("webdataset")
    craft_store(str(tmp_path / "store"), good_items(7), class_names=NAMES)
    out = tmp_path / "out"
    assert run("--store", tmp_path / "store", "--out", out, "--format", "webdataset",
               "--shard-size", "3") == 0
    shards = sorted(glob.glob(str(out / "shard-*.tar")))
    assert [os.path.basename(s) for s in shards] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert sorted(os.listdir(out)) == sorted(["info.json"] + [os.path.basename(s)
                                                              for s in shards])
    info = json.loads((out / "info.json").read_text())
    assert info["class_names"] == NAMES and info["num_samples"] == 7
    expect = read_back(str(tmp_path / "store"))
    got = {}
    for sample in wds.WebDataset(shards, shardshuffle=False).decode("rgb8"):
        got[sample["__key__"]] = sample
    assert sorted(got) == sorted(expect)
    for key, s in got.items():
        label, image = expect[key]
        assert s["cls"] == label and s["json"]["class"] == NAMES[label]
        assert s["json"]["key"] == key and np.array_equal(s["png"], image)


# --------------------------------------------------------------------------- help


def test_help_states_the_formats_without_markup(capsys):
    try:  # the command line answers --help itself (exit status 0), or argparse exits 0
        rc = run("--help")
    except SystemExit as e:
        rc = e.code
    assert rc == 0
    text = capsys.readouterr().out
    for word in ("--format", "imagefolder", "webdataset", "--overwrite", "metadata.jsonl",
                 "shard-000000.tar"):
        assert word in text
    assert "``" not in text and ":func:" not in text and ":class:" not in text
