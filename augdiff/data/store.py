"""The synthetic store: the one on-disk format every augdiff generator writes.

Layout of a store directory::

    shard-p00000-000000.array_record         ArrayRecord file of serialized examples
    shard-p00000-000000.array_record.idx.json  keys, labels, sha256 and size of that shard
    manifest-p00000.json                     per-process manifest (what made the store, below)

One :class:`StoreWriter` runs per JAX process and names its files with the process index, so
processes never write the same file. A serialized example is::

    uint32 little-endian n | n bytes of JSON header | PNG bytes of the image

with header ``{"key", "label", "source", "provenance"}``; provenance is free-form JSON
(method, parent real ids, prompt / embedding id, seed, guidance, steps, params).

What made the store
- Each manifest holds ``class_names`` (index = label), ``model`` (the model's identity: path,
  hub snapshot, step, a content hash of its files), ``augdiff_version``, ``config`` and
  ``fingerprint``: the sha256 of the canonical JSON of ``generating`` (the method, the model
  identity without its path and name, the class names, and the config: seeds, sampler,
  steps, guidance, sizes, options; everything that changes the images). A writer that
  finds shards made under another fingerprint refuses to continue them
  (:class:`StoreWriteError` naming the fields that differ): a store never holds images of
  two configs, and its manifest never claims a config its images were not made with.

Trust
- Keys and class names are checked when written (:func:`check_name`): no path separator,
  no ``..``, no leading dot, no control character, so a path built from them stays inside
  its folder.
- A shard's sidecar records the sha256 of the shard file; a writer re-verifies every shard
  it did not write before trusting its keys, a reader verifies a shard before its first
  record, and every record's key and label are checked against the sidecar. Anything corrupt
  (shard, sidecar, manifest) is a :class:`StoreError` naming the file and the repair (delete
  that shard and its sidecar, rerun the generator). :func:`verify` lists every bad file.

Durability and resume
- A shard is written to ``<name>.tmp-<pid>``, hashed, its sidecar written, and the shard
  moved into place with ``os.replace``; the manifest follows the same way. A reader only ever
  sees complete shards.
- ``StoreWriter.completed_keys`` holds the keys of every complete shard in the directory
  (all processes): generators skip them, so a run killed mid-shard loses only that shard and
  a resumed run ends with every requested key exactly once. ``add`` of a key that is
  already present is a no-op returning ``False``.
- A shard whose sidecar is missing (killed between the two renames) is scanned instead.
- An exception inside the ``with`` block discards the unfinished shard (like a kill); a
  failed write (disk full) raises :class:`StoreWriteError` naming the file and the free space
  and leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import struct
import unicodedata
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Sequence
from importlib import metadata
from typing import Any

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from PIL import Image
from tqdm import tqdm

from augdiff.files import atomic_write, content_hash, file_sha256, temp_path, writer_lock

log = logging.getLogger(__name__)

FORMAT = "augdiff-store/1"
SHARD_RE = re.compile(r"^shard-p(\d{5})-(\d{6})\.array_record$")
_WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access
_READER_OPTIONS = "readahead_buffer_size:0"


class StoreError(RuntimeError):
    """A synthetic store is missing, empty or inconsistent."""


class StoreWriteError(OSError):
    """Writing to a store failed or was refused (disk full, a bad key or class name, a
    store made by another config); nothing of the unfinished shard was committed."""


def check_name(kind: str, name: Any) -> str:
    """``name`` if it is safe as one path component, else :class:`StoreWriteError`.

    Refused: a non-string or empty name, a path separator (``/`` or ``\\``), ``..``, a
    leading dot (hidden files, ``.`` and ``..``), a control character, more than 200
    characters. ``kind`` (``'key'``, ``'class name'``) names it in the message.
    """
    problem = None
    if not isinstance(name, str) or not name:
        problem = "must be a non-empty string"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif ".." in name:
        problem = "contains '..'"
    elif name.startswith("."):
        problem = "starts with a dot"
    elif any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        problem = "contains a control character"
    elif len(name) > 200:
        problem = "is longer than 200 characters"
    if problem:
        raise StoreWriteError(f"store {kind} {name!r} {problem}; keys and class names must be "
                              "plain file names")
    return name


def _repair_hint(root: str, shard: str) -> str:
    return (f"delete {os.path.join(root, shard)} and {os.path.join(root, shard)}.idx.json and "
            "rerun the generator to rewrite that shard")


def _free_space(path: str) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:,.1f} MiB free"
    except OSError:
        return "free space unknown"


def canonical_json(obj: Any) -> str:
    """The canonical JSON of ``obj`` (sorted keys, no spaces) that fingerprints hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint_of(generating: dict[str, Any]) -> str:
    """sha256 (hex) of :func:`canonical_json` of ``generating``."""
    return hashlib.sha256(canonical_json(generating).encode()).hexdigest()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the fields whose values differ between two nested dicts, as
    ``name: old -> new`` (``<missing>`` where one lacks it)."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if va != vb:
            out.append(f"{k}: {va!r} -> {vb!r}")
    return out


def model_identity(path: str | os.PathLike | None, **fields: Any) -> dict[str, Any]:
    """What a manifest records as ``model``: ``path`` (absolute), the hub ``snapshot``
    (the commit hash when ``path`` is ``.../snapshots/<hash>`` of a hub cache), ``sha256``
    (:func:`augdiff.files.content_hash` of the files under ``path``) and ``fields`` (e.g.
    ``kind``, ``name``, ``step``). Without an existing ``path`` only ``fields`` are kept."""
    out: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if path is None or not os.path.exists(path):
        return out
    path = os.path.abspath(os.fspath(path))
    out["path"] = path
    real = os.path.realpath(path)
    m = re.search(r"(?:^|/)snapshots/([0-9a-f]{7,64})(?:/|$)", real.replace(os.sep, "/"))
    if m:
        out["snapshot"] = m.group(1)
    out["sha256"] = content_hash(path)
    return out


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


def _read_sidecar(root: str, name: str) -> dict[str, Any] | None:
    """The sidecar of shard ``name`` (``keys``, ``labels``, ``sha256``, ``size``), None when it
    is missing; an unreadable one is a :class:`StoreError` naming it."""
    idx = os.path.join(root, name + ".idx.json")
    if not os.path.exists(idx):
        return None
    try:
        with open(idx) as f:
            data = json.load(f)
        keys, labels = list(data["keys"]), [int(x) for x in data["labels"]]
        if len(keys) != len(labels) or not all(isinstance(k, str) for k in keys):
            raise ValueError("keys and labels do not match")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"store sidecar {idx} is corrupt ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); "
                         f"{_repair_hint(root, name)}") from e
    return {"keys": keys, "labels": labels, "sha256": data.get("sha256"),
            "size": data.get("size")}


def _check_shard_hash(root: str, name: str, sidecar: dict[str, Any] | None) -> None:
    """:class:`StoreError` naming shard ``name`` when its bytes are not those its sidecar
    recorded (a sidecar of an older store without ``sha256`` is not checked)."""
    if not sidecar or not sidecar.get("sha256"):
        return
    path = os.path.join(root, name)
    size = os.path.getsize(path)
    if sidecar.get("size") is not None and size != int(sidecar["size"]):
        raise StoreError(f"store shard {path} is corrupt (size {size} bytes, its sidecar says "
                         f"{sidecar['size']}: truncated or overwritten); "
                         f"{_repair_hint(root, name)}")
    if file_sha256(path) != sidecar["sha256"]:
        raise StoreError(f"store shard {path} is corrupt (sha256 differs from its sidecar's: "
                         f"a flipped or overwritten byte); {_repair_hint(root, name)}")


def _read_records(root: str, name: str) -> list[bytes]:
    """Every record of shard ``name``; a file the record reader rejects is a
    :class:`StoreError` naming it."""
    path = os.path.join(root, name)
    try:
        reader = ArrayRecordReader(path, _READER_OPTIONS)
        try:
            return list(reader.read_all())
        finally:
            reader.close()
    except (RuntimeError, ValueError, OSError) as e:
        raise StoreError(f"store shard {path} is corrupt ({str(e).splitlines()[0][:200]}); "
                         f"{_repair_hint(root, name)}") from e


def _check_header(root: str, name: str, header: dict[str, Any], key: str | None,
                  label: int | None) -> None:
    if key is not None and (header.get("key") != key or int(header.get("label", -1)) != label):
        raise StoreError(
            f"store sidecar {os.path.join(root, name)}.idx.json does not match its shard: it "
            f"says key {key!r} label {label}, the record holds key {header.get('key')!r} label "
            f"{header.get('label')} (edited or stale sidecar); {_repair_hint(root, name)}")


def _read_shard_index(root: str, name: str, *, verify: bool = True) -> tuple[list[str], list[int]]:
    """Keys and labels of a complete shard. With ``verify`` (what a writer does before
    trusting a shard it did not write): the shard's bytes against its sidecar's sha256, and
    every record's key and label against the sidecar. Without a sidecar: its records."""
    sidecar = _read_sidecar(root, name)
    if sidecar is not None and not verify:
        return sidecar["keys"], sidecar["labels"]
    _check_shard_hash(root, name, sidecar)
    try:
        headers = [decode_header(r) for r in _read_records(root, name)]
        keys, labels = [h["key"] for h in headers], [int(h["label"]) for h in headers]
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise StoreError(f"store shard {os.path.join(root, name)} has an unreadable record "
                         f"({e}); {_repair_hint(root, name)}") from e
    if sidecar is not None:
        if len(keys) != len(sidecar["keys"]):
            raise StoreError(f"store sidecar {os.path.join(root, name)}.idx.json lists "
                             f"{len(sidecar['keys'])} records, its shard holds {len(keys)}; "
                             f"{_repair_hint(root, name)}")
        for j, h in enumerate(headers):
            _check_header(root, name, h, sidecar["keys"][j], sidecar["labels"][j])
    return keys, labels


def read_manifest(path: str) -> dict[str, Any]:
    """One process's manifest (a JSON object), or a :class:`StoreError` naming the file and
    how to repair it."""
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise StoreError(
            f"store manifest {path} is corrupt ({str(e).splitlines()[0] if str(e) else e!r}); "
            f"delete it with the shard-p{os.path.basename(path)[10:15]}-* files (and their "
            "sidecars) of that process, or the whole store, and rerun the generator") from e
    return data


def manifest_files(root: str) -> list[str]:
    """The manifests of a store's processes (``manifest-pNNNNN.json``; no temporary files)."""
    return sorted(p for p in glob.glob(os.path.join(root, "manifest-p*.json"))
                  if re.fullmatch(r"manifest-p\d{5}\.json", os.path.basename(p)))


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
    """Append examples to a store, one shard of ``shard_size`` examples at a time.

    ``config`` is what made the images (seeds, sampler, steps, guidance, sizes, options);
    ``model`` the model's identity (:func:`model_identity`; default ``config["model"]``;
    its ``path`` and ``name`` are recorded, not fingerprinted: moving the files changes
    nothing, their ``sha256`` says which weights they are);
    ``class_names`` the names of the labels (default ``config["class_names"]``). Together
    with ``method`` they are the store's fingerprint (module docstring): opening a store whose
    shards were made under another fingerprint is a :class:`StoreWriteError` naming the
    fields that differ. ``unfingerprinted`` names config entries recorded but not hashed
    (ones that do not change the images, e.g. a workdir).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        method: str,
        config: dict | None = None,
        process_index: int | None = None,
        shard_size: int = 256,
        model: Any = None,
        class_names: Sequence[str] | None = None,
        unfingerprinted: Sequence[str] = (),
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
        if class_names is None:
            class_names = self.config.get("class_names") or []
        self.class_names = [check_name("class name", c) for c in class_names]
        self.model = model if model is not None else self.config.get("model")
        model_fp = ({k: v for k, v in self.model.items() if k not in ("path", "name")}
                    if isinstance(self.model, dict) else self.model)
        self.generating = {**{k: v for k, v in self.config.items() if k not in unfingerprinted},
                           "method": method, "model": model_fp, "class_names": self.class_names}
        try:
            self.fingerprint = fingerprint_of(self.generating)
        except (TypeError, ValueError) as e:
            raise StoreWriteError(f"store {self.root}: the generating config is not JSON "
                                  f"({e})") from e
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise StoreWriteError(f"could not create store {self.root} ({e}; "
                                  f"{_free_space(os.path.dirname(self.root) or '.')})") from e
        # One writer per store and process index (an advisory lock the OS drops when its
        # holder dies): a second writer fails at once naming the holder, before it can remove
        # the first one's unfinished files or interleave shards with it.
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(writer_lock(
            self.root, command=f"store writer ({method})", process=(0, 1),
            name=f".writer-p{self.process_index:05d}.lock"))
        try:
            self._open_shards()
            own = self._own_manifest
            if own is None or own.get("fingerprint") != self.fingerprint:
                self._write_manifest()  # what makes this store, recorded before its first shard
        except BaseException:
            self._lock.close()
            raise
        self._closed = False

    def _open_shards(self) -> None:
        """Check the store's fingerprint and re-verify the shards already there."""
        for stale in glob.glob(os.path.join(self.root, f"*p{self.process_index:05d}*.tmp-*")):
            os.remove(stale)  # unfinished shard of a killed run
        self._manifest_path = os.path.join(self.root, f"manifest-p{self.process_index:05d}.json")
        shard_names = _shard_files(self.root)
        manifests = {int(os.path.basename(p)[10:15]): read_manifest(p)
                     for p in manifest_files(self.root)}
        self._check_fingerprint(manifests, shard_names)
        self.completed_keys: set[str] = set()
        self._class_counts: Counter[int] = Counter()
        own_shards: list[dict[str, Any]] = []
        next_number = 0
        for name in shard_names:  # every shard this writer did not write: re-verified
            keys, labels = _read_shard_index(self.root, name)
            self.completed_keys.update(keys)
            pi, number = (int(g) for g in SHARD_RE.match(name).groups())
            if pi == self.process_index:
                own_shards.append({"file": name, "num_examples": len(keys)})
                self._class_counts.update(labels)
                next_number = max(next_number, number + 1)
        self._counters: Counter[str] = Counter()
        own = manifests.get(self.process_index)
        if own is not None and own.get("fingerprint") == self.fingerprint:
            self._counters.update(own.get("counters", {}))
        self._shards = own_shards
        self._next_number = next_number
        self._buffer: list[tuple[str, bytes, int]] = []
        self._buffer_keys: set[str] = set()
        self._pending_counters: Counter[str] = Counter()
        self._own_manifest = own

    def _check_fingerprint(self, manifests: dict[int, dict[str, Any]],
                           shard_names: list[str]) -> None:
        """Refuse to continue shards made under another fingerprint (or of unknown origin)."""
        with_shards = {int(SHARD_RE.match(n).group(1)) for n in shard_names}
        for pi in sorted(with_shards):
            m = manifests.get(pi)
            path = os.path.join(self.root, f"manifest-p{pi:05d}.json")
            hint = ("write to a new store (a different output path) or delete "
                    f"{self.root} to regenerate it")
            if m is None or not m.get("fingerprint"):
                raise StoreWriteError(
                    f"store {self.root} holds shards of process {pi} without a fingerprinted "
                    f"manifest ({path} {'has no fingerprint' if m else 'is missing'}): what made "
                    f"them is unknown; {hint}")
            if m["fingerprint"] != self.fingerprint:
                diffs = differing_fields(m.get("generating") or {}, self.generating)
                raise StoreWriteError(
                    f"store {self.root} was made by another config ({path}); fields that "
                    f"differ: {'; '.join(diffs) or 'fingerprint'}; {hint}")

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # behave like a kill: the unfinished shard is not committed
            self._abandon()

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
        """Queue one example; returns False (and does nothing) when ``key`` is already stored.
        A key that is not a plain file name (:func:`check_name`) is a
        :class:`StoreWriteError`."""
        if self._closed:
            raise StoreError(f"store writer for {self.root!r} is closed")
        check_name("key", key)
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
        if self.class_names and not 0 <= int(label) < len(self.class_names):
            raise ValueError(f"store image {key!r}: label {label} is not one of the "
                             f"{len(self.class_names)} classes")
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
        """Write the buffered examples as one complete shard (atomically): the shard to a
        temporary file, its sidecar (keys, labels, sha256, size), then the shard moved into
        place. A failure removes both and raises :class:`StoreWriteError`; the writer is then
        done (as if its process had died: its lock is released, a new writer resumes)."""
        try:
            self._flush()
        except StoreWriteError:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Drop the unfinished shard and release the store, like a killed process."""
        self._buffer.clear()
        self._buffer_keys.clear()
        self._closed = True
        self._lock.close()

    def _flush(self) -> None:
        if not self._buffer:
            if self._pending_counters:
                self._counters.update(self._pending_counters)
                self._pending_counters.clear()
                self._write_manifest()
            return
        name = f"shard-p{self.process_index:05d}-{self._next_number:06d}.array_record"
        path = os.path.join(self.root, name)
        tmp = temp_path(path)
        keys = [k for k, _, _ in self._buffer]
        labels = [lab for _, _, lab in self._buffer]
        target = path  # named as the shard it would have been
        try:
            writer = ArrayRecordWriter(tmp, _WRITER_OPTIONS)
            try:
                for _, record, _ in self._buffer:
                    writer.write(record)
            finally:
                writer.close()
            sidecar = {"keys": keys, "labels": labels, "sha256": file_sha256(tmp),
                       "size": os.path.getsize(tmp)}
            target = path + ".idx.json"
            _atomic_write_json(target, sidecar)
            target = path
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:  # array_record reports a full disk as RuntimeError
            for leftover in (tmp, path + ".idx.json"):
                if os.path.exists(leftover):
                    os.remove(leftover)
            raise StoreWriteError(f"could not write store file {target} ({self._why(e)}; "
                                  f"{_free_space(self.root)}); nothing of this shard was "
                                  "kept, rerun once there is space to resume") from e
        self.completed_keys.update(keys)
        self._class_counts.update(labels)
        self._shards.append({"file": name, "num_examples": len(keys)})
        self._next_number += 1
        self._buffer.clear()
        self._buffer_keys.clear()
        self._counters.update(self._pending_counters)
        self._pending_counters.clear()
        self._write_manifest()

    @staticmethod
    def _why(e: BaseException) -> str:
        return str(e).splitlines()[0][:200] if str(e) else type(e).__name__

    def _write_manifest(self) -> None:
        try:
            _atomic_write_json(
                self._manifest_path,
                {
                    "format": FORMAT,
                    "method": self.method,
                    "class_names": self.class_names,
                    "model": self.model,
                    "augdiff_version": _versions()["augdiff"],
                    "fingerprint": self.fingerprint,
                    "generating": self.generating,
                    "config": self.config,
                    "versions": _versions(),
                    "process_index": self.process_index,
                    "num_examples": self.num_written,
                    "counts_per_class": {str(k): v for k, v in sorted(self._class_counts.items())},
                    "counters": dict(self._counters),
                    "shards": self._shards,
                },
            )
        except OSError as e:
            raise StoreWriteError(f"could not write store file {self._manifest_path} "
                                  f"({self._why(e)}; {_free_space(self.root)}); rerun once "
                                  "there is space to resume") from e

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
            self._write_manifest()
        finally:
            self._closed = True
            self._lock.close()


# --------------------------------------------------------------------------- reader


class SyntheticStore:
    """A grain random-access source over every complete shard of a store (all processes).

    Each shard's bytes are checked against its sidecar's sha256 before its first record is
    read (once per shard and process), and every record's key and label against the sidecar;
    a mismatch is a :class:`StoreError` naming the file."""

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
            shard_keys, shard_labels = _read_shard_index(self.root, name, verify=False)
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
        self._sidecars: dict[int, dict[str, Any] | None] = {}
        self._pid: int | None = None

    def _merge_manifests(self) -> dict[str, Any]:
        paths = manifest_files(self.root)
        parts = [read_manifest(p) for p in paths]
        prints = {p.get("fingerprint") for p in parts}
        if len(prints) > 1:
            raise StoreError(f"synthetic store {self.root} mixes images of different configs "
                             f"(manifests {', '.join(os.path.basename(p) for p in paths)} have "
                             "different fingerprints)")
        counters: Counter[str] = Counter()
        for p in parts:
            counters.update(p.get("counters", {}))
        counts = np.bincount(self.labels, minlength=1) if len(self.labels) else np.zeros(0)
        methods = sorted({p.get("method") for p in parts if p.get("method")})
        return {
            "format": FORMAT,
            "method": methods[0] if len(methods) == 1 else methods,
            "class_names": list(parts[0].get("class_names") or []) if parts else [],
            "model": parts[0].get("model") if parts else None,
            "augdiff_version": parts[0].get("augdiff_version") if parts else None,
            "fingerprint": parts[0].get("fingerprint") if parts else None,
            "generating": parts[0].get("generating", {}) if parts else {},
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
            self._readers, self._sidecars, self._pid = {}, {}, os.getpid()
        s = int(self._row_shard[i])
        name = self._shards[s]
        reader = self._readers.get(s)
        try:
            if reader is None:
                sidecar = _read_sidecar(self.root, name)
                _check_shard_hash(self.root, name, sidecar)
                reader = ArrayRecordReader(os.path.join(self.root, name), _READER_OPTIONS)
                self._readers[s], self._sidecars[s] = reader, sidecar
            return reader.read([int(self._row_offset[i])])[0]
        except (RuntimeError, ValueError, OSError) as e:
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"store shard {os.path.join(self.root, name)} is corrupt "
                             f"({str(e).splitlines()[0][:200] if str(e) else e!r}); "
                             f"{_repair_hint(self.root, name)}") from e

    def _header(self, i: int, record: bytes) -> dict[str, Any]:
        """The header of record ``record`` of row ``i``, checked against its sidecar."""
        s = int(self._row_shard[i])
        name = self._shards[s]
        try:
            header = decode_header(record)
        except (ValueError, struct.error) as e:
            raise StoreError(f"store shard {os.path.join(self.root, name)} has an unreadable "
                             f"record ({e}); {_repair_hint(self.root, name)}") from e
        sidecar = self._sidecars.get(s)
        if sidecar is not None:
            j = int(self._row_offset[i])
            _check_header(self.root, name, header, sidecar["keys"][j], sidecar["labels"][j])
        return header

    def _check(self, i: int) -> int:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for a store of {len(self)} rows")
        return i % len(self)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = self._check(i)
        record = self._record(i)
        header = self._header(i, record)
        _, image = decode_example(record)
        return {
            "image": image,
            "label": np.int32(header["label"]),
            "source": np.int32(header["source"]),
            "weight": np.float32(header.get("provenance", {}).get("weight", 1.0)),
            "index": np.int64(i),
        }

    def provenance(self, i: int) -> dict[str, Any]:
        """The provenance of row ``i`` (with its ``key`` and ``method``)."""
        i = self._check(i)
        header = self._header(i, self._record(i))
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
    i = store._check(i)
    return store._header(i, store._record(i))


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


def verify(root: str | os.PathLike) -> dict[str, str]:
    """Every bad file of the store at ``root``, by file name, with what is wrong: manifests
    that do not parse, sidecars that do not parse, shards whose bytes differ from their
    sidecar's sha256 or whose records do not read, decode, or match their sidecar's keys and
    labels. Reads every record; an empty dict means the store is sound."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise StoreError(f"synthetic store {root!r} does not exist")
    bad: dict[str, str] = {}
    for path in manifest_files(root):
        try:
            read_manifest(path)
        except StoreError as e:
            bad[os.path.basename(path)] = str(e)
    for name in _shard_files(root):
        try:
            sidecar = _read_sidecar(root, name)
            _check_shard_hash(root, name, sidecar)
            records = _read_records(root, name)
            if sidecar is not None and len(records) != len(sidecar["keys"]):
                raise StoreError(f"store shard {os.path.join(root, name)} holds {len(records)} "
                                 f"records, its sidecar {len(sidecar['keys'])}; "
                                 f"{_repair_hint(root, name)}")
            for j, record in enumerate(records):
                try:
                    header, _ = decode_example(record)
                except (ValueError, OSError, struct.error) as e:
                    raise StoreError(f"store shard {os.path.join(root, name)}: record {j} does "
                                     f"not decode ({e}); {_repair_hint(root, name)}") from e
                if sidecar is not None:
                    _check_header(root, name, header, sidecar["keys"][j], sidecar["labels"][j])
        except StoreError as e:
            bad[name] = str(e)
    return bad


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
    if not shards and not manifest_files(root):
        raise StoreError(f"{root} is not a synthetic store (no manifest-p*.json and no "
                         "shard-p*.array_record files)")
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
    classes: Counter[int] = Counter()
    for i in range(len(store)):
        h = store_header(store, i)  # checked against its sidecar
        prov = h.get("provenance", {}) or {}
        classes[int(h["label"])] += 1
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
        "counts_per_class": dict(sorted(classes.items())),  # from the records
        "counts_per_source": dict(sorted(sources.items())),
        "methods": dict(methods), "models": dict(models),
        "tiny_random": any("tiny-random" in m for m in models),
        "counters": store.manifest.get("counters", {}),
        "config": store.manifest.get("config", {}),
        "class_names": store.manifest.get("class_names", []),
        "model": store.manifest.get("model"),
        "fingerprint": store.manifest.get("fingerprint"),
        "augdiff_version": store.manifest.get("augdiff_version"),
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
