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

:func:`restore_classifier_variables` reads back only the parameters and BatchNorm statistics
of a classifier's saved train state (no optimizer target), checked against the model's shapes.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_BYTES_TAG = "__bytes_b64__"


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

    def latest_step(self) -> int | None:
        """The newest fully committed step, or ``None``."""
        return self._mngr.latest_step()

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
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            extras=ocp.args.JsonSave(_encode(extras or {})),
        )
        return bool(self._mngr.save(int(step), args=args, force=force))

    def restore(self, step: int | None, like: Any) -> tuple[Any, dict[str, Any]]:
        """Restore ``step`` (default: latest) onto the structure/shardings of ``like``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(like)),
            extras=ocp.args.JsonRestore(),
        )
        out = self._mngr.restore(int(step), args=args)
        return out["state"], _decode(out["extras"] or {})

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
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
        item = os.path.join(ckpt.directory, str(step), "state")
        if not os.path.isdir(item):
            raise FileNotFoundError(f"classifier extractor: no 'state' item in {item!r}")
        # Restore every array as a host numpy array: no optimizer target, no saved sharding.
        ckptr = ocp.PyTreeCheckpointer()
        meta = ckptr.metadata(item).item_metadata.tree
        restore_args = jax.tree_util.tree_map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta,
            is_leaf=lambda x: not isinstance(x, dict | list | tuple),
        )
        raw = ckptr.restore(item, args=ocp.args.PyTreeRestore(restore_args=restore_args))
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
