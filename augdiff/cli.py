"""``augdiff`` command line: one entry point, thin subcommands over the library.

    augdiff <command> --config configs/x.py[:variant] [--config.a.b=v ...]

Each command lives in ``augdiff/commands/<name>.py`` and exposes ``main(config)``; the CLI
only parses the config (ml_collections config flags) and calls it.
"""

from __future__ import annotations

import importlib
import os
import sys

from augdiff import distributed
from augdiff.config import ConfigError, load_config

COMMANDS = {
    "env": "augdiff.commands.env",
    "train": "augdiff.commands.train",
    "train-diffusion": "augdiff.commands.train_diffusion",
    "sample": "augdiff.commands.sample",
    "generate": "augdiff.commands.generate",
    "evaluate": "augdiff.commands.evaluate",
    "run": "augdiff.commands.run",
    "export": "augdiff.commands.export",
    "inspect": "augdiff.commands.inspect",
    "compile": "augdiff.commands.compile",
}
# Commands that take their own arguments instead of a config.
PLAIN_COMMANDS = ("env", "export", "inspect", "compile")

USAGE = """usage: augdiff <command> --config configs/<experiment>.py[:variant] [--config.k=v ...]

commands:
  env              versions, processes, devices and the mesh
  train            train and evaluate a classifier on real (+ synthetic) data
  train-diffusion  train an EDM diffusion model (DM / SDA / CASD)
  sample           sample a trained EDM model into a synthetic store
  generate         run a generation method (SD text2img/img2img, DiffuseMix, augmented
                   conditioning, Diffusion Inversion) into a synthetic store
  evaluate         fidelity/diversity metrics of a store against a real split
  run              every stage of an experiment, resumable, ending in report.md
  export           a synthetic store as <class>/<key>.png + provenance table
                   (augdiff export --store S --out DIR [--data PATH])
  inspect          counts, methods, models, filtered images and resume state of a store
                   (augdiff inspect --store S)
  compile          compile every program of an experiment for a TPU topology and size it
                   per chip, before launch (augdiff compile --config C --topology v5e:2x4)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    name = argv[1]
    if name not in COMMANDS:
        print(f"augdiff: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rest = argv[2:]
    module = importlib.import_module(COMMANDS[name])
    if name in PLAIN_COMMANDS:
        return int(module.main(rest) or 0)
    spec = None
    overrides: list[str] = []
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--config" and i + 1 < len(rest):
            spec = rest[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a.startswith("--config."):
            overrides.append(a)
        else:
            print(f"augdiff {name}: unexpected argument {a!r}", file=sys.stderr)
            return 2
        i += 1
    if spec is None:
        print(f"augdiff {name}: --config configs/<exp>.py[:variant] is required", file=sys.stderr)
        return 2

    distributed.initialize_distributed()
    try:
        config = load_config(spec, overrides)
    except ConfigError as e:
        print(f"augdiff {name}: config error: {e}", file=sys.stderr)
        return 2
    distributed.enable_compilation_cache()
    try:
        return int(module.main(config) or 0)
    except Exception as e:  # noqa: BLE001 - only augdiff's own errors are turned into messages
        if not _is_user_error(e):
            raise
        print(f"augdiff {name}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _is_user_error(e: BaseException) -> bool:
    """augdiff's own exceptions (bad config, corrupt data, missing weights, store or disk
    errors, non-finite loss) already name the problem: show their message, not a traceback."""
    return type(e).__module__.startswith("augdiff.") or isinstance(e, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
