"""Orbax checkpointing of one pytree plus JSON extras, shared by every trainer in augdiff.

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=2)
    ckpt.save(step, state, {"loader": loader.get_state(), "epoch": 3})
    step = ckpt.latest_step()                       # None when nothing is saved yet
    state, extras = ckpt.restore(step, like=state)  # `like`: concrete or abstract target

Restores always go through an abstract target (``jax.ShapeDtypeStruct`` with the sharding of
``like``), so optax states come back as the same named tuples and arrays land on the mesh the
caller is using. Extras are JSON; ``bytes`` values (e.g. a grain iterator state) are
base64-wrapped transparently. Saves are synchronous by default so a step counted as saved is
durable on disk (orbax itself writes to a temporary directory and renames on commit).

Integrity: once orbax has committed a step, ``<step>/augdiff_checksum.json`` records the
sha256 of every file in it (written atomically). :meth:`Checkpointer.latest_step` and every
restore verify it: a corrupt newest step is reported by path in one line, moved aside to
``<step>.corrupt`` and the previous good step is used instead ("falling back to step N"); no
good step at all is a one-line :class:`CheckpointError` naming the folder. A step without the
file (written by an older augdiff) is used with a warning line. A full disk during a save is a
one-line :class:`CheckpointError` naming the path and the free space, leaving no partial step.

:func:`restore_classifier_variables` reads back only the parameters and BatchNorm statistics
of a classifier's saved train state (no optimizer target), checked against the model's shapes.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import shutil
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from augdiff.files import read_json, write_json

_BYTES_TAG = "__bytes_b64__"
CHECKSUM_FILE = "augdiff_checksum.json"
# Rewritten after a save by the generator export (only their presence is read): not hashed.
_UNHASHED = {CHECKSUM_FILE, "commit_success.txt"}


class CheckpointError(Exception):
    """A checkpoint that cannot be used (corrupt, none valid, disk full): one line, naming it."""


def step_checksums(step_dir: str) -> dict[str, str]:
    """sha256 of every file under ``step_dir`` (relative path -> hex digest)."""
    out: dict[str, str] = {}
    for root, _, files in os.walk(step_dir):
        for name in files:
            if name in _UNHASHED or ".tmp-" in name:
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, step_dir)] = hashlib.file_digest(f, "sha256").hexdigest()
    return dict(sorted(out.items()))


def write_checksums(step_dir: str) -> None:
    """Record :func:`step_checksums` of a committed step in ``<step_dir>/augdiff_checksum.json``."""
    write_json(os.path.join(step_dir, CHECKSUM_FILE),
               {"algorithm": "sha256", "files": step_checksums(step_dir)})


def verify_step(step_dir: str) -> bool:
    """Check a step against its checksum file: ``True`` when it verifies, ``False`` when it has
    none (an older augdiff); a :class:`CheckpointError` naming the bad file otherwise."""
    record = os.path.join(step_dir, CHECKSUM_FILE)
    if not os.path.exists(record):
        return False
    try:
        want = read_json(record)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {step_dir} is corrupt: unreadable {record} "
                              f"({type(e).__name__})") from None
    got = step_checksums(step_dir)
    for rel, digest in want.items():
        if rel not in got:
            raise CheckpointError(f"checkpoint {step_dir} is corrupt: "
                                  f"{os.path.join(step_dir, rel)} is missing")
        if got[rel] != digest:
            raise CheckpointError(f"checkpoint {step_dir} is corrupt: "
                                  f"{os.path.join(step_dir, rel)} fails its sha256 checksum")
    return True


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(f"augdiff: {msg}", file=sys.stderr, flush=True)


def _disk_full(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def _encode(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        return {_BYTES_TAG: base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy / jax scalars
        return obj.item()
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_BYTES_TAG}:
            return base64.b64decode(obj[_BYTES_TAG])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding of every array leaf, for restoring onto the same layout."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """A thin :class:`orbax.checkpoint.CheckpointManager` over items ``state`` and ``extras``."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 2,
        async_save: bool = False,
        process_local: bool = False,
    ) -> None:
        """``process_local``: the checkpoint belongs to this process alone (e.g. one group of
        Diffusion Inversion's stage 1): it is written and read by this process, with no
        cross-process barrier, so other processes may save other checkpoints meanwhile."""
        self.directory = os.path.abspath(os.fspath(directory))
        extra: dict[str, Any] = {}
        if process_local and jax.process_count() > 1:
            pid = jax.process_index()
            os.makedirs(self.directory, exist_ok=True)  # orbax: no create=True with a subset
            extra["create"] = False
            extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
                primary_host=pid, active_processes={pid}, barrier_sync_key_prefix=f"local{pid}"
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            **{"create": True, **extra},
        )
        self._mngr = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "extras")
        )
        self._primary = process_local or jax.process_index() == 0
        self._async = async_save
        self._unhashed: list[int] = []  # async saves whose checksum is still to write
        self._verified: dict[int, bool] = {}  # step -> has a checksum (verified) or not

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def verify(self, step: int) -> bool:
        """:func:`verify_step` of ``step`` (cached); warns once about a step without checksum."""
        if step not in self._verified:
            self._verified[step] = verify_step(self.step_dir(step))
            if not self._verified[step]:
                _say(f"warning: checkpoint {self.step_dir(step)} has no {CHECKSUM_FILE} "
                     "(written by an older augdiff, or killed before its checksum): restoring "
                     "it unverified")
        return self._verified[step]

    def latest_step(self) -> int | None:
        """The newest committed step that verifies, or ``None`` when none is saved. Corrupt
        newer steps are reported, moved aside and skipped (module docstring)."""
        self.wait()
        steps = sorted(self._mngr.all_steps(), reverse=True)
        bad: list[tuple[int, str]] = []
        for step in steps:
            try:
                self.verify(step)
            except CheckpointError as e:
                bad.append((step, str(e)))
                continue
            for b, why in bad:
                self._move_aside(b, why, step)
            return step
        if bad:
            raise CheckpointError(f"no valid checkpoint in {self.directory}: {bad[0][1]}"
                                  + (f" (and {len(bad) - 1} older)" if len(bad) > 1 else "")
                                  + "; delete the corrupt steps to start afresh")
        return None

    def _move_aside(self, step: int, why: str, fallback: int) -> None:
        src = self.step_dir(step)
        dst = src + ".corrupt"
        if self._primary:
            try:
                if os.path.exists(dst):
                    shutil.rmtree(dst)
                os.rename(src, dst)
                where = f"moved to {dst}"
            except OSError:
                where = "left in place"
        else:
            where = f"moved to {dst} by process 0"
        _say(f"{why}; {where}; falling back to step {fallback}")
        self._verified.pop(step, None)
        self._mngr.reload()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(
        self, step: int, state: Any, extras: dict[str, Any] | None = None, *, force: bool = True
    ) -> bool:
        """Save ``state`` (a pytree of arrays) and JSON ``extras`` under ``step``.

        Returns whether a checkpoint was written; a step that already exists is skipped.
        """
        if step in self._mngr.all_steps():
            return False
        self._write_pending_checksums()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            extras=ocp.args.JsonSave(_encode(extras or {})),
        )
        try:
            saved = bool(self._mngr.save(int(step), args=args, force=force))
            if saved:
                self._unhashed.append(int(step))
                if not self._async:
                    self._write_pending_checksums()
        except Exception as e:
            if not _disk_full(e):
                raise
            self._remove_partial(int(step))
            free = shutil.disk_usage(self.directory).free
            raise CheckpointError(
                f"checkpoint {self.step_dir(step)}: no space left on device "
                f"({free / 2**20:,.1f} MiB free in {self.directory}); the partial step was "
                "removed: free space and rerun to resume from the previous checkpoint"
            ) from None
        return saved

    def _write_pending_checksums(self) -> None:
        """Hash the steps orbax has finished committing (after every synchronous save)."""
        if not self._unhashed:
            return
        self._mngr.wait_until_finished()
        for step in self._unhashed:
            if self._primary and os.path.isdir(self.step_dir(step)):
                write_checksums(self.step_dir(step))
            self._verified[step] = True
        self._unhashed.clear()

    def _remove_partial(self, step: int) -> None:
        """Remove what a failed save of ``step`` left: orbax's tmp folder, the step itself."""
        self._unhashed = [s for s in self._unhashed if s != step]
        if self._primary:
            for name in os.listdir(self.directory):
                if name == str(step) or name.startswith(f"{step}.orbax-checkpoint-tmp"):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        self._mngr.reload()

    def restore(self, step: int | None, like: Any) -> tuple[Any, dict[str, Any]]:
        """Restore ``step`` (default: latest) onto the structure/shardings of ``like``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        self.verify(int(step))
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(like)),
            extras=ocp.args.JsonRestore(),
        )
        try:
            out = self._mngr.restore(int(step), args=args)
        except (ValueError, OSError, RuntimeError) as e:  # unverified (older) steps only
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(f"checkpoint {self.step_dir(step)} cannot be restored: "
                                  f"{type(e).__name__}: {first[:300]}") from None
        return out["state"], _decode(out["extras"] or {})

    def restore_host(self, step: int) -> Any:
        """The ``state`` item of ``step`` as host numpy arrays, without a target (verified):
        what the classifier extractor and EMA loaders read."""
        self.verify(int(step))
        item = os.path.join(self.step_dir(step), "state")
        if not os.path.isdir(item):
            raise FileNotFoundError(f"no 'state' item in checkpoint {item!r}")
        # The handler's own tree metadata: the checkpointer's would look for a step metadata
        # file inside the item folder, which orbax never writes there (an absl warning).
        meta = ocp.PyTreeCheckpointHandler().metadata(ocp.utils.epath.Path(item)).tree
        restore_args = jax.tree_util.tree_map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta,
            is_leaf=lambda x: not isinstance(x, dict | list | tuple),
        )
        return ocp.PyTreeCheckpointer().restore(
            item, args=ocp.args.PyTreeRestore(restore_args=restore_args))

    def wait(self) -> None:
        self._mngr.wait_until_finished()
        self._write_pending_checksums()

    def close(self) -> None:
        self.wait()
        self._mngr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def restore_classifier_variables(
    checkpoint_dir: str, abstract: Any, step: int | None = None
) -> Any:
    """``{'params', 'batch_stats'}`` of a classifier train state saved by :class:`Checkpointer`
    (the trainer's ``workdir/checkpoints``): what the classifier feature extractors and the
    reference classifier's export load.

    The optimizer state is not needed, so the state is restored without a target and only
    parameters and BatchNorm statistics are kept; their shapes are checked against
    ``abstract`` (the model's ``jax.eval_shape`` variables).
    """
    if not checkpoint_dir or not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(
            f"classifier extractor: checkpoint directory {checkpoint_dir!r} not found (set "
            "extractor.checkpoint to the 'checkpoints' folder of an `augdiff train` run on the "
            "real data)"
        )
    ckpt = Checkpointer(checkpoint_dir, max_to_keep=None)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"classifier extractor: no checkpoint saved in {checkpoint_dir!r}")
        # Every array as a host numpy array: no optimizer target, no saved sharding.
        raw = ckpt.restore_host(step)
    finally:
        ckpt.close()
    got = {"params": raw["params"], "batch_stats": raw.get("batch_stats", {}) or {}}
    want = {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}
    got_shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), got)
    want_shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), want)
    if got_shapes != want_shapes:
        raise ValueError(
            f"classifier extractor: checkpoint {checkpoint_dir!r} (step {step}) does not match "
            "the configured classifier (extractor.classifier / width / num_classes)"
        )
    return got
