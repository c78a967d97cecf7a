"""A synthetic store exported as files other tools read: an image folder with a provenance
table, the Hugging Face ``imagefolder`` convention, or WebDataset tar shards.

Formats (:data:`FORMATS`):

- ``folder``: ``DIR/<class>/<key>.png`` and ``DIR/provenance.csv`` (or ``.jsonl``), one row
  per key with :data:`augdiff.data.store.PROVENANCE_COLUMNS`.
- ``imagefolder``: ``DIR/<class>/<key>.png`` and ``DIR/metadata.jsonl`` (``file_name``,
  ``label`` = the store's class id, ``class`` = its name, and the provenance columns), for
  ``datasets.load_dataset("imagefolder", data_dir=DIR)``.
- ``webdataset``: tar shards ``DIR/shard-000000.tar`` ... holding ``<key>.png``, ``<key>.cls``
  and ``<key>.json`` per image, and ``DIR/info.json`` (shards, class names, counts).

Class names come from the store's manifest (``class_names``), else from an image folder or
zip (``data``), else they are ``class_000``, ``class_001``, ...

Nothing read from a store is trusted as a path: a key or class name that is empty, hidden
(leading dot, so also ``..``), holds a path separator or a control character is refused
(:class:`~augdiff.data.store.StoreError`, naming the store file and the key) before anything
is written, and every file written is checked to lie inside ``DIR``. The export is built in
a temporary folder beside ``DIR`` and renamed into place, under a writer lock beside ``DIR``,
so a failure midway leaves ``DIR`` as it was; a non-empty ``DIR`` is refused unless
``overwrite``.
"""


from __future__ import annotations

import csv
import glob
import io
import json
import os
import shutil
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from augdiff.data.sources import open_real_source
from augdiff.data.store import (
    PROVENANCE_COLUMNS,
    StoreError,
    SyntheticStore,
    decode_example,
    manifest_files,
    provenance_row,
    read_manifest,
)
from augdiff.files import writer_lock

FORMATS = ("folder", "imagefolder", "webdataset")
TABLES = ("csv", "jsonl")
MAX_NAME_BYTES = 200  # a key or class name, so "<name>.json" fits any file system's 255


# --------------------------------------------------------------------------- names and paths


def unsafe_name(name: Any) -> str | None:
    """Why ``name`` (a key or class name read from a store) cannot be one path component,
    or ``None`` when it can: it must be a non-empty string, not hidden (no leading dot, so
    tools that skip dot-files see it), without ``/``, ``\\`` or control characters, and at
    most :data:`MAX_NAME_BYTES` bytes of UTF-8."""
    if not isinstance(name, str) or not name:
        return "is empty or not a string"
    if name.startswith("."):
        return "starts with a dot (hidden, or '..')"
    if "/" in name or "\\" in name:
        return "has a path separator"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "has a control character"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def contained_path(root: str, *parts: str) -> str:
    """``root/parts...``, refused (:class:`StoreError`) unless every part is a safe name
    (:func:`unsafe_name`) and the resolved path (symlinks followed) lies inside ``root``."""
    for part in parts:
        why = unsafe_name(part)
        if why:
            raise StoreError(f"refusing path component {part!r} under {root!r}: it {why}")
    path = os.path.join(root, *parts)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise StoreError(f"refusing to write {path!r}: it resolves outside {root!r}")
    return path


# --------------------------------------------------------------------------- class names


def manifest_class_names(root: str) -> tuple[list[str], str] | None:
    """The ``class_names`` a store's manifests record (top level, or under ``config``) and the
    manifest file they were read from, or ``None`` when none records them. Manifests that
    disagree, or an unreadable manifest, are a :class:`StoreError` naming the file."""
    found: tuple[str, list[str]] | None = None
    for path in manifest_files(root):
        manifest = read_manifest(path)
        names = manifest.get("class_names")
        if names is None and isinstance(manifest.get("config"), dict):
            names = manifest["config"].get("class_names")
        if names is None or names == []:  # [] : a writer that was not told the names
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise StoreError(f"{path}: class_names must be a list of strings, got {names!r}")
        if found is not None and names != found[1]:
            raise StoreError(f"{path}: class_names {names} differ from {found[0]}'s {found[1]}")
        found = (path, list(names))
    return (found[1], found[0]) if found else None


def class_names_of(data: str) -> list[str] | None:
    """Class names of the ``train`` split of the image folder / zip ``data`` (``None``: none)."""
    if not data:
        return None
    return list(open_real_source({"path": data}, "train", subset=False).class_names)


def resolve_class_names(root: str, data: str = "") -> tuple[list[str] | None, str]:
    """The class names of a store and where they came from (its manifest file, else
    ``--data``, else ``(None, "class_<id>")``). A ``--data`` whose names differ from the
    manifest's is a :class:`StoreError` (labels are matched by name, never re-mapped)."""
    found = manifest_class_names(root)
    given = class_names_of(data)
    if found is not None and given is not None and found[0] != given:
        raise StoreError(f"{found[1]} records class names {found[0]}, but --data {data!r} "
                         f"has {given}; drop --data or export with the matching data")
    if found is not None:
        return found
    if given is not None:
        return given, f"--data {data}"
    return None, "class_<id>"


def check_class_names(names: Sequence[str], where: str, reserved: Sequence[str] = ()) -> None:
    """Every class name a safe, distinct folder name, not one of the export's own files
    (``reserved``), else a :class:`StoreError`."""
    for n in names:
        why = unsafe_name(n) or (f"is the name of the export's {n}" if n in reserved else None)
        if why:
            raise StoreError(f"{where}: class name {n!r} {why}; refusing to export")
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise StoreError(f"{where}: class names {dup} occur more than once")


# --------------------------------------------------------------------------- reading


def _shard_file(store: SyntheticStore, i: int) -> str:
    """The shard file that holds row ``i`` (for error messages)."""
    shards, rows = getattr(store, "_shards", None), getattr(store, "_row_shard", None)
    if shards is None or rows is None:
        return store.root
    return os.path.join(store.root, shards[int(rows[i])])


def _class_dir(label: int, class_names: Sequence[str] | None) -> str:
    return class_names[label] if class_names else f"class_{label:03d}"


def check_records(store: SyntheticStore, class_names: Sequence[str] | None, fmt: str) -> None:
    """Refuse (:class:`StoreError`, naming the shard and the key) a store whose key index
    holds a key that is not a safe file name, or a label with no class; run before anything
    is written."""
    for i, (key, label) in enumerate(zip(store.keys, store.labels, strict=True)):
        why = unsafe_name(key)
        if why is None and fmt == "webdataset" and "." in key:
            why = "has a dot (WebDataset splits a sample's key from its extension there)"
        if why:
            raise StoreError(f"{_shard_file(store, i)}: key {key!r} {why}; refusing to export")
        if label < 0 or (class_names and label >= len(class_names)):
            n = len(class_names) if class_names else "any"
            raise StoreError(f"{_shard_file(store, i)}: key {key!r} has label {int(label)}, "
                             f"outside the {n} class(es) of the store")


def iter_records(store: SyntheticStore) -> Iterator[tuple[int, dict[str, Any], np.ndarray]]:
    """``(row, header, image)`` of every row; a record that cannot be read or decoded, or
    whose header disagrees with the shard's key index, is a :class:`StoreError` naming the
    shard file and the key. A progress bar shows on a terminal."""
    keys = tqdm(store.keys, desc="export", unit="img", disable=None)  # a bar on a terminal
    for i, key in enumerate(keys):
        try:
            header, image = decode_example(store._record(i))
        except Exception as e:  # any decoding failure of untrusted bytes: name the file
            raise StoreError(f"{_shard_file(store, i)}: record of key {key!r} is unreadable "
                             f"({type(e).__name__}: {e}); delete that shard and its "
                             ".idx.json and rerun the generator") from e
        if header.get("key") != key or int(header.get("label", -1)) != int(store.labels[i]):
            raise StoreError(f"{_shard_file(store, i)}: record of key {key!r} holds key "
                             f"{header.get('key')!r} label {header.get('label')!r}, but the "
                             f"key index says label {int(store.labels[i])}")
        yield i, header, image


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- writers


def _write_table(path: str, rows: list[dict[str, Any]], table: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        if table == "csv":
            w = csv.DictWriter(f, fieldnames=list(PROVENANCE_COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow({k: "" if v is None else v for k, v in r.items()})
        else:
            for r in rows:
                f.write(json.dumps(r, default=str) + "\n")


def _uniform_columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose every column has one JSON type (what Arrow needs to load them): ints
    mixed with floats become floats; any other mix, and lists / dicts, become JSON text."""
    if not rows:
        return rows
    out = [dict(r) for r in rows]
    for col in rows[0]:
        kinds = {type(r[col]) for r in rows if r[col] is not None}
        if kinds <= {int, float} and float in kinds:
            for r in out:
                r[col] = None if r[col] is None else float(r[col])
        elif len(kinds) > 1 or kinds & {list, dict, tuple}:
            for r in out:
                v = r[col]
                r[col] = None if v is None else v if isinstance(v, str) else json.dumps(
                    v, sort_keys=True, default=str)
    return out


def _write_images(store, out, class_names, table, fmt) -> tuple[list[dict[str, Any]], Counter]:
    rows: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    method = store.manifest.get("method")
    for _, header, image in iter_records(store):
        sub = _class_dir(int(header["label"]), class_names)
        os.makedirs(contained_path(out, sub), exist_ok=True)
        with open(contained_path(out, sub, f"{header['key']}.png"), "xb") as f:
            f.write(_png(image))
        rows.append(provenance_row(header, method, class_names, f"{sub}/{header['key']}.png"))
        counts[sub] += 1
    if fmt == "folder":
        _write_table(contained_path(out, f"provenance.{table}"), rows, table)
    else:  # imagefolder: file_name first, the store's label id and class name kept
        meta = [{"file_name": r["path"], **{k: v for k, v in r.items() if k != "path"}}
                for r in rows]
        with open(contained_path(out, "metadata.jsonl"), "w", encoding="utf-8") as f:
            for r in _uniform_columns(meta):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return rows, counts


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add ``name`` (one safe path component: a member never extracts outside a folder)."""
    why = unsafe_name(name)
    if why:
        raise StoreError(f"refusing tar member {name!r}: it {why}")
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _write_webdataset(store, out, class_names, shard_size) -> tuple[list[dict], Counter]:
    rows: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    shards: list[dict[str, Any]] = []
    method = store.manifest.get("method")
    tar, tmp, name, n_in = None, "", "", 0

    def close() -> None:
        tar.close()
        os.replace(tmp, contained_path(out, name))
        shards.append({"file": name, "num_samples": n_in})

    for _, header, image in iter_records(store):
        key = header["key"]
        if tar is None or n_in >= shard_size:
            if tar is not None:
                close()
            name = f"shard-{len(shards):06d}.tar"
            tmp = contained_path(out, name + ".tmp")
            tar, n_in = tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT), 0
        label = int(header["label"])
        row = provenance_row(header, method, class_names, f"{name}:{key}.png")
        row["class"] = _class_dir(label, class_names)
        _tar_member(tar, f"{key}.png", _png(image))
        _tar_member(tar, f"{key}.cls", str(label).encode())
        _tar_member(tar, f"{key}.json", json.dumps(row, default=str).encode())
        rows.append(row)
        counts[row["class"]] += 1
        n_in += 1
    if tar is not None:
        close()
    info = {"format": "webdataset", "shards": shards, "num_samples": len(rows),
            "class_names": list(class_names) if class_names else None,
            "counts_per_class": dict(sorted(counts.items()))}
    with open(contained_path(out, "info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    return rows, counts


# --------------------------------------------------------------------------- export


def _check_destination(out: str, store_root: str, overwrite: bool) -> None:
    if os.path.lexists(out) and (os.path.islink(out) or not os.path.isdir(out)):
        raise FileExistsError(f"export destination {out!r} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(f"export destination {out!r} is not empty; pass --overwrite "
                              "to replace its contents, or choose another --out")
    real_out, real_store = os.path.realpath(out), os.path.realpath(store_root)
    if os.path.commonpath([real_out, real_store]) in (real_out, real_store):
        raise ValueError(f"export destination {out!r} and store {store_root!r} overlap")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: str, base: str) -> None:
    """Drop the temporary folders of a killed export of ``base`` (their pid is gone)."""
    for path in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.export-*-*")):
        pid = path.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def export(store_dir: str, out_dir: str, *, fmt: str = "folder",
           class_names: Sequence[str] | None = None, data: str = "", table: str = "csv",
           shard_size: int = 1000, overwrite: bool = False) -> dict[str, Any]:
    """Export the store at ``store_dir`` to ``out_dir`` in format ``fmt`` (:data:`FORMATS`;
    see the module docstring). ``class_names`` (else the manifest's, else ``data``'s, else
    ``class_<id>``) name the class folders. Everything is checked before anything is written;
    the export is built in a temporary folder beside ``out_dir`` and renamed into place.

    Returns ``{"num_images", "out_dir", "format", "class_names", "class_names_from",
    "counts_per_class", "table"}`` (``table``: the provenance / metadata file, or the
    WebDataset ``info.json``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"export: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if table not in TABLES:
        raise ValueError(f"export: table must be csv or jsonl, got {table!r}")
    if shard_size < 1:
        raise ValueError(f"export: shard size must be >= 1, got {shard_size}")
    if class_names is not None:
        names, source = list(class_names), "argument"
    else:
        names, source = resolve_class_names(store_dir, data)
    if names is not None:
        check_class_names(names, source, ("provenance.csv", "provenance.jsonl",
                                          "metadata.jsonl", "info.json"))
    try:
        store = SyntheticStore(store_dir)
    except (KeyError, TypeError, ValueError) as e:  # a hand-edited key index or manifest
        raise StoreError(f"store {store_dir!r}: unreadable key index or manifest "
                         f"({type(e).__name__}: {e})") from e
    check_records(store, names, fmt)
    out = os.path.abspath(out_dir)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    # One writer per destination: the lock lies beside DIR (which must hold nothing but the
    # export) and is removed when done; the rename into place is atomic by itself.
    with writer_lock(parent, command=f"export of {store_dir}",
                     name=f".{os.path.basename(out)}.export-lock", transient=True):
        _check_destination(out, store_dir, overwrite)
        _remove_stale(parent, os.path.basename(out))
        return _export_into(store, out, fmt, names, source, table, shard_size)


def _export_into(store: SyntheticStore, out: str, fmt: str, names: list[str] | None,
                 source: str, table: str, shard_size: int) -> dict[str, Any]:
    """Build the export in a temporary folder beside ``out`` and rename it into place."""
    parent = os.path.dirname(out)
    tmp = os.path.join(parent, f".{os.path.basename(out)}.export-tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp)
    try:
        if fmt == "webdataset":
            rows, counts = _write_webdataset(store, tmp, names, shard_size)
            table_file = "info.json"
        else:
            rows, counts = _write_images(store, tmp, names, table, fmt)
            table_file = f"provenance.{table}" if fmt == "folder" else "metadata.jsonl"
        if os.path.isdir(out) and os.listdir(out):  # --overwrite: swap, then drop the old
            old = os.path.join(parent, f".{os.path.basename(out)}.export-old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)  # onto a missing or empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"num_images": len(rows), "out_dir": out, "format": fmt,
            "class_names": names, "class_names_from": source,
            "counts_per_class": dict(sorted(counts.items())),
            "table": os.path.join(out, table_file)}
