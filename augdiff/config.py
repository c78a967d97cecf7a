"""Experiment configs: one ``get_config(arg)`` file per experiment, as in big_vision.

The configs shipped with augdiff live in the package (:mod:`augdiff.configs`) and are named by
spec, ``configs/x.py[:variant]``, which calls ``get_config("variant")``; a spec resolves
against the working directory first (a user's own config), then the package
(:func:`resolve_path`). Overrides use the ml_collections config-flag syntax
(``--config.a.b=v``). Unknown keys and wrong types fail with a message naming the key, because
overrides go through ml_collections' own flag parser on a locked config.

Config files are Python: loading one runs its code, as with any ml_collections config.

Derived configs (:func:`derive`): a stage of an experiment loads its own command config by
spec, copies the experiment's shared fields into it and applies the section's overrides.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags


class ConfigError(ValueError):
    """A config file, variant or override is wrong; the message names it."""


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# The folder holding the package: the repository root in a source checkout (so
# ``augdiff/assets/...`` and ``../shared/...`` resolve from anywhere), site-packages when
# installed (``augdiff/assets/...`` still resolves).
PACKAGE_PARENT = os.path.dirname(PACKAGE_DIR)
CONFIGS_PREFIX = "configs" + os.sep
# What the package ships besides code: the generator and the reference classifiers.
ASSETS_DIR = os.path.join(PACKAGE_DIR, "assets")
# The class-conditional CIFAR-10 EDM shipped with augdiff, as configs name it: a path that
# :func:`resolve_path` finds from any directory, source checkout or installed package.
SHIPPED_GENERATOR = "augdiff/assets/generator_cifar10"


def resolve_path(path: str, *, must_exist: bool = False) -> str:
    """An absolute path for ``path``; ``''`` stays ``''``.

    Tried in order: ``path`` relative to the working directory; a shipped config
    (``configs/x.py`` → ``<package>/configs/x.py``); ``path`` relative to the folder that holds
    the package (``augdiff/assets/...``, and in a source checkout ``../shared/...``). When none
    exists the working-directory path is returned, or with ``must_exist`` an error naming
    ``path``.
    """
    if not path:
        return path
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    here = os.path.abspath(path)
    if os.path.exists(here):
        return here
    candidates = []
    if os.path.normpath(path).startswith(CONFIGS_PREFIX):
        candidates.append(os.path.join(PACKAGE_DIR, os.path.normpath(path)))
    candidates.append(os.path.normpath(os.path.join(PACKAGE_PARENT, path)))
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    if must_exist:
        raise FileNotFoundError(f"{path!r} not found (relative to {os.getcwd()}, or shipped "
                                "with augdiff)")
    return here


def merge_overrides(
    target: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str
) -> None:
    """Recursively set ``overrides`` onto ``target``; an unknown key is an error naming it."""
    for key, value in overrides.items():
        name = f"{where}.{key}"
        if key not in target:
            raise ConfigError(
                f"{name}: the stage config has no field {key!r} (known: {sorted(target.keys())})"
            )
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            if not isinstance(target[key], ml_collections.ConfigDict):
                raise ConfigError(f"{name}: is not a config section in the stage config")
            merge_overrides(target[key], value, name)
        else:
            try:
                target[key] = value
            except TypeError as e:
                raise ConfigError(f"{name}: {e}") from e


def set_field(cfg: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a locked config (only existing fields)."""
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
        if p not in node:
            raise ConfigError(f"stage config has no section {p!r} (needed for {dotted!r})")
        node = node[p]
    if leaf not in node:
        raise ConfigError(f"stage config has no field {dotted!r}")
    node[leaf] = value


def derive(
    config: ml_collections.ConfigDict,
    spec: str,
    overrides: Any,
    *,
    workdir: str,
    seed: int | None = None,
    where: str,
) -> ml_collections.ConfigDict:
    """A stage's config: load ``spec``; copy the experiment's shared fields into it (every key
    of ``data`` the sub-config also has, ``mesh.data`` / ``mesh.fsdp``, ``seed``); set
    ``workdir``; apply ``overrides`` (an unknown key is an error naming ``where``)."""
    sub = load_config(spec)
    if "data" in sub and "data" in config:
        for key in config.data.keys():
            if key in sub.data:
                set_field(sub, f"data.{key}", copy.deepcopy(config.data[key]))
    if "mesh" in sub and "mesh" in config:
        for key in ("data", "fsdp"):
            if key in config.mesh and key in sub.mesh:
                set_field(sub, f"mesh.{key}", int(config.mesh[key]))
    if "seed" in sub:
        sub.seed = int(config.seed if seed is None else seed)
    sub.workdir = workdir
    if overrides:
        merge_overrides(sub, overrides, where)
    return sub


def parse_list(value: Any) -> list[str]:
    """A comma-separated string or a sequence as a list of non-empty strings."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in (value or ())]


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load ``path.py[:variant]`` and apply ``a.b=v`` overrides (leading ``--config.`` optional).

    The path resolves as by :func:`resolve_path` (so ``configs/quickstart.py`` names the
    shipped config from any directory); a missing file is a :class:`ConfigError` naming it.
    This goes through the same ml_collections flag machinery as the CLI, so a programmatic
    run and ``augdiff <cmd> --config ... --config.a.b=v`` resolve identically.
    """
    if not spec:
        raise ConfigError("empty config spec")
    path, _, variant = spec.partition(":")
    full = resolve_path(path)
    if not os.path.isfile(full):
        raise ConfigError(f"config file {path!r} (from spec {spec!r}) does not exist")
    spec = f"{full}:{variant}" if variant else full
    argv = ["augdiff", f"--config={spec}"]
    for o in overrides:
        o = o[2:] if o.startswith("--") else o
        o = o if o.startswith("config.") else f"config.{o}"
        argv.append(f"--{o}")
    fv = flags.FlagValues()
    try:
        # ml_collections discovers the override flags (--config.a.b=v) from sys_argv when
        # the config flag is defined, so the argv must be given here as well as parsed below.
        config_flags.DEFINE_config_file(
            "config", default=None, flag_values=fv, lock_config=True, sys_argv=argv
        )
        fv(argv)
    except flags.Error as e:  # unknown key, wrong type, bad file
        raise ConfigError(_flag_error_message(spec, e)) from None
    except (KeyError, AttributeError) as e:
        raise ConfigError(_unknown_key_message(spec, argv[2:]) or f"config {spec!r}: {e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config {spec!r}: {e}") from e
    cfg = fv["config"].value
    if cfg is None:
        raise ConfigError(f"config {spec!r} gave no ConfigDict")
    return cfg


def _flag_error_message(spec: str, e: Exception) -> str:
    """One line for a flag error. ml_collections embeds the traceback of an exception raised
    inside ``get_config`` (e.g. an unknown ``:variant``) in its message: keep only the final
    ``Type: message`` line of it."""
    text = str(e)
    if "Traceback (most recent call last)" in text:
        last = [ln.strip() for ln in text.splitlines() if ln.strip()][-1]
        return f"config {spec!r}: {last}"
    return " ".join(text.split()) if "\n" in text else text


def _unknown_key_message(spec: str, override_args: Sequence[str]) -> str | None:
    """Name the first override whose dotted path is not a field of the config."""
    try:
        base = load_config(spec)
    except ConfigError:
        return None
    for arg in override_args:
        path = arg[len("--config."):].split("=", 1)[0]
        node: Any = base
        walked: list[str] = []
        for part in path.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(walked) or "<top level>"
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                return (
                    f"unknown config key {path!r} (from {arg}); fields under {where}: "
                    f"{', '.join(known)}"
                )
            walked.append(part)
            node = node[part]
    return None


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def require(config: ml_collections.ConfigDict, *keys: str) -> None:
    """Fail with a clear message when dotted ``keys`` are missing or None."""
    for key in keys:
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ConfigError(f"config is missing required field {key!r}")
            node = node[part]
        if node is None:
            raise ConfigError(f"config field {key!r} must be set (e.g. --config.{key}=...)")


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields where two (nested) config dicts differ."""
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        name = f"{prefix}{k}"
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out
