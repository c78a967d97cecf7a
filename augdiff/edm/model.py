"""One home for the EDM network of a run: building it from a config, its training state
layout (parameters, EMA, Adam state), and saving / restoring checkpoints.

Training (:mod:`augdiff.edm.train`), sampling (:mod:`augdiff.edm.sampling`) and the
experiment runner all build and restore models here: :func:`build_model` (DM, SDA and CASD
build the same SongUNet; CASD adds only the source label to EDM's label path, seed 004 App.
A.2), :func:`init_state` / :func:`abstract_state`, :func:`save_checkpoint` /
:func:`restore_checkpoint`, and :func:`load_model` (latest checkpoint, config check, EMA
parameters) for sampling.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from augdiff import distributed
from augdiff.config import ConfigError, config_diff, to_dict
from augdiff.edm.augment import AUGMENT_DIM
from augdiff.edm.core import EDMConfig
from augdiff.models.songunet import SongUNet, songunet_config
from augdiff.train.checkpoint import Checkpointer

MODES = ("dm", "sda", "casd")

# Config sections that define the trained function; sampling refuses a checkpoint whose
# saved config differs from the current one in any of them.
MODEL_FIELDS = ("mode", "model", "edm", "data.image_size", "data.channels", "augment.p")

#: Fields a *training resume* must match besides :data:`MODEL_FIELDS`: they change what the
#: saved optimiser state means (Adam's moments scale with the loss, so resuming a run trained
#: on the per-pixel mean with the per-pixel sum multiplies its first updates by ~√(pixels)
#: and diverges).
RESUME_FIELDS = ("train.loss_reduction",)

#: The value a checkpoint saved before a field existed was trained with.
LEGACY_VALUES = {"train.loss_reduction": "mean"}


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: the step counter, parameters, EMA and optimiser state."""

    step: jax.Array
    params: Any
    ema: Any
    opt_state: Any



def learning_rate(step: jax.Array | int, *, lr: float, batch_size: int,
                  rampup_images: float) -> jax.Array:
    """``lr · min(n / max(rampup_images, 1e-8), 1)`` with ``n = step · batch_size`` images seen."""
    nimg = jnp.asarray(step, jnp.float32) * batch_size
    return lr * jnp.minimum(nimg / max(float(rampup_images), 1e-8), 1.0)



def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with the edm LR ramp-up, optionally preceded by global-norm gradient clipping."""
    t = config.train
    schedule = lambda count: learning_rate(  # noqa: E731
        count, lr=float(t.lr), batch_size=int(t.batch_size),
        rampup_images=float(t.lr_rampup_images))
    parts = []
    if float(t.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(t.grad_clip)))
    parts += [
        optax.scale_by_adam(b1=float(t.beta1), b2=float(t.beta2), eps=float(t.eps)),
        optax.scale_by_learning_rate(schedule),
    ]
    return optax.chain(*parts)



def _compute_dtype(precision: str) -> Any:
    if precision not in ("float32", "bfloat16"):
        raise ConfigError(f"train.precision must be float32 or bfloat16, got {precision!r}")
    return jnp.bfloat16 if precision == "bfloat16" else jnp.float32


def build_model(config: ml_collections.ConfigDict, *, num_classes: int,
                precision: str | None = None) -> Any:
    """The SongUNet a config describes (``model.preset`` plus image size, channels, labels).

    DM, SDA and CASD build the same network; CASD (``mode='casd'``) only turns on EDM's label
    path for the source label (``casd=True``, ``num_sources``; seed 004 App. A.2). With the
    augmentation pipe on (``augment.p > 0``) the network gets EDM's 9-d augment-label input
    (``augment_dim = 9``), else the preset's. ``precision`` (default ``train.precision``) is
    the compute dtype: ``bfloat16`` runs the network in bf16 while parameters (and the
    optimiser/EMA) stay float32.
    """
    mode = str(config.mode)
    if mode not in MODES:
        raise ConfigError(f"config.mode must be one of {MODES}, got {mode!r}")
    kwargs: dict[str, Any] = dict(
        img_resolution=int(config.data.image_size),
        in_channels=int(config.data.channels),
        out_channels=int(config.data.channels),
        dropout=float(config.model.dropout),
        dtype=_compute_dtype(precision or str(config.train.precision)),
    )
    for field in ("model_channels", "num_blocks"):
        if int(config.model.get(field, 0)):
            kwargs[field] = int(config.model[field])
    for field in ("channel_mult", "attn_resolutions"):
        if config.model.get(field, None):
            kwargs[field] = tuple(int(v) for v in config.model[field])
    if augment_enabled(config):
        kwargs["augment_dim"] = AUGMENT_DIM
    if bool(config.model.class_conditional):
        kwargs["label_dim"] = int(num_classes)
    if mode == "casd":
        kwargs["casd"] = True
        kwargs["num_sources"] = int(config.model.num_sources)
    check_image_size(config)
    return SongUNet(**songunet_config(str(config.model.preset), **kwargs))


def check_image_size(config: ml_collections.ConfigDict) -> None:
    """``data.image_size`` must halve ``len(channel_mult) - 1`` times (the SongUNet's levels:
    ``model.channel_mult``, else the preset's); else a one-line :class:`ConfigError`."""
    preset = str(config.model.preset)
    try:
        mult = tuple(config.model.get("channel_mult", None) or
                     songunet_config(preset)["channel_mult"])
    except ValueError as e:
        raise ConfigError(f"model.preset={preset!r}: {e}") from None
    size, factor = int(config.data.image_size), 2 ** (len(mult) - 1)
    if size <= 0 or size % factor:
        raise ConfigError(
            f"data.image_size={size} is out of range: the SongUNet with channel_mult {mult} "
            f"takes a positive multiple of {factor} (e.g. {max(factor, size // factor * factor)})"
        )


def augment_enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether ``config`` trains with EDM's augmentation pipe (``augment.p > 0``)."""
    aug = config.get("augment", None)
    return aug is not None and float(aug.get("p", 0.0)) > 0


def make_net_apply(model: Any) -> Callable[..., jax.Array]:
    """``net_apply(params, x, noise_labels, labels, *, train, rngs)`` for :mod:`augdiff.edm.core`.

    ``labels`` is ``None`` or a dict ``{'class': c, 'source': y, 'augment': a}`` routed to the
    network's ``class_labels`` / ``source_labels`` / ``augment_labels`` (absent augment labels
    are zeros: no augmentation, as at sampling time).
    """

    def net_apply(params, x, noise_labels, labels=None, *, train=False, rngs=None):
        labels = labels or {}
        kw = {"augment_labels": labels["augment"]} if labels.get("augment") is not None else {}
        return model.apply({"params": params}, x, noise_labels,
                           class_labels=labels.get("class"),
                           source_labels=labels.get("source"), train=train, rngs=rngs, **kw)

    return net_apply


def edm_config(config: ml_collections.ConfigDict) -> Any:
    """The :class:`augdiff.edm.core.EDMConfig` of ``config.edm``."""
    e = config.edm
    return EDMConfig(sigma_min=float(e.sigma_min), sigma_max=float(e.sigma_max),
                     rho=float(e.rho), sigma_data=float(e.sigma_data),
                     P_mean=float(e.P_mean), P_std=float(e.P_std))


def init_state(key: jax.Array, model: Any, optimizer: optax.GradientTransformation,
               shape: tuple[int, ...], cfg: Any = None) -> TrainState:
    """Fresh parameters (EMA = a copy), optimiser state and step 0 (``cfg`` is unused and
    kept for callers that pass a step config; the model's own label fields decide)."""
    b = shape[0]
    zeros = jnp.zeros((b,), jnp.int32)
    variables = model.init(
        {"params": key, "dropout": key}, jnp.zeros(shape, jnp.float32), jnp.zeros((b,)),
        class_labels=zeros if getattr(model, "label_dim", 0) else None,
        source_labels=zeros if getattr(model, "casd", False) else None, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=optimizer.init(params))


def abstract_state(config: ml_collections.ConfigDict, model: Any,
                   sharding: Any = None) -> TrainState:
    """The shapes/dtypes (``jax.ShapeDtypeStruct``, on ``sharding`` when given) of the
    :class:`TrainState` of ``config``'s model: the restore target of a checkpoint."""
    size, ch = int(config.data.image_size), int(config.data.channels)
    optimizer = make_optimizer(config)
    abstract = jax.eval_shape(lambda k: init_state(k, model, optimizer, (1, size, size, ch)),
                              jax.random.PRNGKey(0))
    if sharding is None:
        return abstract
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)


def parameter_count(config: ml_collections.ConfigDict, num_classes: int) -> int:
    """Parameters of the network ``config`` describes (shapes only, via ``jax.eval_shape``)."""
    model = build_model(config, num_classes=max(int(num_classes), 1), precision="float32")
    params = abstract_state(config, model).params
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def checkpointer(config: ml_collections.ConfigDict) -> Any:
    """The run's :class:`augdiff.train.checkpoint.Checkpointer` (``<workdir>/checkpoints``)."""
    return Checkpointer(os.path.join(str(config.workdir), "checkpoints"),
                        max_to_keep=int(config.train.keep_checkpoints) or None)


def _state_tree(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "ema": state.ema,
            "opt_state": state.opt_state}


def save_checkpoint(ckpt: Any, state: TrainState, loader_state: Any,
                    config_dict: dict[str, Any], info: dict[str, Any] | None = None) -> str:
    """Save params, EMA, optimiser state, step, loader state, the resolved config and
    ``info`` (``num_classes`` and the trained ``classes``, which sampling needs)."""
    step = int(state.step)
    # The state is replicated: save one host copy (orbax slicing 8 replicas of every leaf
    # costs ~30 s per save on CPU); restores put it back on the mesh's sharding.
    host = jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)),
                                  _state_tree(state))
    ckpt.save(step, host,
              {"loader": loader_state, "config": config_dict, **(info or {})})
    return os.path.join(ckpt.directory, str(step))


def checkpoint_extras(ckpt: Any, step: int) -> dict[str, Any]:
    """The JSON extras (saved config, loader state, ``num_classes``, ``classes``) of one
    checkpoint, read without its arrays (so a config mismatch is reported before a restore
    fails on shapes)."""
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(ckpt.directory, item_names=("state", "extras"))
    try:
        out = mngr.restore(int(step), args=ocp.args.Composite(extras=ocp.args.JsonRestore()))
    finally:
        mngr.close()
    return dict(out["extras"] or {})


def restore_checkpoint(ckpt: Any, like: TrainState,
                       step: int | None = None) -> tuple[TrainState, dict[str, Any], str] | None:
    """The latest (or given) checkpoint onto the layout of ``like``: ``(state, extras, path)``,
    or ``None`` when the directory holds none."""
    step = ckpt.latest_step() if step is None else step
    if step is None:
        return None
    tree, extras = ckpt.restore(step, like=_state_tree(like))
    return TrainState(**tree), extras, os.path.join(ckpt.directory, str(step))


def restore_ema(ckpt: Any, step: int, like: Any) -> Any:
    """The EMA parameters of checkpoint ``step`` cast to the dtypes of ``like`` (an abstract
    parameter tree) and placed on its shardings.

    Reads the ``ema`` entry of the saved tree alone, without a target for the rest, so a full
    training checkpoint (params, EMA, optimiser state) and an exported generator (EMA only,
    possibly stored in float16, :func:`augdiff.edm.assets.export_generator`) load through
    this one function.
    """
    item = os.path.join(ckpt.directory, str(int(step)), "state")
    tree = ckpt.restore_host(int(step))
    if "ema" not in tree:
        raise ValueError(f"checkpoint {item!r} holds no EMA parameters (keys: {sorted(tree)})")
    raw = tree["ema"]
    got = jax.tree_util.tree_structure(raw)
    want = jax.tree_util.tree_structure(like)
    shapes_ok = got == want and all(
        tuple(a.shape) == tuple(b.shape)
        for a, b in zip(jax.tree_util.tree_leaves(raw), jax.tree_util.tree_leaves(like),
                        strict=True))
    if not shapes_ok:
        raise ValueError(f"checkpoint {item!r}: its EMA parameters do not match the configured "
                         "model (model.* / data.image_size fields)")
    return jax.tree_util.tree_map(
        lambda a, b: jax.device_put(np.asarray(a).astype(b.dtype),
                                    getattr(b, "sharding", None)), raw, like)


def config_field(d: dict[str, Any], dotted: str) -> Any:
    """The value of dotted field ``dotted`` in a nested dict (``"<missing>"`` when absent)."""
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<missing>"
        node = node[part]
    return node


def mismatching_fields(saved: dict[str, Any], current: dict[str, Any],
                       fields: tuple[str, ...] = MODEL_FIELDS) -> list[str]:
    """Dotted names of ``fields`` (default: the model-defining :data:`MODEL_FIELDS`) where a
    checkpoint's saved config and the current one differ (via
    :func:`augdiff.config.config_diff`); a field the saved config predates reads as its
    :data:`LEGACY_VALUES` entry."""
    out: list[str] = []
    for field in fields:
        a, b = config_field(saved, field), config_field(current, field)
        if a == "<missing>" and field in LEGACY_VALUES:
            a = LEGACY_VALUES[field]
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, field + ".")
        elif a != b:
            out.append(field)
    return out




@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A trained EDM network restored from a run directory (what sampling needs)."""

    model: Any
    params: Any  # the EMA parameters
    extras: dict[str, Any]
    step: int
    path: str

    @property
    def num_classes(self) -> int:
        return int(self.extras["num_classes"])

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in self.extras.get("classes", [])]


def load_model(config: ml_collections.ConfigDict, *, sharding: Any = None,
               step: int | None = None) -> LoadedModel:
    """The latest (or given) checkpoint of ``config.workdir``: its network (float32 compute),
    EMA parameters and extras, after checking that the checkpoint was trained with the same
    :data:`MODEL_FIELDS` as ``config`` (a mismatch is an error naming the fields)."""
    ckpt = checkpointer(config)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: run "
                                    "`augdiff train-diffusion` with this workdir first")
        extras = checkpoint_extras(ckpt, step)
        current = to_dict(config)
        saved = extras.get("config", {})
        diffs = mismatching_fields(saved, current)
        if diffs:
            detail = ", ".join(f"{f} (checkpoint {config_field(saved, f)!r}, config "
                               f"{config_field(current, f)!r})" for f in diffs)
            raise ConfigError(f"checkpoint {ckpt.directory}/{step} was trained with a "
                              f"different config; mismatching fields: {detail}")
        model = build_model(config, num_classes=int(extras["num_classes"]), precision="float32")
        params = restore_ema(ckpt, step, abstract_state(config, model, sharding).ema)
        path = os.path.join(ckpt.directory, str(step))
    finally:
        ckpt.close()
    return LoadedModel(model=model, params=params, extras=extras, step=int(step), path=path)


def open_generator(workdir: str, *, mesh: Any = None, step: int | None = None) -> dict[str, Any]:
    """The one opener of a trained EDM generator for sampling or editing: the latest (or given)
    checkpoint of an ``augdiff train-diffusion`` workdir or of an exported generator (e.g. the
    shipped ``augdiff/assets/generator_cifar10``), rebuilt from the config saved in the
    checkpoint and restored through :func:`load_model` (EMA parameters, replicated on ``mesh``
    when given, else on the default device).

    Returns ``dict(net_apply, params, config, edm, mode, num_sources, num_classes, classes,
    class_conditional, size, channels, image_shape, step, checkpoint)``. A missing workdir or
    checkpoint is a ``FileNotFoundError`` naming it.
    """
    ckdir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckdir):
        raise FileNotFoundError(f"no EDM checkpoints in {workdir!r} (expected {ckdir}): run "
                                "`augdiff train-diffusion` with that workdir first")
    ckpt = Checkpointer(ckdir)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckdir}")
        extras = checkpoint_extras(ckpt, step)
    finally:
        ckpt.close()
    config = ml_collections.ConfigDict(extras["config"])
    config.workdir = workdir
    sharding = distributed.replicated(mesh) if mesh is not None else None
    loaded = load_model(config, sharding=sharding, step=step)
    size, ch = int(config.data.image_size), int(config.data.channels)
    return dict(net_apply=make_net_apply(loaded.model), params=loaded.params, config=config,
                edm=edm_config(config), mode=str(config.mode),
                num_sources=int(config.model.num_sources), num_classes=loaded.num_classes,
                classes=loaded.classes, class_conditional=bool(config.model.class_conditional),
                size=size, channels=ch, image_shape=(size, size, ch), step=int(loaded.step),
                checkpoint=loaded.path)
