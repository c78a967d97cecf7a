"""Experiment configs: one ``get_config(arg)`` file per experiment, as in big_vision.

``configs/x.py:variant`` calls ``get_config("variant")``; overrides use the ml_collections
config-flag syntax (``--config.a.b=v``). Unknown keys and wrong types fail with a message
naming the key, because overrides go through ml_collections' own flag parser on a locked
config.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags


class ConfigError(ValueError):
    """A config file, variant or override is wrong; the message names it."""


def sibling_config(config_file: str, name: str) -> Any:
    """The config module ``name`` (e.g. ``"casd_cifar10.py"``) beside ``config_file`` (a
    config's ``__file__``), loaded from its path: configs build on one another without being
    a package, so every shared field is written in one config only."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    spec = importlib.util.spec_from_file_location(
        "augdiff_configs_" + os.path.splitext(name)[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load ``path.py[:variant]`` and apply ``a.b=v`` overrides (leading ``--config.`` optional).

    This goes through the same ml_collections flag machinery as the CLI, so a programmatic
    run and ``augdiff <cmd> --config ... --config.a.b=v`` resolve identically.
    """
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


DEFAULT_DATA_PATH = "../shared/data/cifar10-jpeg.zip"


def data_config(**fields: Any) -> ml_collections.ConfigDict:
    """The ``data`` block every experiment shares (one home for its fields and defaults).

    ``path`` is an image-folder tree ``root/<split>/<class>/*`` or the same tree in a zip
    (default: the shared CIFAR-10 zip beside the repository); ``tfds_name`` a TFDS dataset
    instead; ``per_class`` > 0 takes a few-shot subset, ``imbalance_factor`` > 1 a long-tailed
    one (both drawn from ``subset_seed``). Extra keyword fields are added as they are.
    """
    c = ml_collections.ConfigDict()
    c.path = DEFAULT_DATA_PATH
    c.tfds_name = ""
    c.image_size = 32
    c.channels = 3
    c.skip_corrupt = True
    c.per_class = 0
    c.imbalance_factor = 1.0
    c.subset_seed = 0
    c.train_split = "train"
    c.test_split = "test"
    for k, v in fields.items():
        c[k] = v
    return c


def mesh_config(data: int = -1, fsdp: int = 1) -> ml_collections.ConfigDict:
    """The ``mesh`` block: ``data`` × ``fsdp`` devices (-1 = all that are left)."""
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp})


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
