"""``augdiff export`` / ``augdiff inspect``: image folder + provenance table, store inspection."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from augdiff.data.export import export
from augdiff.data.store import StoreWriter, SyntheticStore, inspect_store

NAMES = ["cat", "dog", "ship"]


def _write(root, n=7, shard_size=3, model="tiny-random"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    with StoreWriter(str(root), method="test/method", config={"model": model},
                     shard_size=shard_size) as w:
        for i in range(n):
            prov = {"parent": 100 + i, "prompt": f"a photo of a {NAMES[i % 3]}", "seed": 7,
                    "example": i, "guidance": 2.5, "lam": 0.25 * (i % 4), "model": model}
            w.add(f"k{i:04d}", images[i], i % 3, source=1 + (i % 2), provenance=prov)
            if i % 3 == 0:
                w.note("black_images")
    return images


def test_export_round_trip_pngs_and_one_row_per_key(tmp_path):
    images = _write(tmp_path / "store")
    out = export(str(tmp_path / "store"), str(tmp_path / "out"), class_names=NAMES)
    assert out["num_images"] == 7
    with open(tmp_path / "out" / "provenance.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["key"] for r in rows) == [f"k{i:04d}" for i in range(7)]
    for r in rows:
        i = int(r["key"][1:])
        assert r["path"] == os.path.join(NAMES[i % 3], f"k{i:04d}.png")
        png = np.asarray(Image.open(tmp_path / "out" / r["path"]))
        assert np.array_equal(png, images[i])  # the pixels written, bit for bit
        assert int(r["label"]) == i % 3 and r["class"] == NAMES[i % 3]
        assert int(r["source"]) == 1 + (i % 2) and int(r["parent"]) == 100 + i
        assert r["prompt"] == f"a photo of a {NAMES[i % 3]}" and float(r["guidance"]) == 2.5
        assert float(r["lambda"]) == 0.25 * (i % 4) and int(r["seed"]) == 7
        assert json.loads(r["provenance"])["example"] == i
    # the images of the store itself agree with the folder
    store = SyntheticStore(str(tmp_path / "store"))
    for j in range(len(store)):
        key = store.keys[j]
        lab = int(store.labels[j])
        png = np.asarray(Image.open(tmp_path / "out" / NAMES[lab] / f"{key}.png"))
        assert np.array_equal(png, store[j]["image"])


def test_export_jsonl_and_unnamed_classes(tmp_path):
    _write(tmp_path / "store", n=4)
    export(str(tmp_path / "store"), str(tmp_path / "out"), table="jsonl")
    lines = (tmp_path / "out" / "provenance.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert json.loads(lines[1])["path"] == os.path.join("class_001", "k0001.png")


def test_inspect_complete_and_killed_store(tmp_path, capsys):
    _write(tmp_path / "done")
    info = inspect_store(str(tmp_path / "done"))
    assert info["num_examples"] == 7 and info["complete"]
    assert info["counts_per_class"] == {0: 3, 1: 2, 2: 2}
    assert info["counts_per_source"] == {1: 4, 2: 3}
    assert info["methods"] == {"test/method": 7}
    assert info["tiny_random"] and info["counters"] == {"black_images": 3}

    # A writer killed midway: one complete shard of 3, the next shard's file half-written.
    root = tmp_path / "killed"
    w = StoreWriter(str(root), method="test/method", config={}, shard_size=3)
    rng = np.random.default_rng(1)
    for i in range(5):  # 3 flushed as a shard, 2 still in memory when the process dies
        w.add(f"k{i:04d}", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 0,
              provenance={"model": "runwayml/sd"})
    (root / "shard-p00000-000001.array_record.tmp-4242").write_bytes(b"partial")
    info = inspect_store(str(root))
    assert info["num_examples"] == 3 and info["num_shards"] == 1 and not info["complete"]
    assert info["unfinished_files"] == ["shard-p00000-000001.array_record.tmp-4242"]
    assert not info["tiny_random"]

    from augdiff.cli import main

    assert main(["augdiff", "inspect", "--store", str(root)]) == 0
    text = capsys.readouterr().out
    assert "3 images in 1 complete shard" in text and "INCOMPLETE" in text
    assert main(["augdiff", "inspect", "--store", str(tmp_path / "done")]) == 0
    assert "TINY-RANDOM" in capsys.readouterr().out
    assert main(["augdiff", "inspect", "--store", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_export_cli(tmp_path, capsys):
    _write(tmp_path / "store", n=3)
    from augdiff.cli import main

    assert main(["augdiff", "export", "--store", str(tmp_path / "store"), "--out",
                 str(tmp_path / "out")]) == 0
    assert "3 images" in capsys.readouterr().out
    assert len(list((tmp_path / "out").rglob("*.png"))) == 3


@pytest.mark.parametrize("bad", ["xml"])
def test_export_rejects_unknown_table(tmp_path, bad):
    _write(tmp_path / "store", n=1)
    with pytest.raises(ValueError, match="csv or jsonl"):
        export(str(tmp_path / "store"), str(tmp_path / "out"), table=bad)
