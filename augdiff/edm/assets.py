"""Generators shipped inside the package (``augdiff/assets``) and the export that makes them.

A shipped generator is a ``train-diffusion`` workdir reduced to what sampling reads:
``config.json`` (the training config), ``checkpoints/<step>/`` (an orbax checkpoint whose
state holds the step and the EMA parameters only, optionally stored in float16, and whose
extras hold the config, ``num_classes`` and the trained ``classes``) and ``generator.json``
(how it was trained: data, duration, throughput and the measured figures). It is loaded
through the same code path as a user's checkpoint: set ``generator.checkpoint`` (``augdiff
run``) or ``workdir`` (``augdiff sample``) to its directory; :func:`augdiff.edm.model.
restore_ema` reads the EMA entry of either kind of checkpoint.

``augdiff/assets/generator_cifar10`` is the class-conditional CIFAR-10 EDM at 16² trained
by ``configs/generator_cifar10.py``; :data:`augdiff.config.SHIPPED_GENERATOR` names it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from augdiff.edm.model import checkpoint_extras
from augdiff.train.checkpoint import Checkpointer


def export_generator(workdir: str, out_dir: str, *, step: int | None = None,
                     dtype: str = "float16", info: dict[str, Any] | None = None) -> str:
    """Write the EMA parameters of ``workdir``'s checkpoint ``step`` (default: latest) as a
    sampling-only generator in ``out_dir`` (layout in the module docstring), the parameters
    cast to ``dtype``; ``info`` goes to ``generator.json``. Returns the checkpoint path."""
    if dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"export_generator: dtype must be float16, bfloat16 or float32, "
                         f"got {dtype!r}")
    src = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None)
    try:
        step = src.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"export_generator: no checkpoint in {src.directory}")
        extras = checkpoint_extras(src, step)
        raw = src.restore_host(step)
    finally:
        src.close()
    np_dtype = {"float16": np.float16, "float32": np.float32}.get(dtype)
    if np_dtype is None:
        np_dtype = jnp.bfloat16
    ema = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(np_dtype), raw["ema"])
    keep = {k: extras[k] for k in ("config", "num_classes", "classes", "class_names")
            if k in extras}
    cfg = dict(keep.get("config", {}))
    # Where the training run lay is not part of the generator (MODEL_FIELDS do not read it).
    cfg["workdir"] = "."
    if isinstance(cfg.get("sample"), dict):
        cfg["sample"] = {**cfg["sample"], "store": ""}
    keep["config"] = cfg
    os.makedirs(out_dir, exist_ok=True)
    with Checkpointer(os.path.join(out_dir, "checkpoints"), max_to_keep=None) as dst:
        dst.save(step, {"step": np.asarray(step, np.int32), "ema": ema}, keep)
    # orbax's commit markers name the absolute directory; only their presence is read.
    for root, _, files in os.walk(out_dir):
        if "commit_success.txt" in files:
            with open(os.path.join(root, "commit_success.txt"), "w") as f:
                f.write("Checkpoint commit was successful.")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(keep.get("config", {}), f, indent=2, sort_keys=True)
    n_params = int(sum(np.size(a) for a in jax.tree_util.tree_leaves(ema)))
    record = {"step": int(step), "num_params": n_params, "storage_dtype": dtype,
              "num_classes": keep.get("num_classes"), "classes": keep.get("classes"),
              **(info or {})}
    with open(os.path.join(out_dir, "generator.json"), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    return os.path.join(out_dir, "checkpoints", str(step))


def generator_info(workdir: str) -> dict[str, Any] | None:
    """``generator.json`` of a shipped / exported generator directory (``None`` if absent)."""
    path = os.path.join(str(workdir), "generator.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def directory_bytes(path: str) -> int:
    """Total size of the files under ``path``."""
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
