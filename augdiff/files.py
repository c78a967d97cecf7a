"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every writer of augdiff's bookkeeping (``stages.json``, run records, store manifests and
sidecars, reports, caches) goes through :func:`atomic_write`: the bytes go to a temporary file
in the destination's folder (``<name>.tmp-<pid>``), are flushed and ``fsync``-ed, and the
temporary file is moved over the destination with ``os.replace`` (atomic on POSIX within one
file system). On any failure, a full disk included, the temporary file is removed and the
destination is left as it was.

:func:`writer_lock` is the one-writer-per-folder lock every writing command takes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

_Main = TypeVar("_Main", bound=Callable[..., Any])


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
LOCK_NAME = ".augdiff.lock"


class WorkdirLockedError(RuntimeError):
    """Another live process holds the folder's writer lock (:func:`writer_lock`)."""


def _process_index() -> tuple[int, int]:
    """``(process_index, process_count)`` of this JAX process (``(0, 1)`` before any backend)."""
    import jax  # heavy; only needed once a command takes its lock

    return jax.process_index(), jax.process_count()


def lock_path(folder: str | os.PathLike, process_index: int | None = None,
              name: str = "") -> str:
    """The lock file of ``folder``: ``name`` (default ``.augdiff.lock``), or ``<name>.<i>`` for
    process ``i`` of a multi-process run (whose files are already per process)."""
    name = name or LOCK_NAME
    name = name if process_index is None else f"{name}.{int(process_index)}"
    return os.path.join(os.fspath(folder), name)


@contextlib.contextmanager
def writer_lock(folder: str | os.PathLike, command: str | None = None,
                process: tuple[int, int] | None = None, name: str = "",
                transient: bool = False) -> Iterator[str]:
    """Hold the one-writer lock of ``folder`` (created if missing) for the ``with`` body.

    An advisory, non-blocking ``fcntl.flock`` on :func:`lock_path`; the OS releases it when
    the holder exits or is killed, so a stale lock file is harmless. The holder's pid, command
    line (default ``sys.argv``) and start time are written into the file; a second writer
    fails at once with :class:`WorkdirLockedError` naming them. ``process``: ``(index,
    count)`` of this process, default JAX's; a run of several processes takes one lock per
    process index, since its files are already per process. ``name``: the lock file's name in
    ``folder`` (default ``.augdiff.lock``), for a writer that owns one entry of a shared folder.
    ``transient``: remove the lock file on release (for a lock in a folder that is not
    augdiff's; a process that opened the file just before its removal may then hold a lock
    on the removed file, so use it only where the guarded write is atomic by itself).
    """
    index, count = _process_index() if process is None else process
    process_index = int(index) if count > 1 else None
    os.makedirs(os.fspath(folder), exist_ok=True)
    path = lock_path(folder, process_index, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(path)
            raise WorkdirLockedError(
                f"{os.fspath(folder)} is in use by another augdiff process (pid "
                f"{holder.get('pid', '?')}: {holder.get('command', '?')}, started "
                f"{holder.get('started', '?')}); wait for it or stop it ({path})"
            ) from None
        info = {"pid": os.getpid(), "command": command or " ".join(sys.argv),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD.add(fd)
        try:
            yield path
        finally:
            if transient:
                os.unlink(path)  # still held: removed before any other writer can take it
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the lock (the file stays: holding it is what counts)


# A forked child (data-loader workers) must not keep the lock alive after its parent is killed:
# it drops its copies of the held descriptors (the parent's copy keeps the lock).
_HELD: set[int] = set()


def _drop_held_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_held_in_child)


def workdir_of(config: Any) -> str:
    """``config.workdir`` ('' when unset): the folder most writing commands lock."""
    return str(config.get("workdir", "") or "")


def locked(folder_of: Callable[[Any], Any]) -> Callable[[_Main], _Main]:
    """Decorate a command's ``main(config)`` to run under :func:`writer_lock` of
    ``folder_of(config)`` (the folder it writes: workdir, store), taken before any work. An
    empty folder (unset ``workdir``) takes no lock: the command itself reports the config."""

    def wrap(main: _Main) -> _Main:
        @functools.wraps(main)
        def run(config: Any, *args: Any, **kwargs: Any) -> Any:
            folder = folder_of(config)
            if not folder:
                return main(config, *args, **kwargs)
            with writer_lock(str(folder)):
                return main(config, *args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


def _read_holder(path: str) -> dict[str, Any]:
    """The holder info in a lock file (``{}`` when not yet written or unreadable)."""
    try:
        with open(path) as f:
            out = json.load(f)
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError):
        return {}
