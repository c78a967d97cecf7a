"""The augdiff command line: one entry point, thin subcommands over the library.

    augdiff <command> --config configs/x.py[:variant] [--config.a.b=v ...]
    augdiff <command> --help [--config configs/x.py[:variant]]

Each command lives in augdiff/commands/<name>.py and exposes main(config); the CLI parses the
config (ml_collections config flags), checks its value ranges (augdiff.config.validate) and
calls it. Commands that take their own flags (env, export, inspect, compile, config) get argv.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
import textwrap

from augdiff.commands import plain_text
from augdiff.config import (
    PACKAGE_DIR,
    ConfigError,
    config_docstring,
    config_variants,
    flat_fields,
    load_config,
    shipped_configs,
    validate,
)

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
    "config": "augdiff.commands.config",
}
# Commands that take their own arguments (argparse, with its -h/--help) instead of a config.
PLAIN_COMMANDS = ("env", "export", "inspect", "compile", "config")
# The runtime (devices, processes, compilation cache) that config commands start; loaded by
# name like the commands, so that `augdiff config` and every --help start without JAX.
RUNTIME = "augdiff.distributed"
# The top-level fields a config must have for a command to take it (how `augdiff train
# --help` picks the shipped configs it lists).
CONFIG_FIELDS = {
    "train": ("epochs", "batch_size", "optim"),
    "train-diffusion": ("edm", "mode", "train"),
    "sample": ("edm", "mode", "sample"),
    "generate": ("method",),
    "evaluate": ("evaluate", "extractor"),
    "run": ("stages", "report"),
}
HELP_FLAGS = ("-h", "--help")

USAGE = """usage: augdiff <command> --config configs/<experiment>.py[:variant] [--config.k=v ...]
       augdiff <command> --help      (its flags; with --config C, the fields of config C)

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
  config           print a config as resolved, without running anything
                   (augdiff config show C[:variant] [--config.k=v ...] [--json])

Config files are Python (ml_collections): loading one runs its code, so load only configs
you trust.
"""

CONFIG_FLAGS = """flags:
  --config CONFIG[:variant]
        the experiment config: a Python file whose get_config(variant) returns an
        ml_collections ConfigDict; configs/NAME.py names a shipped config (augdiff/configs/)
        unless ./configs/NAME.py exists. Loading it runs its code: load only configs you trust.
  --config.FIELD=VALUE
        set one field (dotted path, e.g. --config.data.path=DIR); repeatable. An unknown field
        or a value out of range is an error naming the field.
  -h, --help
        this help; with --config (and overrides), that config's variants and fields"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in (*HELP_FLAGS, "help"):
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
    if name in PLAIN_COMMANDS:
        module = importlib.import_module(COMMANDS[name])
        try:
            return int(module.main(rest) or 0)
        except SystemExit as e:  # argparse: --help (0) or a bad flag (2)
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    spec, overrides, unexpected = parse_config_args(rest)
    wants_help = any(a in HELP_FLAGS for a in unexpected)
    unexpected = [a for a in unexpected if a not in HELP_FLAGS]
    if unexpected:
        print(f"augdiff {name}: unexpected argument {unexpected[0]!r} (see augdiff {name} "
              "--help)", file=sys.stderr)
        return 2
    if wants_help:
        try:
            print(command_help(name, command_docstring(name), spec, overrides))
        except ConfigError as e:
            print(f"augdiff {name}: config error: {e}", file=sys.stderr)
            return 2
        return 0
    if spec is None:
        print(f"augdiff {name}: --config configs/<exp>.py[:variant] is required (see augdiff "
              f"{name} --help)", file=sys.stderr)
        return 2

    try:  # before the runtime starts: a bad config fails in a second, naming the field
        config = load_config(spec, overrides)
        validate(config)
    except ConfigError as e:
        print(f"augdiff {name}: config error: {e}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name])
    runtime = importlib.import_module(RUNTIME)
    runtime.initialize_distributed()
    runtime.enable_compilation_cache()
    try:
        return int(module.main(config) or 0)
    except Exception as e:  # noqa: BLE001 - only augdiff's own errors are turned into messages
        if not _is_user_error(e):
            raise
        print(f"augdiff {name}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def parse_config_args(args: list[str]) -> tuple[str | None, list[str], list[str]]:
    """``(spec, overrides, everything else)`` from a config command's arguments:
    ``--config SPEC`` or ``--config=SPEC``, and ``--config.a.b=v`` overrides."""
    spec = None
    overrides: list[str] = []
    other: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--config" and i + 1 < len(args):
            spec = args[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a.startswith("--config."):
            overrides.append(a)
        else:
            other.append(a)
        i += 1
    return spec, overrides, other


def command_docstring(name: str) -> str:
    """The docstring of command ``name``'s module, read from its file (not imported: help
    starts no JAX)."""
    path = os.path.join(PACKAGE_DIR, *COMMANDS[name].split(".")[1:]) + ".py"
    with open(path, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read(), path), clean=False) or ""


def command_help(name: str, doc: str | None, spec: str | None, overrides: list[str]) -> str:
    """``augdiff NAME --help``: the command's purpose (its docstring), its flags, and either
    the config ``spec`` (docstring, variants, every field with its value) or the shipped
    configs the command takes with their variants. Plain text, no markup."""
    lines = [f"usage: augdiff {name} --config CONFIG[:variant] [--config.FIELD=VALUE ...]",
             f"       augdiff {name} --help [--config CONFIG[:variant]]", "",
             plain_text(doc), "", CONFIG_FLAGS, ""]
    if spec is None:
        lines += configs_for(name)
    else:
        lines += config_fields(spec, overrides)
    return "\n".join(lines).rstrip() + "\n"


def _wrap(text: str, indent: str, width: int = 96) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False) or [indent]


def _variants(path: str) -> str:
    """The variants of a config: as its get_config lists them, else its docstring's
    paragraph that starts with "Variants"."""
    listed = config_variants(path)
    if not listed.startswith("see the config's docstring"):
        return listed
    for para in plain_text(config_docstring(path)).split("\n\n"):
        if para.lstrip().startswith("Variants"):
            return " ".join(para.split()).removeprefix("Variants").lstrip(" :")
    return listed


def _summary(path: str) -> str:
    """The first paragraph of a config's docstring, on one line."""
    doc = plain_text(config_docstring(path)).strip()
    return " ".join(doc.split("\n\n")[0].split())


def configs_for(name: str) -> list[str]:
    """The shipped configs whose fields the command ``name`` needs, with their variants."""
    wanted = CONFIG_FIELDS[name]
    out = _wrap(f"shipped configs for augdiff {name} (pass one as --config configs/NAME.py"
                f"[:variant]; augdiff {name} --help --config C lists C's fields):", "")
    for spec in shipped_configs():
        try:
            cfg = load_config(spec)
        except ConfigError:
            continue
        if not all(k in cfg for k in wanted):
            continue
        out += [f"  {spec}", *_wrap(_summary(spec), " " * 6),
                *_wrap(f"variants: {_variants(spec)}", " " * 6)]
    return out


def config_fields(spec: str, overrides: list[str]) -> list[str]:
    """The lines of ``--help --config SPEC``: the config's summary, variants and fields."""
    cfg = load_config(spec, overrides)
    path = spec.partition(":")[0]
    given = " with the overrides given" if overrides else ""
    out = [*_wrap(f"config {spec}: {_summary(path)}", ""),
           *_wrap(f"variants: {_variants(path)}", "  "), "",
           f"fields of {spec}{given} (set any with --config.FIELD=VALUE):"]
    out += [f"  {field} = {value!r}" for field, value in flat_fields(cfg)]
    return out


def _is_user_error(e: BaseException) -> bool:
    """augdiff's own exceptions (bad config, corrupt data, missing weights, store or disk
    errors, non-finite loss) already name the problem: show their message, not a traceback."""
    return type(e).__module__.startswith("augdiff.") or isinstance(e, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
