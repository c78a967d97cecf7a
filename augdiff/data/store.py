"""The synthetic store: the one on-disk format every augdiff generator writes.

Layout of a store directory::

    shard-p00000-000000.array_record         ArrayRecord file of serialized examples
    shard-p00000-000000.array_record.idx.json  keys and labels of that shard (a sidecar)
    manifest-p00000.json                     per-process manifest (method, config, versions,
                                             counts per class, counters, shards)

One :class:`StoreWriter` runs per JAX process and names its files with the process index, so
processes never write the same file. A serialized example is::

    uint32 little-endian n | n bytes of JSON header | PNG bytes of the image

with header ``{"key", "label", "source", "provenance"}``; provenance is free-form JSON
(method, parent real ids, prompt / embedding id, seed, guidance, steps, params).

Durability and resume
- A shard is written to ``<name>.tmp-<pid>`` and moved into place with ``os.replace``; its
  key index and the manifest follow the same way. A reader only ever sees complete shards.
- ``StoreWriter.completed_keys`` holds the keys of every complete shard in the directory
  (all processes): generators skip them, so a run killed mid-shard loses only that shard and
  a resumed run ends with every requested key exactly once. ``add`` of a key that is
  already present is a no-op returning ``False``.
- A shard whose sidecar is missing (killed between the two renames) is scanned instead.
- An exception inside the ``with`` block discards the unfinished shard (like a kill); an
  ``OSError`` while writing (disk full) raises :class:`StoreWriteError` naming the shard and
  leaves no partial file behind.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import platform
import re
import struct
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Sequence
from importlib import metadata
from typing import Any

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from PIL import Image
from tqdm import tqdm

from augdiff.files import atomic_write, temp_path

log = logging.getLogger(__name__)

FORMAT = "augdiff-store/1"
SHARD_RE = re.compile(r"^shard-p(\d{5})-(\d{6})\.array_record$")
_WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access
_READER_OPTIONS = "readahead_buffer_size:0"


class StoreError(RuntimeError):
    """A synthetic store is missing, empty or inconsistent."""


class StoreWriteError(OSError):
    """Writing a shard failed (e.g. disk full); nothing of that shard was committed."""


# --------------------------------------------------------------------------- encoding


def encode_example(
    key: str, image: np.ndarray, label: int, source: int, provenance: dict[str, Any]
) -> bytes:
    """Serialize one example (see the module docstring for the byte layout)."""
    header = json.dumps(
        {"key": key, "label": int(label), "source": int(source), "provenance": provenance},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return struct.pack("<I", len(header)) + header + buf.getvalue()


def decode_header(record: bytes) -> dict[str, Any]:
    (n,) = struct.unpack_from("<I", record, 0)
    return json.loads(record[4 : 4 + n])


def decode_example(record: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """The header dict and the uint8 HWC image of a serialized example."""
    (n,) = struct.unpack_from("<I", record, 0)
    header = json.loads(record[4 : 4 + n])
    image = np.asarray(Image.open(io.BytesIO(record[4 + n :])))
    if image.ndim == 2:
        image = image[..., None]
    return header, image


# --------------------------------------------------------------------------- file helpers


def _atomic_write_json(path: str, obj: Any) -> None:
    """A sidecar or manifest in the store's format: indent 1, sorted keys, and no ``default``
    (a value JSON cannot hold is an error, not its ``str``), written by
    :func:`augdiff.files.atomic_write` into the store's existing folder."""
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True), make_dirs=False)


def _shard_files(root: str) -> list[str]:
    names = [os.path.basename(p) for p in glob.glob(os.path.join(root, "shard-p*.array_record"))]
    return sorted(n for n in names if SHARD_RE.match(n))


def _read_shard_index(root: str, name: str) -> tuple[list[str], list[int]]:
    """Keys and labels of a complete shard: from its sidecar, else by scanning the shard."""
    idx = os.path.join(root, name + ".idx.json")
    if os.path.exists(idx):
        with open(idx) as f:
            data = json.load(f)
        return list(data["keys"]), [int(x) for x in data["labels"]]
    reader = ArrayRecordReader(os.path.join(root, name), _READER_OPTIONS)
    try:
        headers = [decode_header(r) for r in reader.read_all()]
    finally:
        reader.close()
    return [h["key"] for h in headers], [int(h["label"]) for h in headers]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("augdiff", "jax", "flax", "numpy", "diffusers", "array_record"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# --------------------------------------------------------------------------- generator helpers


def example_keys(base_key: Any, examples: Sequence[int]) -> Any:
    """Per-example keys ``fold_in(base_key, e)`` [N, ...] for example numbers ``e``.

    The one place generators derive randomness: an example's bytes depend only on its number,
    never on the batch it was generated in, so a resumed or re-sharded run reproduces them.
    """
    import jax
    import jax.numpy as jnp

    e = jnp.asarray(np.asarray(examples, np.uint32))
    return jax.vmap(lambda x: jax.random.fold_in(base_key, x))(e)


def pending_batches(
    writer: StoreWriter,
    plan: Iterable[dict[str, Any]],
    batch_size: int,
    *,
    desc: str,
    skip: Container[str] = (),
) -> Iterator[list[dict[str, Any]]]:
    """The planned examples (dicts with a ``key``) not yet in the store, in batches, with a
    progress bar on process 0. Resuming a killed generator is calling this again: examples
    whose key is complete (or in ``skip``, e.g. outputs already filtered) are left out."""
    todo = [it for it in plan if it["key"] not in writer.completed_keys and it["key"] not in skip]
    for start in tqdm(
        range(0, len(todo), batch_size), desc=desc, disable=writer.process_index != 0
    ):
        yield todo[start : start + batch_size]


# --------------------------------------------------------------------------- writer


class StoreWriter:
    """Append examples to a store, one shard of ``shard_size`` examples at a time."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        method: str,
        config: dict | None = None,
        process_index: int | None = None,
        shard_size: int = 256,
    ):
        if shard_size <= 0:
            raise ValueError(f"shard_size must be > 0, got {shard_size}")
        if process_index is None:
            import jax

            process_index = jax.process_index()
        self.root = os.fspath(root)
        self.method = method
        self.config = dict(config or {})
        self.process_index = int(process_index)
        self.shard_size = int(shard_size)
        os.makedirs(self.root, exist_ok=True)
        for stale in glob.glob(os.path.join(self.root, f"*p{self.process_index:05d}*.tmp-*")):
            os.remove(stale)  # unfinished shard of a killed run
        self._manifest_path = os.path.join(self.root, f"manifest-p{self.process_index:05d}.json")
        self.completed_keys: set[str] = set()
        self._class_counts: Counter[int] = Counter()
        own_shards: list[dict[str, Any]] = []
        next_number = 0
        for name in _shard_files(self.root):
            keys, labels = _read_shard_index(self.root, name)
            self.completed_keys.update(keys)
            pi, number = (int(g) for g in SHARD_RE.match(name).groups())
            if pi == self.process_index:
                own_shards.append({"file": name, "num_examples": len(keys)})
                self._class_counts.update(labels)
                next_number = max(next_number, number + 1)
        self._counters: Counter[str] = Counter()
        if os.path.exists(self._manifest_path):
            with open(self._manifest_path) as f:
                self._counters.update(json.load(f).get("counters", {}))
        self._shards = own_shards
        self._next_number = next_number
        self._buffer: list[tuple[str, bytes, int]] = []
        self._buffer_keys: set[str] = set()
        self._pending_counters: Counter[str] = Counter()
        self._closed = False

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # behave like a kill: the unfinished shard is not committed
            self._buffer.clear()
            self._buffer_keys.clear()
            self._closed = True

    @property
    def num_written(self) -> int:
        """Examples of this process committed in complete shards."""
        return sum(s["num_examples"] for s in self._shards)

    def add(
        self,
        key: str,
        image: np.ndarray,
        label: int,
        source: int = 1,
        provenance: dict | None = None,
    ) -> bool:
        """Queue one example; returns False (and does nothing) when ``key`` is already stored."""
        if self._closed:
            raise StoreError(f"store writer for {self.root!r} is closed")
        if not isinstance(key, str) or not key:
            raise ValueError(f"store key must be a non-empty string, got {key!r}")
        if key in self.completed_keys or key in self._buffer_keys:
            return False
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"store image {key!r} must be uint8, got {image.dtype}")
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise ValueError(f"store image {key!r} must be HWC with C in (1, 3), got {image.shape}")
        if int(source) < 1:
            raise ValueError(f"synthetic source id must be >= 1 (0 is real), got {source}")
        prov = {"method": self.method, **(provenance or {})}
        record = encode_example(key, image, int(label), int(source), prov)
        self._buffer.append((key, record, int(label)))
        self._buffer_keys.add(key)
        if len(self._buffer) >= self.shard_size:
            self.flush()
        return True

    def note(self, counter: str, n: int = 1) -> None:
        """Add ``n`` to a manifest counter (committed with the next shard)."""
        self._pending_counters[counter] += int(n)

    def flush(self) -> None:
        """Write the buffered examples as one complete shard (atomically)."""
        if not self._buffer:
            if self._pending_counters:
                self._counters.update(self._pending_counters)
                self._pending_counters.clear()
                self._write_manifest()
            return
        name = f"shard-p{self.process_index:05d}-{self._next_number:06d}.array_record"
        path = os.path.join(self.root, name)
        tmp = temp_path(path)
        try:
            writer = ArrayRecordWriter(tmp, _WRITER_OPTIONS)
            try:
                for _, record, _ in self._buffer:
                    writer.write(record)
            finally:
                writer.close()
            os.replace(tmp, path)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise StoreWriteError(f"could not write shard {path!r}: {e}") from e
        keys = [k for k, _, _ in self._buffer]
        labels = [lab for _, _, lab in self._buffer]
        try:
            _atomic_write_json(path + ".idx.json", {"keys": keys, "labels": labels})
        except OSError as e:  # the shard is complete; readers fall back to scanning it
            log.warning("could not write key index of %s: %s", path, e)
        self.completed_keys.update(keys)
        self._class_counts.update(labels)
        self._shards.append({"file": name, "num_examples": len(keys)})
        self._next_number += 1
        self._buffer.clear()
        self._buffer_keys.clear()
        self._counters.update(self._pending_counters)
        self._pending_counters.clear()
        self._write_manifest()

    def _write_manifest(self) -> None:
        _atomic_write_json(
            self._manifest_path,
            {
                "format": FORMAT,
                "method": self.method,
                "config": self.config,
                "versions": _versions(),
                "process_index": self.process_index,
                "num_examples": self.num_written,
                "counts_per_class": {str(k): v for k, v in sorted(self._class_counts.items())},
                "counters": dict(self._counters),
                "shards": self._shards,
            },
        )

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._write_manifest()
        self._closed = True


# --------------------------------------------------------------------------- reader


class SyntheticStore:
    """A grain random-access source over every complete shard of a store (all processes)."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise StoreError(f"synthetic store {self.root!r} does not exist")
        shards = _shard_files(self.root)
        if not shards:
            raise StoreError(
                f"synthetic store {self.root!r} has no complete shard yet "
                "(run the generator first, or wait for its first shard)"
            )
        self._shards = shards
        rows_shard, rows_offset, labels, keys = [], [], [], []
        seen: set[str] = set()
        for s, name in enumerate(shards):
            shard_keys, shard_labels = _read_shard_index(self.root, name)
            for j, (k, lab) in enumerate(zip(shard_keys, shard_labels, strict=True)):
                if k in seen:
                    log.warning("store %s: duplicate key %r in %s ignored", self.root, k, name)
                    continue
                seen.add(k)
                rows_shard.append(s)
                rows_offset.append(j)
                labels.append(lab)
                keys.append(k)
        self._row_shard = np.asarray(rows_shard, np.int32)
        self._row_offset = np.asarray(rows_offset, np.int64)
        self.labels = np.asarray(labels, np.int32)
        self.keys: list[str] = keys
        self.manifest = self._merge_manifests()
        self._readers: dict[int, ArrayRecordReader] = {}
        self._pid: int | None = None

    def _merge_manifests(self) -> dict[str, Any]:
        parts = []
        for path in sorted(glob.glob(os.path.join(self.root, "manifest-p*.json"))):
            if ".tmp-" in path:
                continue
            with open(path) as f:
                parts.append(json.load(f))
        counters: Counter[str] = Counter()
        for p in parts:
            counters.update(p.get("counters", {}))
        counts = np.bincount(self.labels, minlength=1) if len(self.labels) else np.zeros(0)
        methods = sorted({p.get("method") for p in parts if p.get("method")})
        return {
            "format": FORMAT,
            "method": methods[0] if len(methods) == 1 else methods,
            "config": parts[0].get("config", {}) if parts else {},
            "versions": parts[0].get("versions", {}) if parts else {},
            "num_examples": int(len(self.labels)),
            "counts_per_class": {str(c): int(n) for c, n in enumerate(counts) if n},
            "counters": dict(counters),
            "processes": [p.get("process_index") for p in parts],
            "num_shards": len(self._shards),
        }

    @property
    def num_classes(self) -> int:
        n = self.manifest.get("config", {}).get("num_classes")
        return int(n) if n else int(self.labels.max()) + 1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_pid"] = {}, None
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"SyntheticStore({self.root!r}, n={len(self)}, shards={len(self._shards)})"

    def _record(self, i: int) -> bytes:
        if self._pid != os.getpid():
            self._readers, self._pid = {}, os.getpid()
        s = int(self._row_shard[i])
        reader = self._readers.get(s)
        if reader is None:
            reader = ArrayRecordReader(os.path.join(self.root, self._shards[s]), _READER_OPTIONS)
            self._readers[s] = reader
        return reader.read([int(self._row_offset[i])])[0]

    def _check(self, i: int) -> int:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for a store of {len(self)} rows")
        return i % len(self)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = self._check(i)
        header, image = decode_example(self._record(i))
        return {
            "image": image,
            "label": np.int32(header["label"]),
            "source": np.int32(header["source"]),
            "weight": np.float32(header.get("provenance", {}).get("weight", 1.0)),
            "index": np.int64(i),
        }

    def provenance(self, i: int) -> dict[str, Any]:
        """The provenance of row ``i`` (with its ``key`` and ``method``)."""
        header = decode_header(self._record(self._check(i)))
        return {"key": header["key"], **header.get("provenance", {})}


# --------------------------------------------------------------------------- export / inspect

PROVENANCE_COLUMNS = ("key", "label", "class", "source", "path", "method", "model", "parent",
                      "parent_name", "prompt", "seed", "example", "guidance", "lambda", "mask",
                      "provenance")
_LAMBDA_KEYS = ("lam", "lambda", "alpha")
_MASK_KEYS = ("mask", "mask_kind", "hybrid")


def store_header(store: SyntheticStore, i: int) -> dict[str, Any]:
    """The JSON header of row ``i`` (``key``, ``label``, ``source``, ``provenance``) without
    decoding its image."""
    return decode_header(store._record(store._check(i)))


def provenance_row(header: dict[str, Any], method: Any, class_names: Sequence[str] | None,
                   path: str = "") -> dict[str, Any]:
    """One row of the provenance table (:data:`PROVENANCE_COLUMNS`) from a record header:
    the fields every method shares pulled out of its free-form provenance (parent image,
    prompt, seed, guidance, λ / mask fields), the whole provenance as JSON in the last column.
    """
    prov = dict(header.get("provenance", {}) or {})
    label = int(header["label"])

    def first(keys: Sequence[str]) -> Any:
        for k in keys:
            if prov.get(k) is not None:
                return prov[k]
        return None

    return {
        "key": header["key"], "label": label,
        "class": class_names[label] if class_names and 0 <= label < len(class_names) else "",
        "source": int(header.get("source", 1)), "path": path,
        "method": prov.get("method", method if isinstance(method, str) else ""),
        "model": prov.get("model", ""), "parent": prov.get("parent"),
        "parent_name": prov.get("parent_name"), "prompt": prov.get("prompt"),
        "seed": prov.get("seed"), "example": prov.get("example"),
        "guidance": prov.get("guidance"), "lambda": first(_LAMBDA_KEYS),
        "mask": first(_MASK_KEYS),
        "provenance": json.dumps(prov, sort_keys=True, default=str),
    }


def _class_dir(label: int, class_names: Sequence[str] | None) -> str:
    if class_names and 0 <= label < len(class_names):
        name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in class_names[label])
        return name or f"class_{label:03d}"
    return f"class_{label:03d}"


def export_store(root: str, out_dir: str, *, class_names: Sequence[str] | None = None,
                 table: str = "csv") -> dict[str, Any]:
    """Write the store at ``root`` as an image folder ``out_dir/<class>/<key>.png`` (pixels as
    stored) plus a provenance table ``out_dir/provenance.csv`` (or ``.jsonl``), one row per key
    with the columns :data:`PROVENANCE_COLUMNS` (``path`` relative to ``out_dir``).

    Only complete shards are exported (what :class:`SyntheticStore` reads). Returns
    ``{"num_images", "table", "out_dir", "counts_per_class"}``.
    """
    if table not in ("csv", "jsonl"):
        raise ValueError(f"export: table must be csv or jsonl, got {table!r}")
    store = SyntheticStore(root)
    method = store.manifest.get("method")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    counts: Counter[str] = Counter()
    for i in range(len(store)):
        header, image = decode_example(store._record(i))
        sub = _class_dir(int(header["label"]), class_names)
        rel = os.path.join(sub, f"{header['key']}.png")
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
        img = image[..., 0] if image.shape[-1] == 1 else image
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        atomic_write(os.path.join(out_dir, rel), buf.getvalue())
        rows.append(provenance_row(header, method, class_names, rel))
        counts[sub] += 1
    path = os.path.join(out_dir, f"provenance.{table}")
    text = io.StringIO(newline="")
    if table == "csv":
        w = csv.DictWriter(text, fieldnames=list(PROVENANCE_COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
    else:
        for r in rows:
            text.write(json.dumps(r, default=str) + "\n")
    atomic_write(path, text.getvalue())
    return {"num_images": len(rows), "table": path, "out_dir": out_dir,
            "counts_per_class": dict(sorted(counts.items()))}


def inspect_store(root: str) -> dict[str, Any]:
    """What a store holds and where a writer stands: counts per class and per source,
    methods, models (``tiny-random`` test models flagged), the filter counters of the
    manifests (images a generator dropped, e.g. ``black_images``), and the resume state
    (complete shards, shards without a key index, unfinished temporary files a killed
    writer left, which a resumed run discards and rewrites)."""
    entries = sorted(os.listdir(root)) if os.path.isdir(root) else None
    if entries is None:
        raise StoreError(f"synthetic store {root!r} does not exist")
    tmp_files = [e for e in entries if ".tmp-" in e]
    shards = _shard_files(root)
    no_index = [s for s in shards if not os.path.exists(os.path.join(root, s + ".idx.json"))]
    manifests = [e for e in entries if e.startswith("manifest-p") and ".tmp-" not in e]
    info: dict[str, Any] = {
        "root": os.path.abspath(root), "num_examples": 0, "num_shards": len(shards),
        "shards_without_index": no_index, "unfinished_files": tmp_files,
        "manifests": manifests, "counts_per_class": {}, "counts_per_source": {},
        "methods": {}, "models": {}, "tiny_random": False, "counters": {},
        "complete": not tmp_files,
    }
    if not shards:
        return info
    store = SyntheticStore(root)
    sources: Counter[int] = Counter()
    methods: Counter[str] = Counter()
    models: Counter[str] = Counter()
    manifest_method = store.manifest.get("method")
    for i in range(len(store)):
        h = store_header(store, i)
        prov = h.get("provenance", {}) or {}
        sources[int(h.get("source", 1))] += 1
        methods[str(prov.get("method", manifest_method if isinstance(manifest_method, str)
                                 else "?"))] += 1
        if prov.get("model") is not None:
            models[str(prov["model"])] += 1
    cfg_model = (store.manifest.get("config") or {}).get("model")
    if isinstance(cfg_model, str) and cfg_model not in models:
        models[cfg_model] += 0
    info.update({
        "num_examples": len(store),
        "counts_per_class": {int(k): int(v) for k, v in
                             store.manifest.get("counts_per_class", {}).items()},
        "counts_per_source": dict(sorted(sources.items())),
        "methods": dict(methods), "models": dict(models),
        "tiny_random": any("tiny-random" in m for m in models),
        "counters": store.manifest.get("counters", {}),
        "config": store.manifest.get("config", {}),
    })
    return info


def format_inspection(info: dict[str, Any], class_names: Sequence[str] | None = None) -> list[str]:
    """Human-readable lines of :func:`inspect_store`'s result."""
    lines = [f"store {info['root']}: {info['num_examples']:,} images in {info['num_shards']} "
             f"complete shard(s)"]
    if info["num_shards"] == 0:
        lines.append("  no complete shard yet (the generator has not finished its first shard)")
    per_class = info.get("counts_per_class", {})
    if per_class:
        def name(c: int) -> str:
            return class_names[c] if class_names and 0 <= c < len(class_names) else str(c)

        lines.append("  per class: " + ", ".join(f"{name(c)} {n}" for c, n in per_class.items()))
    if info.get("counts_per_source"):
        lines.append("  per source: " + ", ".join(
            f"{s} {n}" for s, n in info["counts_per_source"].items()))
    if info.get("methods"):
        lines.append("  methods: " + ", ".join(f"{m} ({n})" for m, n in info["methods"].items()))
    if info.get("models"):
        lines.append("  models: " + ", ".join(
            f"{m}{' [TINY-RANDOM: test weights, not a real model]' if 'tiny-random' in m else ''}"
            f" ({n})" for m, n in info["models"].items()))
    counters = info.get("counters", {})
    lines.append("  filtered / noted: " + (", ".join(f"{k} {v}" for k, v in counters.items())
                                           if counters else "none"))
    if info["unfinished_files"] or info["shards_without_index"]:
        lines.append(f"  resume state: INCOMPLETE — {len(info['unfinished_files'])} unfinished "
                     f"temporary file(s) of a killed writer ({', '.join(info['unfinished_files'])})"
                     f"; {len(info['shards_without_index'])} shard(s) without key index. A "
                     "resumed run keeps every complete shard and rewrites the rest.")
    else:
        lines.append("  resume state: every shard complete; a resumed run skips the "
                     f"{info['num_examples']:,} keys already written")
    return lines
