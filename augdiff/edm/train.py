"""EDM training for the three CASD modes (seed 004) and class-conditional generators.

One loop, three modes that share everything but the label the network sees:

- ``dm``: real images only, no label (a plain EDM model; with ``model.class_conditional`` the
  data's class labels are the condition, seed 004 §4.3).
- ``sda``: real ∪ synthetic images, no label ("synthetic data augmentation").
- ``casd``: real ∪ synthetic, the source label ``y`` one-hot (0 = real, 1.. = synthetic
  source id) is the condition (seed 004 §3, App. A.2); at sampling time ``y = 0``.

Optimisation follows NVlabs/edm ``training_loop.py`` (Karras et al. 2022, App. F.1):

- Adam(β₁ = 0.9, β₂ = 0.999, ε = 1e-8) with the learning rate ramped up linearly in images,
  ``lr(n) = lr · min(n / max(lr_rampup_images, 1e-8), 1)`` where ``n`` is the number of images
  seen *before* the step (so the first step has lr 0, as in edm);
- EMA with a half-life in images, ``β = 0.5^(B / max(h, 1e-8))`` with
  ``h = min(ema_halflife_images, n · ema_rampup_ratio)`` when the ramp-up ratio is set,
  ``ema ← β · ema + (1 − β) · θ`` after each optimiser step;
- the loss is the EDM loss of :func:`augdiff.edm.core.edm_loss`, averaged over the batch.

The step is a pure function of ``(state, batch)`` with randomness from
``fold_in(key, step)``; it is jitted once with explicit shardings (batch over the mesh,
parameters replicated) and donates the state. Checkpoints (params, EMA, optimiser state,
step and the loader's state) are written every ``checkpoint_every_steps`` so that a killed
and resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from augdiff import distributed
from augdiff.config import ConfigError, config_diff, to_dict
from augdiff.train.losses import NonFiniteLossError

MODES = ("dm", "sda", "casd")

# Config sections that define the trained function; sampling refuses a checkpoint whose
# saved config differs from the current one in any of them.
MODEL_FIELDS = ("mode", "model", "edm", "data.image_size", "data.channels")


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: the step counter, parameters, EMA and optimiser state."""

    step: jax.Array
    params: Any
    ema: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The static hyper-parameters of one training step (hashable, closed over by jit)."""

    mode: str
    batch_size: int
    lr: float
    lr_rampup_images: float
    ema_halflife_images: float
    ema_rampup_ratio: float
    num_sources: int
    num_classes: int
    class_conditional: bool
    precision: str = "float32"

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, *, num_classes: int) -> StepConfig:
        t = config.train
        return cls(
            mode=str(config.mode),
            batch_size=int(t.batch_size),
            lr=float(t.lr),
            lr_rampup_images=float(t.lr_rampup_images),
            ema_halflife_images=float(t.ema_halflife_images),
            ema_rampup_ratio=float(t.ema_rampup_ratio),
            num_sources=int(config.model.num_sources),
            num_classes=int(num_classes),
            class_conditional=bool(config.model.class_conditional),
            precision=str(t.precision),
        )


# ----------------------------------------------------------------------------------------
# Schedules (NVlabs/edm training_loop.py).


def learning_rate(step: jax.Array | int, *, lr: float, batch_size: int,
                  rampup_images: float) -> jax.Array:
    """``lr · min(n / max(rampup_images, 1e-8), 1)`` with ``n = step · batch_size`` images seen."""
    nimg = jnp.asarray(step, jnp.float32) * batch_size
    return lr * jnp.minimum(nimg / max(float(rampup_images), 1e-8), 1.0)


def ema_beta(step: jax.Array | int, *, batch_size: int, halflife_images: float,
             rampup_ratio: float | None) -> jax.Array:
    """EMA decay per step, ``β = 0.5^(B / max(h, 1e-8))`` (half-life ``h`` in images).

    With a ramp-up ratio ``r > 0`` the half-life is ``h = min(halflife_images, n · r)`` where
    ``n = step · B`` is the number of images seen before this step (NVlabs/edm).
    """
    nimg = jnp.asarray(step, jnp.float32) * batch_size
    h = jnp.asarray(float(halflife_images), jnp.float32)
    if rampup_ratio is not None and rampup_ratio > 0:
        h = jnp.minimum(h, nimg * rampup_ratio)
    return 0.5 ** (batch_size / jnp.maximum(h, 1e-8))


def ema_update(ema: Any, params: Any, beta: jax.Array) -> Any:
    """``ema ← β · ema + (1 − β) · θ`` leaf by leaf."""
    return jax.tree_util.tree_map(
        lambda e, p: (beta * e + (1.0 - beta) * p).astype(e.dtype), ema, params
    )


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


# ----------------------------------------------------------------------------------------
# Labels: what the network sees in each mode.


def batch_labels(batch: Mapping[str, Any], cfg: StepConfig) -> dict[str, jax.Array] | None:
    """The condition of a batch: ``{'source': y}`` in casd (int ids 0 = real, 1.. synthetic,
    one-hot encoded and embedded inside the network, seed 004 App. A.2), ``{'class': c}`` when
    class-conditional, both when both apply, ``None`` for an unconditional dm/sda model."""
    labels: dict[str, jax.Array] = {}
    if cfg.mode == "casd":
        labels["source"] = jnp.asarray(batch["source"], jnp.int32)
    if cfg.class_conditional:
        labels["class"] = jnp.asarray(batch["label"], jnp.int32)
    return labels or None


def to_model_images(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] → float32 [-1, 1] (the convention inside models)."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def from_model_images(x: jax.Array | np.ndarray) -> np.ndarray:
    """float [-1, 1] → uint8 [0, 255] with rounding and clipping (NVlabs/edm generate.py)."""
    x = np.asarray(x, np.float32)
    return np.clip(np.rint(x * 127.5 + 128.0 - 0.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------
# Model construction.


def _compute_dtype(precision: str) -> Any:
    if precision not in ("float32", "bfloat16"):
        raise ConfigError(f"train.precision must be float32 or bfloat16, got {precision!r}")
    return jnp.bfloat16 if precision == "bfloat16" else jnp.float32


def build_model(config: ml_collections.ConfigDict, *, num_classes: int,
                precision: str | None = None) -> Any:
    """The SongUNet a config describes (``model.preset`` plus image size, channels, labels).

    ``precision`` (default ``train.precision``) is the compute dtype: ``bfloat16`` runs the
    convolutions in bf16 while parameters (and the optimiser/EMA) stay float32.
    """
    from augdiff.models.songunet import SongUNet, songunet_config

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
    if bool(config.model.class_conditional):
        kwargs["label_dim"] = int(num_classes)
    if mode == "casd":
        kwargs["casd"] = True
        kwargs["num_sources"] = int(config.model.num_sources)
    return SongUNet(**songunet_config(str(config.model.preset), **kwargs))


def make_net_apply(model: Any) -> Callable[..., jax.Array]:
    """``net_apply(params, x, noise_labels, labels, *, train, rngs)`` for :mod:`augdiff.edm.core`.

    ``labels`` is ``None`` or a dict ``{'class': c, 'source': y}`` routed to the network's
    ``class_labels`` / ``source_labels`` (the CASD source label stays apart from the class).
    """

    def net_apply(params, x, noise_labels, labels=None, *, train=False, rngs=None):
        labels = labels or {}
        return model.apply({"params": params}, x, noise_labels,
                           class_labels=labels.get("class"),
                           source_labels=labels.get("source"), train=train, rngs=rngs)

    return net_apply


def edm_config(config: ml_collections.ConfigDict) -> Any:
    """The :class:`augdiff.edm.core.EDMConfig` of ``config.edm``."""
    from augdiff.edm.core import EDMConfig

    e = config.edm
    return EDMConfig(sigma_min=float(e.sigma_min), sigma_max=float(e.sigma_max),
                     rho=float(e.rho), sigma_data=float(e.sigma_data),
                     P_mean=float(e.P_mean), P_std=float(e.P_std))


def init_state(key: jax.Array, model: Any, optimizer: optax.GradientTransformation,
               shape: tuple[int, ...], cfg: StepConfig) -> TrainState:
    """Fresh parameters (EMA = a copy), optimiser state and step 0."""
    b = shape[0]
    labels = batch_labels({"source": jnp.zeros((b,), jnp.int32),
                           "label": jnp.zeros((b,), jnp.int32)}, cfg) or {}
    variables = model.init(
        {"params": key, "dropout": key}, jnp.zeros(shape, jnp.float32), jnp.zeros((b,)),
        class_labels=labels.get("class"), source_labels=labels.get("source"), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=optimizer.init(params))


# ----------------------------------------------------------------------------------------
# The step.


def train_step(state: TrainState, batch: Mapping[str, jax.Array], key: jax.Array, *,
               net_apply: Callable[..., jax.Array], optimizer: optax.GradientTransformation,
               edm_cfg: Any, cfg: StepConfig) -> tuple[TrainState, dict[str, jax.Array]]:
    """One EDM optimisation step: loss, Adam update with LR ramp-up, EMA.

    ``batch`` holds ``image`` (uint8 NHWC), ``source`` and ``label`` (int32). Randomness (σ,
    noise, dropout) comes from ``fold_in(key, state.step)`` only.
    """
    from augdiff.edm.core import edm_loss

    step_key = jax.random.fold_in(key, state.step)
    loss_key, dropout_key = jax.random.split(step_key)
    x0 = to_model_images(batch["image"])
    labels = batch_labels(batch, cfg)

    def loss_fn(params):
        per_example = edm_loss(loss_key, net_apply, params, x0, labels, cfg=edm_cfg,
                               train=True, rngs={"dropout": dropout_key})
        return jnp.mean(per_example)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    beta = ema_beta(state.step, batch_size=cfg.batch_size,
                    halflife_images=cfg.ema_halflife_images, rampup_ratio=cfg.ema_rampup_ratio)
    ema = ema_update(state.ema, params, beta)
    metrics = {
        "loss": loss,
        "lr": learning_rate(state.step, lr=cfg.lr, batch_size=cfg.batch_size,
                            rampup_images=cfg.lr_rampup_images),
        "ema_beta": beta,
        "grad_norm": optax.global_norm(grads),
    }
    return TrainState(step=state.step + 1, params=params, ema=ema, opt_state=opt_state), metrics


def jit_train_step(mesh: Mesh, state: TrainState, **kwargs: Any) -> Callable[..., Any]:
    """:func:`train_step` jitted once: state replicated and donated, batch split over the mesh."""
    rep = distributed.replicated(mesh)
    state_sh = jax.tree_util.tree_map(lambda _: rep, state)
    batch_sh = distributed.batch_sharding(mesh)

    def step(state, batch, key):
        return train_step(state, batch, key, **kwargs)

    return jax.jit(step, in_shardings=(state_sh, batch_sh, rep),
                   out_shardings=(state_sh, rep), donate_argnums=(0,))


# ----------------------------------------------------------------------------------------
# Data.


class ClassSubset:
    """Rows of a real source whose class is in ``classes`` (labels keep their original ids)."""

    def __init__(self, source: Any, classes: list[str]):
        names = list(source.class_names)
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise ConfigError(f"data.classes: unknown class(es) {unknown}; known: {names}")
        keep = np.asarray([names.index(c) for c in classes])
        self._source = source
        self._rows = np.flatnonzero(np.isin(np.asarray(source.labels), keep))
        self.class_names = names
        self.num_classes = len(names)
        self.labels = np.asarray(source.labels)[self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = dict(self._source[int(self._rows[int(i)])])
        rec["index"] = np.int64(i)
        return rec


def open_real(config: ml_collections.ConfigDict) -> Any:
    """The real source of ``config.data`` restricted to ``data.classes`` when set."""
    from augdiff.data.sources import open_real_source

    real = open_real_source(config.data, str(config.data.split))
    classes = [c.strip() for c in str(config.data.classes).split(",") if c.strip()]
    return ClassSubset(real, classes) if classes else real


def shift_colours(images: np.ndarray, kind: str) -> np.ndarray:
    """A strong, easily measured distribution shift of uint8 images.

    ``red_tint``: ``(0.5·R + 127, 0.4·G, 0.4·B)`` (a red cast); ``invert``: ``255 − x``.
    """
    x = images.astype(np.float32)
    if kind == "red_tint":
        out = np.stack([0.5 * x[..., 0] + 127.0, 0.4 * x[..., 1], 0.4 * x[..., 2]], -1)
    elif kind == "invert":
        out = 255.0 - x
    else:
        raise ConfigError(f"synthetic.shift must be red_tint or invert, got {kind!r}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_shifted_store(real: Any, root: str, *, kind: str, count: int = 0,
                        seed: int = 0, classes: list[str] | None = None) -> Any:
    """Write a synthetic store of colour-shifted real images (a stand-in generator for smoke
    runs and the CASD experiment) and return it as a :class:`SyntheticStore`.

    Example ``i`` shifts real row ``perm[i mod len]`` where ``perm`` comes from
    ``fold_in(PRNGKey(seed), 0)``; resumable like every generator (completed keys skipped);
    each process writes its own contiguous slice of the examples.
    """
    from augdiff.data.store import StoreWriter, SyntheticStore

    if classes:
        real = ClassSubset(real, classes)
    n_real = len(real)
    if n_real == 0:
        raise ConfigError("synthetic.shift: the real source is empty")
    count = int(count) or n_real
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(seed), 0),
                                             n_real))
    mine = distributed.process_slice(count)
    with StoreWriter(root, method=f"shift/{kind}",
                     config={"kind": kind, "count": count, "seed": seed}) as writer:
        done = writer.completed_keys
        for i in range(mine.start, mine.stop):
            key = f"{i:08d}"
            if key in done:
                continue
            row = int(perm[i % n_real])
            rec = real[row]
            img = shift_colours(np.asarray(rec["image"])[None], kind)[0]
            writer.add(key, img, int(rec["label"]), source=1,
                       provenance={"shift": kind, "real_row": row})
    if jax.process_count() > 1:  # every process wrote its slice: wait for all shards
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"write_shifted_store:{root}")
    return SyntheticStore(root)


def open_synthetic(config: ml_collections.ConfigDict, real: Any) -> Any:
    """The synthetic store(s) for sda/casd: ``synthetic.stores`` or a colour-shifted store."""
    from augdiff.data.store import SyntheticStore

    stores = [s.strip() for s in str(config.synthetic.stores).split(",") if s.strip()]
    if config.synthetic.shift:
        if stores:
            raise ConfigError("set synthetic.stores or synthetic.shift, not both")
        from augdiff.data.sources import open_real_source

        classes = [c.strip() for c in str(config.synthetic.shift_classes).split(",")
                   if c.strip()]
        base = open_real_source(config.data, str(config.data.split)) if classes else real
        root = os.path.join(str(config.workdir), f"shifted_{config.synthetic.shift}")
        return write_shifted_store(base, root, kind=str(config.synthetic.shift),
                                   count=int(config.synthetic.shift_count),
                                   seed=int(config.seed), classes=classes or None)
    if not stores:
        raise ConfigError(f"mode {config.mode!r} needs synthetic data: set "
                          "--config.synthetic.stores=DIR[,DIR] or --config.synthetic.shift")
    for s in stores:
        if not os.path.isdir(s):
            raise ConfigError(f"synthetic.stores: {s!r} is not a directory")
    if len(stores) > 1:
        raise ConfigError("synthetic.stores: one store per run is supported by MixedLoader")
    return SyntheticStore(stores[0])


def make_loader(config: ml_collections.ConfigDict, real: Any, synthetic: Any,
                total_steps: int) -> Any:
    """The mixing loader: real only for dm, real ∪ synthetic (constant share) otherwise."""
    from augdiff.data.loader import MixedLoader

    bs = int(config.train.batch_size)
    steps_per_epoch = max(len(real) // bs, 1)
    epochs = max(math.ceil(total_steps / steps_per_epoch), 1)
    frac = 0.0 if synthetic is None else float(config.synthetic.fraction)
    return MixedLoader(real, synthetic, batch_size=bs, schedule=frac, epochs=epochs,
                       steps_per_epoch=steps_per_epoch, seed=int(config.seed),
                       num_workers=int(config.data.num_workers))


# ----------------------------------------------------------------------------------------
# The loop.


def checkpointer(config: ml_collections.ConfigDict) -> Any:
    """The run's :class:`augdiff.train.checkpoint.Checkpointer` (``<workdir>/checkpoints``)."""
    from augdiff.train.checkpoint import Checkpointer

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
    import orbax.checkpoint as ocp

    item = os.path.join(ckpt.directory, str(int(step)), "state")
    if not os.path.isdir(item):
        raise FileNotFoundError(f"no 'state' item in checkpoint {item!r}")
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(item).item_metadata.tree
    if "ema" not in meta:
        raise ValueError(f"checkpoint {item!r} holds no EMA parameters (keys: {sorted(meta)})")
    args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta,
                                  is_leaf=lambda x: not isinstance(x, dict | list | tuple))
    raw = ckptr.restore(item, args=ocp.args.PyTreeRestore(restore_args=args))["ema"]
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


def mismatching_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted names of the model-defining fields (:data:`MODEL_FIELDS`) where a checkpoint's
    saved config and the current one differ (via :func:`augdiff.config.config_diff`)."""
    out: list[str] = []
    for field in MODEL_FIELDS:
        a, b = config_field(saved, field), config_field(current, field)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, field + ".")
        elif a != b:
            out.append(field)
    return out


def _truncate_metrics(path: str, upto: int) -> None:
    """Drop the records of steps after ``upto`` (the restored checkpoint) from a metrics file,
    so a resumed run logs every step exactly once."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= upto]
    if len(keep) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def _check_config(config: ml_collections.ConfigDict) -> None:
    if str(config.mode) not in MODES:
        raise ConfigError(f"config.mode must be one of {MODES}, got {config.mode!r}")
    if not config.workdir:
        raise ConfigError("config.workdir must be set (--config.workdir=DIR)")
    if int(config.train.batch_size) <= 0:
        raise ConfigError("train.batch_size must be positive")
    if str(config.mode) == "casd" and int(config.model.num_sources) < 2:
        raise ConfigError("casd needs model.num_sources >= 2 (real + at least one synthetic)")


def train(config: ml_collections.ConfigDict, *, stop_after_steps: int | None = None) -> dict:
    """Train (or resume) the EDM model ``config`` describes; returns the final metrics.

    ``stop_after_steps`` ends the run early after that many steps *of this call* (used to
    simulate a killed job; the last checkpoint is what a resumed run starts from).
    """
    _check_config(config)
    workdir = str(config.workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = distributed.mesh_from_config(config)
    bs = int(config.train.batch_size)
    shards = distributed.num_batch_shards(mesh)
    if bs % shards:
        raise ConfigError(f"train.batch_size={bs} must be a multiple of the {shards} devices "
                          "of the mesh")
    total_steps = max(int(config.train.total_images) // bs, 1)

    real = open_real(config)
    synthetic = open_synthetic(config, real) if config.mode in ("sda", "casd") else None
    num_classes = int(config.model.num_classes) or int(real.num_classes)
    cfg = StepConfig.from_config(config, num_classes=num_classes)
    model = build_model(config, num_classes=num_classes)
    optimizer = make_optimizer(config)
    net_apply = make_net_apply(model)
    key = jax.random.PRNGKey(int(config.seed))
    init_key, step_key = jax.random.split(key)
    size, ch = int(config.data.image_size), int(config.data.channels)
    state = jax.jit(lambda k: init_state(k, model, optimizer, (1, size, size, ch), cfg))(
        init_key)
    state = distributed.replicate(state, mesh)
    loader = make_loader(config, real, synthetic, total_steps)

    config_dict = to_dict(config)
    info = {"num_classes": num_classes,
            "classes": sorted(int(c) for c in np.unique(np.asarray(real.labels)))}
    if jax.process_index() == 0:
        _write_json(os.path.join(workdir, "config.json"), config_dict)
    ckpt = checkpointer(config)
    last_ckpt = None
    if ckpt.latest_step() is not None:
        saved = checkpoint_extras(ckpt, ckpt.latest_step()).get("config", {})
        diffs = mismatching_fields(saved, config_dict)
        if diffs:
            raise ConfigError(f"cannot resume from {ckpt.directory}/{ckpt.latest_step()}: it "
                              f"was trained with other values of {', '.join(diffs)}; use a "
                              "new workdir")
        state, extras, last_ckpt = restore_checkpoint(ckpt, state)
        loader.set_state(extras["loader"])
    start = int(state.step)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() == 0:
        _truncate_metrics(metrics_path, start)

    step_fn = jit_train_step(mesh, state, net_apply=net_apply, optimizer=optimizer,
                             edm_cfg=edm_config(config), cfg=cfg)
    step_key = distributed.replicate(step_key, mesh)
    log_every = max(int(config.train.log_every_steps), 1)
    ckpt_every = max(int(config.train.checkpoint_every_steps), 1)
    last: dict[str, Any] = {"step": start}
    it: Iterator[dict[str, Any]] = iter(loader)
    t0, n0 = time.perf_counter(), start
    end = total_steps if stop_after_steps is None else min(total_steps, start + stop_after_steps)
    bar = tqdm(range(start, end), desc=f"train-diffusion[{config.mode}]", initial=start,
               total=total_steps, disable=jax.process_index() != 0)
    try:
        with open(metrics_path, "a") as mf:
            for step in bar:
                host = next(it)
                batch = {k: host[k] for k in ("image", "source", "label")}
                batch = distributed.host_local_to_global(batch, mesh)
                state, m = step_fn(state, batch, step_key)
                loss = float(m["loss"])
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"non-finite loss ({loss}) at step {step}; source ids in the batch: "
                        f"{sorted({int(s) for s in np.asarray(host['source']).ravel()})}; "
                        f"last good checkpoint: {last_ckpt or 'none (no checkpoint written yet)'}")
                rec = {"step": step + 1, "loss": loss, "lr": float(m["lr"]),
                       "ema_beta": float(m["ema_beta"]), "grad_norm": float(m["grad_norm"]),
                       "epoch": int(host.get("epoch", 0))}
                if (step + 1) % log_every == 0 or step + 1 == end:
                    dt = time.perf_counter() - t0
                    rec["images_per_s"] = (step + 1 - n0) * bs / max(dt, 1e-9)
                    t0, n0 = time.perf_counter(), step + 1
                    bar.set_postfix(loss=f"{loss:.4f}", ips=f"{rec['images_per_s']:.1f}")
                if jax.process_index() == 0:
                    mf.write(json.dumps(rec) + "\n")
                    mf.flush()
                last = rec
                if (step + 1) % ckpt_every == 0 or step + 1 == total_steps:
                    last_ckpt = save_checkpoint(ckpt, state, loader.get_state(), config_dict, info)
    finally:
        bar.close()
        ckpt.close()
        loader.close()
    return last
