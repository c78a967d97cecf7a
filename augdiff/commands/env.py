"""``augdiff env``: versions, process index/count, devices and the mesh, on every process."""

from __future__ import annotations

import importlib.metadata as md
import json
import platform

import jax

from augdiff import distributed


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "ml_collections",
                "tensorflow-datasets", "diffusers", "transformers", "numpy", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    distributed.initialize_distributed()
    mesh = distributed.make_mesh()
    info = {"versions": versions(), **distributed.describe(mesh)}
    prefix = f"[process {jax.process_index()}/{jax.process_count()}] "
    print(prefix + json.dumps(info, indent=None, sort_keys=True), flush=True)
    return 0
