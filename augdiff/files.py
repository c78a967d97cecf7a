"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every writer of augdiff's bookkeeping (``stages.json``, run records, store manifests and
sidecars, reports, caches) goes through :func:`atomic_write`: the bytes go to a temporary file
in the destination's folder (``<name>.tmp-<pid>``), are flushed and ``fsync``-ed, and the
temporary file is moved over the destination with ``os.replace`` (atomic on POSIX within one
file system). On any failure, a full disk included, the temporary file is removed and the
destination is left as it was.
"""

from __future__ import annotations

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
