"""augdiff env: versions, process index/count, devices and the mesh, on every process.

    augdiff env

Prints one JSON line per process: the versions of Python, JAX and the libraries augdiff uses,
the process index and count, the devices and the mesh. Takes no flags besides --help.
"""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    """The flags of augdiff env (none but --help)."""
    return argparse.ArgumentParser(prog="augdiff env", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(list(argv or []))
    distributed.initialize_distributed()
    mesh = distributed.make_mesh()
    info = {"versions": versions(), **distributed.describe(mesh)}
    prefix = f"[process {jax.process_index()}/{jax.process_count()}] "
    print(prefix + json.dumps(info, indent=None, sort_keys=True), flush=True)
    return 0
