"""Synthetic store: round trip, atomic shards, resume after a kill, disk full, many processes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import grain
import numpy as np
import pytest

from augdiff.data import store as store_lib
from augdiff.data.store import StoreError, StoreWriteError, StoreWriter, SyntheticStore


def example(i: int, channels: int = 3) -> tuple[np.ndarray, int]:
    """A deterministic example per key number (what fold_in(base_key, i) gives a generator)."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (6, 5, channels), np.uint8), i % 4


CONFIG = {"num_classes": 4, "steps": 3}


def write(root, numbers, *, process_index=0, shard_size=8, method="toy"):
    with StoreWriter(root, method=method, process_index=process_index, shard_size=shard_size,
                     config=CONFIG) as w:  # fmt: skip
        for i in numbers:
            if f"ex{i}" in w.completed_keys:
                continue
            image, label = example(i)
            w.add(f"ex{i}", image, label, source=2, provenance={"seed": i, "parents": [i, i + 1]})
    return w


def rows_by_key(store: SyntheticStore) -> dict[str, dict]:
    return {store.provenance(i)["key"]: store[i] for i in range(len(store))}


def test_round_trip(tmp_path):
    root = tmp_path / "store"
    write(root, range(20))
    w2 = StoreWriter(root, method="toy", process_index=0, config=CONFIG)
    assert w2.completed_keys == {f"ex{i}" for i in range(20)}
    store = SyntheticStore(root)
    assert len(store) == 20 and store.num_classes == 4
    assert sorted(n for n in os.listdir(root) if not n.startswith("."))[:2] == [
        "manifest-p00000.json",
        "shard-p00000-000000.array_record",
    ]
    for key, rec in rows_by_key(store).items():
        i = int(key[2:])
        image, label = example(i)
        np.testing.assert_array_equal(rec["image"], image)  # PNG: lossless
        assert int(rec["label"]) == label and int(rec["source"]) == 2
        assert rec["label"].dtype == np.int32 and rec["weight"] == np.float32(1.0)
    prov = store.provenance(3)
    assert prov["method"] == "toy" and prov["parents"] == [prov["seed"], prov["seed"] + 1]
    m = store.manifest
    assert m["num_examples"] == 20 and m["method"] == "toy" and m["config"]["steps"] == 3
    assert m["counts_per_class"] == {"0": 5, "1": 5, "2": 5, "3": 5}
    assert "jax" in m["versions"] and m["num_shards"] == 3  # 8 + 8 + 4
    np.testing.assert_array_equal(np.bincount(store.labels), [5, 5, 5, 5])
    # grain random access, and pickling into a worker process
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(grain.MapDataset.source(clone)[7]["image"], store[7]["image"])


def test_grayscale_counters_and_bad_input(tmp_path):
    with StoreWriter(tmp_path, method="m", process_index=0, shard_size=4) as w:
        image, _ = example(0, channels=1)
        assert w.add("g", image[..., 0], 1)
        assert not w.add("g", image[..., 0], 1)  # same key twice: ignored
        w.note("filtered_black", 2)
        w.note("filtered_black")
        with pytest.raises(ValueError, match="uint8"):
            w.add("f", image.astype(np.float32), 0)
        with pytest.raises(ValueError, match="source id"):
            w.add("r", image, 0, source=0)
    store = SyntheticStore(tmp_path)
    assert len(store) == 1 and store[0]["image"].shape == (6, 5, 1)
    assert store.manifest["counters"] == {"filtered_black": 3}


def test_reading_a_store_without_shards_is_an_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        SyntheticStore(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no complete shard"):
        SyntheticStore(tmp_path / "empty")


def test_exception_mid_shard_then_resume_exactly_once(tmp_path):
    root = tmp_path / "s"
    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(root, method="toy", process_index=0, shard_size=8, config=CONFIG) as w:
            for i in range(21):
                w.add(f"ex{i}", *example(i))
            raise RuntimeError("boom")
    assert len(SyntheticStore(root)) == 16  # the unfinished third shard is gone
    write(root, range(30))
    resumed = SyntheticStore(root)
    assert sorted(resumed.keys) == sorted(f"ex{i}" for i in range(30))
    reference = tmp_path / "ref"
    write(reference, range(30))
    ref_rows = rows_by_key(SyntheticStore(reference))
    for key, rec in rows_by_key(resumed).items():  # same bytes as an uninterrupted run
        np.testing.assert_array_equal(rec["image"], ref_rows[key]["image"])


def test_killed_process_mid_shard_then_resume(tmp_path):
    root = tmp_path / "s"
    script = textwrap.dedent(f"""
        import os, numpy as np
        from augdiff.data.store import StoreWriter
        w = StoreWriter({str(root)!r}, method="toy", process_index=0, shard_size=8,
                        config={CONFIG!r})
        for i in range(21):
            w.add(f"ex{{i}}", np.random.default_rng(i).integers(0, 256, (6, 5, 3), np.uint8), i % 4)
        os._exit(9)  # killed: no close, no flush of the last 5 examples
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()
    assert len(SyntheticStore(root)) == 16
    w = write(root, range(40))
    assert w.num_written == 40
    final = SyntheticStore(root)
    assert len(final) == 40 and len(set(final.keys)) == 40
    assert not [f for f in os.listdir(root) if ".tmp-" in f]


def test_missing_sidecar_is_scanned(tmp_path):
    write(tmp_path, range(10))
    os.remove(tmp_path / "shard-p00000-000000.array_record.idx.json")  # killed between renames
    w = StoreWriter(tmp_path, method="toy", process_index=0, config=CONFIG)
    assert w.completed_keys == {
        f"ex{i}" for i in range(10)
    }
    assert sorted(SyntheticStore(tmp_path).keys) == sorted(f"ex{i}" for i in range(10))


def test_disk_full_names_the_shard_and_commits_nothing(tmp_path, monkeypatch):
    write(tmp_path, range(8))  # one complete shard
    before = sorted(os.listdir(tmp_path))
    manifest = (tmp_path / "manifest-p00000.json").read_text()

    class FullDisk(store_lib.ArrayRecordWriter):
        def write(self, record):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_lib, "ArrayRecordWriter", FullDisk)
    with pytest.raises(StoreWriteError, match=r"shard-p00000-000001\.array_record.*No space"):
        write(tmp_path, range(16))
    assert sorted(os.listdir(tmp_path)) == before  # no partial shard, no temp file
    assert (tmp_path / "manifest-p00000.json").read_text() == manifest
    monkeypatch.undo()
    write(tmp_path, range(16))  # space again: resumes where it stopped
    assert sorted(SyntheticStore(tmp_path).keys) == sorted(f"ex{i}" for i in range(16))


def test_one_writer_per_process_merged_on_read(tmp_path):
    write(tmp_path, range(0, 12), process_index=0)
    write(tmp_path, range(12, 20), process_index=1, method="toy")
    names = sorted(os.listdir(tmp_path))
    assert "manifest-p00001.json" in names and "shard-p00001-000000.array_record" in names
    with open(tmp_path / "manifest-p00001.json") as f:
        assert json.load(f)["num_examples"] == 8
    store = SyntheticStore(tmp_path)
    assert len(store) == 20 and store.manifest["processes"] == [0, 1]
    # a writer sees every process's completed keys, so a changed process count never duplicates
    w = StoreWriter(tmp_path, method="toy", process_index=0, config=CONFIG)
    assert len(w.completed_keys) == 20


def test_one_writer_per_store_and_process_index(tmp_path):
    """A second writer of the same store and process index fails at once, naming the holder,
    before it touches the first one's files; another process index, or the same one after the
    first writer closed (or failed), writes."""
    from augdiff.files import WorkdirLockedError

    root = tmp_path / "store"
    first = StoreWriter(root, method="toy", process_index=0, config=CONFIG)
    first.add("a0", np.zeros((4, 4, 3), np.uint8), 0)
    with pytest.raises(WorkdirLockedError, match=rf"{os.getpid()}: store writer \(toy\)"):
        StoreWriter(root, method="toy", process_index=0, config=CONFIG)
    StoreWriter(root, method="toy", process_index=1, config=CONFIG).close()
    first.close()
    with StoreWriter(root, method="toy", process_index=0, config=CONFIG) as again:
        assert again.completed_keys == {"a0"}
    with pytest.raises(RuntimeError):
        with StoreWriter(root, method="toy", process_index=0, config=CONFIG):
            raise RuntimeError("killed")
    StoreWriter(root, method="toy", process_index=0, config=CONFIG).close()
