"""Experiment configs: one ``get_config(arg)`` file per experiment, as in big_vision.

The configs shipped with augdiff live in the package (:mod:`augdiff.configs`) and are named by
spec, ``configs/x.py[:variant]``, which calls ``get_config("variant")``; a spec resolves
against the working directory first (a user's own config), then the package
(:func:`resolve_path`). Overrides use the ml_collections config-flag syntax
(``--config.a.b=v``). Unknown keys and wrong types fail with a message naming the key, because
overrides go through ml_collections' own flag parser on a locked config.

Config files are Python: loading one runs its code, as with any ml_collections config.

Value ranges (:func:`validate`, the table :data:`RANGES`) are checked once a config is loaded,
before any data is read or program compiled; ``--help`` reads a config's docstring, variants
and fields from the config itself (:func:`config_docstring`, :func:`config_variants`,
:func:`flat_fields`).

Derived configs (:func:`derive`): a stage of an experiment loads its own command config by
spec, copies the experiment's shared fields into it and applies the section's overrides.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
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
    validate(sub, where=f"{where} (stage config {spec})")
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


def flat_fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf field of ``config`` as ``(dotted name, value)``, sections in key order."""
    out: list[tuple[str, Any]] = []
    for key in config.keys():
        value = config[key]
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out += flat_fields(value, name + ".")
        else:
            out.append((name, value))
    return out


# --- what a config file says about itself (for --help), read without running it ------------

SHIPPED_CONFIGS_DIR = os.path.join(PACKAGE_DIR, "configs")
# Not a variant of any config: asking for it makes get_config name the variants it has.
VARIANT_PROBE = "__variants__"


def shipped_configs() -> list[str]:
    """The specs (``configs/<name>.py``) of the experiment configs shipped in the package."""
    names = sorted(f for f in os.listdir(SHIPPED_CONFIGS_DIR)
                   if f.endswith(".py") and f not in ("__init__.py", "common.py"))
    return [f"configs/{f}" for f in names]


def config_docstring(path: str) -> str:
    """The module docstring of the config file ``path`` (a spec's file part), read with
    :mod:`ast` (the file is not run); ``''`` when it has none."""
    full = resolve_path(path.partition(":")[0])
    if not os.path.isfile(full):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(full, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read(), full)) or ""


def config_variants(path: str) -> str:
    """The variants of the config file ``path`` in its own words: what its ``get_config``
    says when asked for a variant it does not have (so the list cannot drift from the code)."""
    try:
        load_config(f"{path.partition(':')[0]}:{VARIANT_PROBE}")
    except ConfigError as e:
        text = str(e)
        if repr(VARIANT_PROBE) in text:
            tail = text.split(repr(VARIANT_PROBE), 1)[1].strip(" ;:,.")
            tail = tail.removeprefix("unknown").strip(" ;:,.")
            return tail or "see the config's docstring"
        return f"see the config's docstring ({text})"
    return "any name (get_config does not check it)"


# --- value ranges, checked once after a config is loaded (before any data or compile) -------


@dataclasses.dataclass(frozen=True)
class Range:
    """One allowed range: ``ok(value)`` and the words for it (``must be ...``)."""

    ok: Callable[[float], bool]
    text: str


POSITIVE = Range(lambda v: v > 0, "> 0")
NON_NEGATIVE = Range(lambda v: v >= 0, ">= 0")
AT_LEAST_ONE = Range(lambda v: v >= 1, ">= 1")
PROBABILITY = Range(lambda v: 0 <= v <= 1, "in [0, 1]")
OPEN_PROBABILITY = Range(lambda v: 0 <= v < 1, "in [0, 1)")
STRENGTH = Range(lambda v: 0 < v <= 1, "in (0, 1]")
LAMBDA_BOUND = Range(lambda v: v < 0 or 0 <= v <= 1, "in [0, 1] (or < 0: the fixed lam)")
CHANNELS = Range(lambda v: v in (1, 3), "1 (grayscale) or 3 (RGB)")
MESH_AXIS = Range(lambda v: v == -1 or v >= 1, "-1 (all devices left) or >= 1")
EXP_BETA = Range(lambda v: 0 <= v < 1, "in [0, 1)")

# Dotted field -> its range; a field the config does not have is not checked. One row per
# field that a command consumes as a count, a size, a rate or a probability.
RANGES: dict[str, Range] = {
    # the data block (configs/common.py data_config) and the mesh
    "data.image_size": POSITIVE,
    "data.channels": CHANNELS,
    "data.per_class": NON_NEGATIVE,
    "data.first_per_class": NON_NEGATIVE,
    "data.imbalance_factor": Range(lambda v: v >= 1, ">= 1 (1 = balanced)"),
    "data.num_workers": NON_NEGATIVE,
    "mesh.data": MESH_AXIS,
    "mesh.fsdp": AT_LEAST_ONE,
    # augdiff train (configs/classify_cifar10.py)
    "batch_size": POSITIVE,
    "eval_batch_size": POSITIVE,
    "epochs": POSITIVE,
    "steps_per_epoch": Range(lambda v: v >= 0, ">= 0 (0 = one pass over the data)"),
    "eval_every_epochs": NON_NEGATIVE,
    "checkpoint_every_steps": NON_NEGATIVE,
    "keep_checkpoints": AT_LEAST_ONE,
    "log_every_steps": POSITIVE,
    "optim.lr": NON_NEGATIVE,
    "optim.momentum": EXP_BETA,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.gamma": POSITIVE,
    "augment.crop_pad": NON_NEGATIVE,
    "augment.cutout": NON_NEGATIVE,
    "augment.mixup_alpha": NON_NEGATIVE,
    "augment.cutmix_alpha": NON_NEGATIVE,
    "synthetic.label_weight": NON_NEGATIVE,
    "synthetic.online.share": PROBABILITY,
    "synthetic.online.buffer_size": NON_NEGATIVE,
    "synthetic.online.refresh_every": NON_NEGATIVE,
    "synthetic.online.spill_every": NON_NEGATIVE,
    "synthetic.online.hybrid.lam": PROBABILITY,
    # augdiff train-diffusion / sample (configs/casd_cifar10.py)
    "num_samples": NON_NEGATIVE,
    "train.batch_size": POSITIVE,
    "train.total_images": POSITIVE,
    "train.lr": POSITIVE,
    "train.beta1": EXP_BETA,
    "train.beta2": EXP_BETA,
    "train.eps": POSITIVE,
    "train.lr_rampup_images": NON_NEGATIVE,
    "train.ema_halflife_images": NON_NEGATIVE,
    "train.grad_clip": NON_NEGATIVE,
    "train.checkpoint_every_steps": POSITIVE,
    "train.keep_checkpoints": Range(lambda v: v >= 0, ">= 0 (0 = keep every checkpoint)"),
    "train.log_every_steps": POSITIVE,
    "augment.p": PROBABILITY,
    "model.dropout": OPEN_PROBABILITY,
    "model.model_channels": NON_NEGATIVE,
    "model.num_blocks": NON_NEGATIVE,
    "model.num_classes": NON_NEGATIVE,
    "model.num_sources": AT_LEAST_ONE,
    "edm.sigma_data": POSITIVE,
    "edm.P_std": POSITIVE,
    "edm.sigma_min": POSITIVE,
    "edm.sigma_max": POSITIVE,
    "edm.rho": POSITIVE,
    "synthetic.fraction": PROBABILITY,
    "synthetic.shift_count": NON_NEGATIVE,
    "sample.num_steps": AT_LEAST_ONE,
    "sample.batch_size": POSITIVE,
    "sample.shard_size": POSITIVE,
    "sample.guidance": NON_NEGATIVE,
    "sample.S_churn": NON_NEGATIVE,
    "sample.S_min": NON_NEGATIVE,
    "sample.S_max": NON_NEGATIVE,
    "sample.S_noise": NON_NEGATIVE,
    "sample.grid": NON_NEGATIVE,
    # augdiff generate: DiffuseMix (configs/diffusemix_cifar100.py)
    "diffusemix.steps": POSITIVE,
    "diffusemix.batch_size": POSITIVE,
    "diffusemix.hybrid_batch_size": POSITIVE,
    "diffusemix.shard_size": POSITIVE,
    "diffusemix.resolution": POSITIVE,
    "diffusemix.image_guidance": NON_NEGATIVE,
    "diffusemix.text_guidance": NON_NEGATIVE,
    "diffusemix.max_images": NON_NEGATIVE,
    "diffusemix.fractal_bank_size": NON_NEGATIVE,
    "diffusemix.hybrid.lam": PROBABILITY,
    "diffusemix.hybrid.lam_min": LAMBDA_BOUND,
    "diffusemix.hybrid.lam_max": LAMBDA_BOUND,
    "diffusemix.hybrid.ramp": NON_NEGATIVE,
    "diffusemix.shb.percentile": Range(lambda v: 0 <= v <= 100, "in [0, 100]"),
    "diffusemix.shb.kernel_size": POSITIVE,
    # augdiff generate: augmented conditioning (configs/augcond_cifar10.py)
    "augcond.steps": POSITIVE,
    "augcond.batch_size": POSITIVE,
    "augcond.guidance": NON_NEGATIVE,
    "augcond.dropout_p": PROBABILITY,
    "augcond.num_per_class": NON_NEGATIVE,
    "augcond.noise_level": NON_NEGATIVE,
    "augcond.resolution": POSITIVE,
    # augdiff generate: Diffusion Inversion (configs/diffinv_cifar10.py)
    "inversion.steps": POSITIVE,
    "inversion.batch_size": POSITIVE,
    "inversion.learning_rate": POSITIVE,
    "inversion.weight_decay": NON_NEGATIVE,
    "inversion.num_tokens": POSITIVE,
    "inversion.resolution": POSITIVE,
    "inversion.max_images": NON_NEGATIVE,
    "sampling.steps": POSITIVE,
    "sampling.batch_size": POSITIVE,
    "sampling.interpolation_strength": PROBABILITY,
    "sampling.noise_scale": NON_NEGATIVE,
    "sampling.num_partners": NON_NEGATIVE,
    # augdiff generate: plain Stable Diffusion (configs/sd_generate.py)
    "sd.steps": POSITIVE,
    "sd.batch_size": POSITIVE,
    "sd.guidance": NON_NEGATIVE,
    "sd.strength": STRENGTH,
    "sd.eta": PROBABILITY,
    "sd.resolution": POSITIVE,
    "sd.num_per_class": NON_NEGATIVE,
    "sd.max_images": NON_NEGATIVE,
    # augdiff evaluate (configs/evaluate_cifar10.py)
    "evaluate.max_real": NON_NEGATIVE,
    "evaluate.max_synthetic": NON_NEGATIVE,
    "evaluate.max_train": NON_NEGATIVE,
    "evaluate.kid_subsets": POSITIVE,
    "evaluate.kid_subset_size": POSITIVE,
    "evaluate.prdc_k": POSITIVE,
    "evaluate.ssim_threshold": PROBABILITY,
    "extractor.batch_size": POSITIVE,
    "extractor.image_size": NON_NEGATIVE,
    # augdiff run (configs/common.py experiment sections)
    "generator.num_samples": NON_NEGATIVE,
    "report.samples_per_class": NON_NEGATIVE,
    "mixed.online.share": PROBABILITY,
}


def _lookup(config: ml_collections.ConfigDict, dotted: str) -> tuple[bool, Any]:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# The sections of an ``augdiff run`` config that name a stage's own config and its overrides.
STAGE_SECTIONS = ("generator", "classifier", "evaluate")


def validate(config: ml_collections.ConfigDict, *, where: str = "") -> None:
    """Check every field of :data:`RANGES` the config has, and the pairs that bound each
    other (``edm.sigma_min < edm.sigma_max``, ``lam_min <= lam_max``); the first bad one is a
    one-line :class:`ConfigError` naming the field, its value and the allowed range.

    An ``augdiff run`` config's stage configs (:data:`STAGE_SECTIONS`: ``config`` plus
    ``overrides``) are derived and checked too, so a bad override fails before the first stage.
    """
    prefix = f"{where}: " if where else ""
    for section in STAGE_SECTIONS:
        found, sec = _lookup(config, section)
        if (found and isinstance(sec, ml_collections.ConfigDict) and "overrides" in sec
                and str(sec.get("config", "") or "")):
            derive(config, str(sec.config), sec.overrides,
                   workdir=str(config.get("workdir", "") or ""), where=f"{section}.overrides")
    for field, rng in RANGES.items():
        found, value = _lookup(config, field)
        if not found or value is None:  # None: unset, the consumer's default
            continue
        number = _number(value)
        if number is None or math.isnan(number) or not rng.ok(number):
            raise ConfigError(f"{prefix}{field}={value!r} is out of range: must be {rng.text}")
    for low, high in (("edm.sigma_min", "edm.sigma_max"),
                      ("diffusemix.hybrid.lam_min", "diffusemix.hybrid.lam_max")):
        has_low, lo = _lookup(config, low)
        has_high, hi = _lookup(config, high)
        if not (has_low and has_high) or lo is None or hi is None:
            continue
        if low.endswith("lam_min") and (lo < 0) != (hi < 0):
            raise ConfigError(f"{prefix}{low}={lo!r} and {high}={hi!r}: set both in [0, 1] "
                              "for an interval, or both < 0 for the fixed lam")
        if lo > hi:
            raise ConfigError(f"{prefix}{low}={lo!r} is out of range: must be <= {high}={hi!r}")
