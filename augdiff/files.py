"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every writer of augdiff's bookkeeping (``stages.json``, run records, store manifests and
sidecars, reports, caches) goes through :func:`atomic_write`: the bytes go to a temporary file
in the destination's folder (``<name>.tmp-<pid>``), are flushed and ``fsync``-ed, and the
temporary file is moved over the destination with ``os.replace`` (atomic on POSIX within one
file system). On any failure, a full disk included, the temporary file is removed and the
destination is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def temp_path(path: str) -> str:
    """The temporary name :func:`atomic_write` uses for ``path`` (one per process)."""
    return f"{path}.tmp-{os.getpid()}"


def atomic_write(path: str | os.PathLike, data: bytes | str, *, make_dirs: bool = True) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically (module docstring)."""
    path = os.fspath(path)
    if make_dirs and os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """``obj`` as JSON (sorted keys; non-JSON values by ``str``), written atomically."""
    atomic_write(path, json.dumps(obj, indent=indent, sort_keys=True, default=str))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value stored at ``path``."""
    with open(path) as f:
        return json.load(f)


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """The sha256 (hex) of the bytes of the file at ``path`` (symbolic links followed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_hash(paths: str | os.PathLike | list[str | os.PathLike]) -> str:
    """One sha256 (hex) over the contents of ``paths`` (files, or folders walked recursively).

    Each file contributes the line ``<name>\\0<sha256 of its bytes>\\n``, where ``name`` is
    its path relative to the folder given (a file given directly: its base name); the lines
    are sorted by name and hashed together. Symbolic links are followed (a hub-cache snapshot
    links to its blobs), so the hash depends on the bytes and the names only, not on where
    the files lie or when they were written.
    """
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    lines = []
    for p in items:
        p = os.fspath(p)
        if os.path.isdir(p):
            for dirpath, dirnames, filenames in os.walk(p, followlinks=True):
                dirnames.sort()
                for fn in filenames:
                    full = os.path.join(dirpath, fn)
                    rel = os.path.relpath(full, p).replace(os.sep, "/")
                    lines.append(f"{rel}\0{file_sha256(full)}\n")
        else:
            lines.append(f"{os.path.basename(p)}\0{file_sha256(p)}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
