"""A store trusted on disk: crafted keys refused, what made it recorded and enforced, corruption
named by file, disk full without leftovers, ``inspect`` on a non-store an error."""

from __future__ import annotations

import errno
import hashlib
import json
import os

import numpy as np
import pytest

from augdiff.cli import main
from augdiff.data import store as store_lib
from augdiff.data.export import export
from augdiff.data.store import (
    StoreError,
    StoreWriteError,
    StoreWriter,
    SyntheticStore,
    inspect_store,
    model_identity,
    verify,
)
from augdiff.files import content_hash

CLASSES = ["cat", "dog", "emu"]
CONFIG = {"seed": 0, "sampler": "heun", "steps": 3, "guidance": 1.0, "image_size": 6}
SHARD0 = "shard-p00000-000000.array_record"


def image(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (6, 6, 3), np.uint8)


def write(root, n=12, *, config=CONFIG, shard_size=4, process_index=0, start=0, **kw):
    with StoreWriter(root, method="toy", config=config, process_index=process_index,
                     shard_size=shard_size, class_names=CLASSES, **kw) as w:
        for i in range(start, start + n):
            w.add(f"k{i:04d}", image(i), i % 3, provenance={"seed": config["seed"]})
    return w


def sha256_file(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def listing(root) -> list[str]:
    """The store's files, without the writers' lock files (``.writer-p<i>.lock``, empty files
    whose holding is what counts)."""
    return sorted(n for n in os.listdir(root) if not n.startswith(".writer-p"))


# --------------------------------------------------------------------------- keys and names

CRAFTED = ["../../x", "/abs/path/y", "a/b", "a\\b", "..", ".", ".hidden", "", "a\x00b", "a\nb",
           "tab\there", "x..y", "\x7f"]


@pytest.mark.parametrize("key", CRAFTED)
def test_crafted_keys_are_refused_when_written(tmp_path, key):
    with StoreWriter(tmp_path, method="toy", config=CONFIG, process_index=0, shard_size=1) as w:
        with pytest.raises(StoreWriteError, match="store key"):
            w.add(key, image(0), 0)
        assert w.add("fine-key_1.v2", image(0), 0)
    assert SyntheticStore(tmp_path).keys == ["fine-key_1.v2"]  # nothing else reached a shard
    assert listing(tmp_path) == ["manifest-p00000.json", SHARD0, SHARD0 + ".idx.json"]


@pytest.mark.parametrize("names", [["cat", "../dog"], ["cat", ""], [".git"], ["a/b"],
                                   ["c\x1b[31m"]])
def test_crafted_class_names_are_refused(tmp_path, names):
    with pytest.raises(StoreWriteError, match="class name"):
        StoreWriter(tmp_path / "s", method="toy", config={**CONFIG, "class_names": names},
                    process_index=0)
    assert not (tmp_path / "s").exists() or not os.listdir(tmp_path / "s")


def test_export_of_a_foreign_store_with_crafted_keys_stays_inside(tmp_path, monkeypatch):
    root = tmp_path / "foreign"
    monkeypatch.setattr(store_lib, "check_name", lambda kind, name: name)  # a store made elsewhere
    with StoreWriter(root, method="toy", config=CONFIG, process_index=0) as w:
        w.add("../../x", image(0), 0)
        w.add(str(tmp_path / "abs" / "y"), image(1), 1)
    monkeypatch.undo()
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(StoreError, match=r"key '\.\./\.\./x'"):
        export(str(root), str(out))
    assert not (tmp_path / "a" / "x.png").exists() and not (tmp_path / "abs").exists()


# --------------------------------------------------------------------------- what made it


def test_manifest_records_what_made_the_store(tmp_path):
    model = {"kind": "edm", "path": "/elsewhere/ckpt/4", "step": 4, "sha256": "ab" * 32}
    write(tmp_path, model=model)
    m = json.loads((tmp_path / "manifest-p00000.json").read_text())
    assert m["class_names"] == CLASSES and m["model"] == model
    assert m["augdiff_version"] and m["method"] == "toy" and m["config"] == CONFIG
    # the fingerprint: sha256 of the canonical JSON of everything that changes the images
    want = {**CONFIG, "method": "toy", "class_names": CLASSES,
            "model": {"kind": "edm", "step": 4, "sha256": "ab" * 32}}  # the path is not hashed
    assert m["generating"] == want
    canonical = json.dumps(want, sort_keys=True, separators=(",", ":"))
    assert m["fingerprint"] == hashlib.sha256(canonical.encode()).hexdigest()
    merged = SyntheticStore(tmp_path).manifest
    assert merged["class_names"] == CLASSES and merged["fingerprint"] == m["fingerprint"]
    assert merged["model"] == model


def test_changed_seed_is_refused_naming_the_field(tmp_path):
    write(tmp_path, 8)
    before = {n: (tmp_path / n).read_bytes() for n in listing(tmp_path)}
    with pytest.raises(StoreWriteError) as err:
        write(tmp_path, 8, config={**CONFIG, "seed": 1})
    msg = str(err.value)
    assert "seed: 0 -> 1" in msg and "manifest-p00000.json" in msg
    assert "steps" not in msg and "new store" in msg and "\n" not in msg
    # nothing rewritten: the manifest still says seed 0, over the seed-0 images only
    assert {n: (tmp_path / n).read_bytes() for n in listing(tmp_path)} == before
    write(tmp_path / "other", 8, config={**CONFIG, "seed": 1})  # a new store is fine
    write(tmp_path, 12)  # the same config resumes
    assert len(SyntheticStore(tmp_path)) == 12


@pytest.mark.parametrize("change,field", [
    (dict(method="other"), "method: 'toy' -> 'other'"),
    (dict(model={"kind": "edm", "step": 5}), "model.step: 4 -> 5"),
    (dict(class_names=["cat", "dog", "gnu"]), "class_names"),
    (dict(config={**CONFIG, "guidance": 2.0}), "guidance: 1.0 -> 2.0"),
])
def test_any_generating_change_is_refused(tmp_path, change, field):
    base = dict(method="toy", config=CONFIG, model={"kind": "edm", "step": 4},
                class_names=CLASSES, process_index=0)
    with StoreWriter(tmp_path, **base) as w:
        w.add("a", image(0), 0)
    with pytest.raises(StoreWriteError, match="another config") as err:
        StoreWriter(tmp_path, **{**base, **change})
    assert field in str(err.value)


def test_moved_model_files_and_another_process_resume(tmp_path):
    model = {"kind": "sd", "path": "/a", "name": "/a", "sha256": "cd" * 32}
    write(tmp_path, 4, model=model)
    write(tmp_path, 8, model={**model, "path": "/b", "name": "/b"})  # same bytes, moved
    with pytest.raises(StoreWriteError, match="seed: 0 -> 7"):  # process 1 checks p0's shards
        write(tmp_path, 4, config={**CONFIG, "seed": 7}, process_index=1, start=100)


def test_shards_without_a_fingerprint_are_not_continued(tmp_path):
    write(tmp_path, 4)
    path = tmp_path / "manifest-p00000.json"
    m = json.loads(path.read_text())
    del m["fingerprint"]  # a store of an older augdiff, or an edited manifest
    path.write_text(json.dumps(m))
    with pytest.raises(StoreWriteError, match="without a fingerprinted manifest"):
        write(tmp_path, 4)


def test_no_manifest_is_written_claiming_a_config_without_images(tmp_path):
    StoreWriter(tmp_path, method="toy", config=CONFIG, process_index=0)  # opened, nothing added
    write(tmp_path, 4, config={**CONFIG, "seed": 3})  # no images yet: another config may start
    assert json.loads((tmp_path / "manifest-p00000.json").read_text())["config"]["seed"] == 3


# --------------------------------------------------------------------------- model identity


def reference_content_hash(root) -> str:
    """The documented definition, written out: sorted lines ``relpath\\0sha256(bytes)\\n``."""
    lines = []
    for dirpath, _, files in os.walk(root, followlinks=True):
        for f in files:
            full = os.path.join(dirpath, f)
            lines.append(f"{os.path.relpath(full, root)}\0{sha256_file(full)}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def test_model_identity_of_a_hub_cache_snapshot(tmp_path):
    repo = tmp_path / "hub" / "models--org--tiny-sd"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    (snap / "unet").mkdir(parents=True)
    for name, data in [("w1", b"weights"), ("c1", b'{"a": 1}')]:
        (repo / "blobs" / name).write_bytes(data)
    os.symlink(repo / "blobs" / "w1", snap / "unet" / "model.safetensors")
    os.symlink(repo / "blobs" / "c1", snap / "model_index.json")
    ident = model_identity(str(snap), kind="sd/txt2img", name="org/tiny-sd", step=None)
    assert ident == {"kind": "sd/txt2img", "name": "org/tiny-sd", "path": str(snap),
                     "snapshot": commit, "sha256": reference_content_hash(snap)}
    assert content_hash(str(snap)) == reference_content_hash(snap)
    copy = tmp_path / "plain"
    (copy / "unet").mkdir(parents=True)
    (copy / "unet" / "model.safetensors").write_bytes(b"weights")
    (copy / "model_index.json").write_bytes(b'{"a": 1}')
    plain = model_identity(str(copy))
    assert "snapshot" not in plain and plain["sha256"] == ident["sha256"]  # same bytes
    (copy / "unet" / "model.safetensors").write_bytes(b"weightz")
    assert model_identity(str(copy))["sha256"] != ident["sha256"]
    assert model_identity(None, kind="x") == {"kind": "x"}


# --------------------------------------------------------------------------- corruption


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 17])


def edit_labels(path):
    side = json.loads(path.read_text())
    side["labels"] = [(x + 1) % 3 for x in side["labels"]]
    path.write_text(json.dumps(side))


def corrupt_json(path):
    path.write_text(path.read_text()[:15])


def test_sidecar_records_the_shard_hash(tmp_path):
    write(tmp_path, 8)
    for n in ("000000", "000001"):
        shard = tmp_path / f"shard-p00000-{n}.array_record"
        side = json.loads((tmp_path / f"shard-p00000-{n}.array_record.idx.json").read_text())
        assert side["sha256"] == sha256_file(shard) and side["size"] == shard.stat().st_size
        assert len(side["keys"]) == len(side["labels"]) == 4
    assert verify(tmp_path) == {}


def _read_all(root):
    store = SyntheticStore(root)
    return [store[i] for i in range(len(store))]


CORRUPTIONS = {  # what is damaged -> (file, damage, the file the error names)
    "bit-flipped shard": (SHARD0, flip_byte, SHARD0),
    "truncated shard": (SHARD0, truncate, SHARD0),
    "corrupt sidecar": (SHARD0 + ".idx.json", corrupt_json, SHARD0 + ".idx.json"),
    "edited sidecar labels": (SHARD0 + ".idx.json", edit_labels, SHARD0 + ".idx.json"),
    "corrupt manifest": ("manifest-p00000.json", corrupt_json, "manifest-p00000.json"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_is_named_everywhere(tmp_path, case, capsys):
    target, damage, named = CORRUPTIONS[case]
    write(tmp_path, 12)
    damage(tmp_path / target)
    path = str(tmp_path / named)
    # read every record: an error naming the file, saying how to repair
    with pytest.raises(StoreError) as err:
        _read_all(tmp_path)
    msg = str(err.value)
    assert path in msg and "delete" in msg and "\n" not in msg, msg
    # a resumed writer re-verifies the shards it did not write
    with pytest.raises(StoreError) as err:
        write(tmp_path, 16)
    assert path in str(err.value) and "delete" in str(err.value)
    # verify lists it by file name; inspect --verify exits 1 naming it
    bad = verify(tmp_path)
    assert list(bad) == [os.path.basename(named) if named != SHARD0 + ".idx.json" else SHARD0]
    assert main(["augdiff", "inspect", "--store", str(tmp_path), "--verify"]) == 1
    out = capsys.readouterr()
    assert named in out.out and "1 bad file" in out.out
    # plain inspect is an error too, one line, exit 1
    assert main(["augdiff", "inspect", "--store", str(tmp_path)]) == 1
    err_line = capsys.readouterr().err.strip()
    assert named in err_line and "\n" not in err_line


def test_repair_as_the_message_says_then_resume(tmp_path):
    write(tmp_path, 12)
    flip_byte(tmp_path / SHARD0)
    with pytest.raises(StoreError, match="delete"):
        write(tmp_path, 12)
    os.remove(tmp_path / SHARD0)
    os.remove(tmp_path / (SHARD0 + ".idx.json"))
    write(tmp_path, 12)
    assert sorted(SyntheticStore(tmp_path).keys) == [f"k{i:04d}" for i in range(12)]
    assert verify(tmp_path) == {}
    ref = tmp_path / "ref"
    write(ref, 12)
    a, b = SyntheticStore(tmp_path), SyntheticStore(ref)
    got = {a.keys[i]: a[i]["image"] for i in range(len(a))}
    for i in range(len(b)):
        np.testing.assert_array_equal(got[b.keys[i]], b[i]["image"])


def test_a_shard_swapped_in_from_another_store_is_caught_by_its_hash(tmp_path):
    """Same keys, same labels, valid records, other pixels: only the sha256 tells."""
    write(tmp_path / "a", 8)
    write(tmp_path / "b", 8, config={**CONFIG, "seed": 1})
    other = (tmp_path / "b" / SHARD0).read_bytes()
    (tmp_path / "a" / SHARD0).write_bytes(other)
    shard = str(tmp_path / "a" / SHARD0)
    with pytest.raises(StoreError, match="sha256") as err:
        SyntheticStore(tmp_path / "a")[0]
    assert shard in str(err.value)
    with pytest.raises(StoreError, match="sha256"):
        write(tmp_path / "a", 8)
    assert list(verify(tmp_path / "a")) == [SHARD0]


def test_corrupt_shard_of_another_process_is_found_by_a_resumed_writer(tmp_path):
    write(tmp_path, 4, process_index=1, start=50)
    flip_byte(tmp_path / "shard-p00001-000000.array_record")
    with pytest.raises(StoreError, match=r"shard-p00001-000000\.array_record is corrupt"):
        write(tmp_path, 4, process_index=0)


def test_verify_reports_every_bad_shard_and_only_those(tmp_path, capsys):
    write(tmp_path, 16)
    flip_byte(tmp_path / "shard-p00000-000001.array_record")
    truncate(tmp_path / "shard-p00000-000003.array_record")
    bad = verify(tmp_path)
    assert sorted(bad) == ["shard-p00000-000001.array_record", "shard-p00000-000003.array_record"]
    assert main(["augdiff", "inspect", "--store", str(tmp_path), "--verify", "--json"]) == 1
    assert sorted(json.loads(capsys.readouterr().out)["bad"]) == sorted(bad)


def test_inspect_counts_come_from_the_records(tmp_path, capsys):
    write(tmp_path, 12)
    info = inspect_store(str(tmp_path))
    assert info["counts_per_class"] == {0: 4, 1: 4, 2: 4}
    assert info["class_names"] == CLASSES and info["fingerprint"]
    assert main(["augdiff", "inspect", "--store", str(tmp_path), "--verify"]) == 0
    assert "every shard verified" in capsys.readouterr().out


def test_inspect_on_a_folder_that_is_not_a_store(tmp_path, capsys):
    (tmp_path / "holiday.jpg").write_bytes(b"not a store")
    assert main(["augdiff", "inspect", "--store", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "not a synthetic store" in err and str(tmp_path) in err and "\n" not in err
    with pytest.raises(StoreError, match="not a synthetic store"):
        inspect_store(str(tmp_path))


# --------------------------------------------------------------------------- disk full


class FullDiskRecords(store_lib.ArrayRecordWriter):
    def write(self, record):  # what array_record itself raises on a full disk
        raise RuntimeError("write() failed: No space left on device")


def full_disk_open(suffix):
    """``open`` whose writes to the temporary file of a path ending ``suffix`` write half their
    bytes, then fail with ENOSPC (a disk that fills up mid-file)."""
    real_open = open

    class Half:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        base = str(path).rsplit(".tmp-", 1)[0]
        return Half(f) if ".tmp-" in str(path) and base.endswith(suffix) else f

    return fake


@pytest.mark.parametrize("where", ["shard", "sidecar", "manifest"])
def test_disk_full_raises_store_write_error_and_leaves_no_tmp(tmp_path, monkeypatch, where):
    import augdiff.files

    write(tmp_path, 4)
    before = {n: (tmp_path / n).read_bytes() for n in listing(tmp_path)}
    w = StoreWriter(tmp_path, method="toy", config=CONFIG, process_index=0, shard_size=4,
                    class_names=CLASSES)
    for i in range(4, 7):
        w.add(f"k{i:04d}", image(i), i % 3)
    shard1 = SHARD0.replace("000000", "000001")
    name = {"shard": shard1, "sidecar": shard1 + ".idx.json",
            "manifest": "manifest-p00000.json"}[where]
    if where == "shard":
        monkeypatch.setattr(store_lib, "ArrayRecordWriter", FullDiskRecords)
    else:
        monkeypatch.setattr(augdiff.files, "open", full_disk_open(name), raising=False)
    with pytest.raises(StoreWriteError) as err:
        w.add("k0007", image(7), 1)  # fills the shard: flush
    msg = str(err.value)
    assert str(tmp_path / name) in msg and "No space left" in msg and "MiB free" in msg, msg
    assert isinstance(err.value, OSError)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    if where != "manifest":  # nothing of the shard committed, the old files untouched
        assert {n: (tmp_path / n).read_bytes() for n in listing(tmp_path)} == before
    monkeypatch.undo()
    write(tmp_path, 12)  # space again: resumes
    assert sorted(SyntheticStore(tmp_path).keys) == [f"k{i:04d}" for i in range(12)]
    assert verify(tmp_path) == {}
