"""EDM training for the three CASD modes (seed 004) and class-conditional generators.

One loop, three modes that share everything but the label the network sees:

- ``dm``: real images only, no label (a plain EDM model; with ``model.class_conditional`` the
  data's class labels are the condition, seed 004 §4.3).
- ``sda``: real ∪ synthetic images, no label ("synthetic data augmentation").
- ``casd``: real ∪ synthetic, the source label ``y`` one-hot (0 = real, 1..K = synthetic
  source id) is the condition (seed 004 §3, App. A.2); at sampling time ``y = 0``.

SDA and CASD train on the union of the sources (every example equally likely, seed 004 eq.
5; ``synthetic.mixing='ratio'`` gives a constant synthetic share per batch instead), with
several synthetic stores as sources 1..K (``synthetic.stores=DIR1,DIR2``).

Optimisation follows NVlabs/edm ``training_loop.py`` (Karras et al. 2022, App. F.1):

- Adam(β₁ = 0.9, β₂ = 0.999, ε = 1e-8) with the learning rate ramped up linearly in images,
  ``lr(n) = lr · min(n / max(lr_rampup_images, 1e-8), 1)`` where ``n`` is the number of images
  seen *before* the step (so the first step has lr 0, as in edm);
- EMA with a half-life in images, ``β = 0.5^(B / max(h, 1e-8))`` with
  ``h = min(ema_halflife_images, n · ema_rampup_ratio)`` when the ramp-up ratio is set,
  ``ema ← β · ema + (1 − β) · θ`` after each optimiser step;
- the loss is the EDM loss of :func:`augdiff.edm.core.edm_loss`, summed over pixels and
  averaged over the batch (``train.loss_reduction``);
- EDM's non-leaky augmentation pipe (:mod:`augdiff.edm.augment`, ``augment.p``) on device
  in the step, its 9-d labels fed to the network.

The step is a pure function of ``(state, batch)`` with randomness from
``fold_in(key, step)``; it is jitted once with explicit shardings (batch over the mesh,
parameters replicated) and donates the state. Checkpoints (params, EMA, optimiser state,
step and the loader's state) are written every ``checkpoint_every_steps`` so that a killed
and resumed run reproduces an uninterrupted one exactly. Every step's loss, learning rate,
EMA β and gradient norm go to ``workdir/metrics.jsonl`` and to TensorBoard (``workdir/tb``,
the classifier trainer's ``tensorboardX`` writer).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm.auto import tqdm

from augdiff import distributed
from augdiff.config import ConfigError, to_dict
from augdiff.data.loader import MixedLoader
from augdiff.data.pixels import to_signed
from augdiff.data.sources import open_real_source
from augdiff.data.store import StoreWriter, SyntheticStore
from augdiff.edm.augment import AugmentConfig, augment
from augdiff.edm.core import edm_loss
from augdiff.edm.model import (  # noqa: F401  (the model's home; re-exported for callers)
    LEGACY_VALUES,
    MODEL_FIELDS,
    MODES,
    RESUME_FIELDS,
    TrainState,
    abstract_state,
    augment_enabled,
    build_model,
    check_image_size,
    checkpoint_extras,
    checkpointer,
    config_field,
    edm_config,
    init_state,
    learning_rate,
    make_net_apply,
    make_optimizer,
    mismatching_fields,
    restore_checkpoint,
    save_checkpoint,
)
from augdiff.files import atomic_write, write_json
from augdiff.train.losses import NonFiniteLossError


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
    loss_reduction: str = "sum"  # 'sum' over pixels (EDM, seed 004 eq. 5) | 'mean'
    augment: Any = None  # an augdiff.edm.augment.AugmentConfig, or None (off)

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
            loss_reduction=str(t.get("loss_reduction", "sum")),
            augment=_augment_config(config),
        )


def _augment_config(config: ml_collections.ConfigDict) -> Any:
    if not augment_enabled(config):
        return None
    try:
        return AugmentConfig.from_config(config.augment)
    except ValueError as e:
        raise ConfigError(str(e)) from e


# ----------------------------------------------------------------------------------------
# Schedules (NVlabs/edm training_loop.py).


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


# ----------------------------------------------------------------------------------------
# Model construction.


# ----------------------------------------------------------------------------------------
# The step.


def train_step(state: TrainState, batch: Mapping[str, jax.Array], key: jax.Array, *,
               net_apply: Callable[..., jax.Array], optimizer: optax.GradientTransformation,
               edm_cfg: Any, cfg: StepConfig) -> tuple[TrainState, dict[str, jax.Array]]:
    """One EDM optimisation step: (augmentation,) loss, Adam update with LR ramp-up, EMA.

    ``batch`` holds ``image`` (uint8 NHWC), ``source`` and ``label`` (int32). Randomness (σ,
    noise, dropout, augmentation) comes from ``fold_in(key, state.step)`` only. The loss is
    ``mean_batch Σ_pixels λ(σ)(D − y)²`` (``loss_reduction='sum'``, NVlabs/edm and seed 004
    eq. 5) or its per-pixel mean (``'mean'``; with Adam the two differ only through ε).
    """
    step_key = jax.random.fold_in(key, state.step)
    loss_key, dropout_key, aug_key = jax.random.split(step_key, 3)
    x0 = to_signed(batch["image"])
    labels = batch_labels(batch, cfg)
    if cfg.augment is not None:  # EDM's non-leaky pipe: the net sees what was applied
        x0, aug_labels = augment(aug_key, x0, cfg.augment)
        labels = {**(labels or {}), "augment": aug_labels}
    if cfg.loss_reduction not in ("sum", "mean"):
        raise ConfigError(f"train.loss_reduction must be sum or mean, got {cfg.loss_reduction!r}")
    # edm_loss averages over pixels; EDM (loss.sum() / batch) and eq. 5 sum over them.
    scale = float(np.prod(x0.shape[1:])) if cfg.loss_reduction == "sum" else 1.0

    def loss_fn(params):
        per_example = edm_loss(loss_key, net_apply, params, x0, labels, cfg=edm_cfg,
                               train=True, rngs={"dropout": dropout_key})
        return jnp.mean(per_example) * scale

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
    """The real source of ``config.data`` (its subset, e.g. the first
    ``data.first_per_class`` rows of each class, drawn by :func:`open_real_source`, so the
    run's ``prepare`` record and evaluation see the same rows) restricted to ``data.classes``
    when set."""
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
        multihost_utils.sync_global_devices(f"write_shifted_store:{root}")
    return SyntheticStore(root)


class SourceUnion:
    """Rows of several sources back to back, each relabelled with its source id.

    ``SourceUnion([real, syn_1, …, syn_K], source_ids=[0, 1, …, K])``: row ``i`` is the row of
    the part it falls in, its ``source`` set to that part's id (0 = real, k = the k-th
    synthetic store, seed 004 §3.2) and its class ``label`` kept; ``index`` is ``i``.
    """

    def __init__(self, parts: list[Any], source_ids: list[int]):
        if len(parts) != len(source_ids) or not parts:
            raise ValueError("SourceUnion: one source id per part, at least one part")
        self.parts, self.source_ids = list(parts), [int(k) for k in source_ids]
        self._offsets = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])])
        first = self.parts[0]
        self.class_names = list(getattr(first, "class_names", []))
        self.num_classes = int(getattr(first, "num_classes", 0) or 0)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def sources(self) -> np.ndarray:
        """The source id of every row."""
        return np.repeat(self.source_ids, np.diff(self._offsets))

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"SourceUnion: row {i} out of range for {len(self)} rows")
        k = int(np.searchsorted(self._offsets, i, side="right") - 1)
        rec = dict(self.parts[k][i - int(self._offsets[k])])
        rec["source"] = np.int32(self.source_ids[k])
        rec["index"] = np.int64(i)
        return rec


def open_synthetic(config: ml_collections.ConfigDict, real: Any) -> list[Any]:
    """The synthetic sources for sda/casd, in source-id order 1..K: the comma-separated
    ``synthetic.stores`` (one :class:`SyntheticStore` each), or one colour-shifted store."""
    stores = [s.strip() for s in str(config.synthetic.stores).split(",") if s.strip()]
    if config.synthetic.shift:
        if stores:
            raise ConfigError("set synthetic.stores or synthetic.shift, not both")
        classes = [c.strip() for c in str(config.synthetic.shift_classes).split(",")
                   if c.strip()]
        base = open_real_source(config.data, str(config.data.split)) if classes else real
        root = os.path.join(str(config.workdir), f"shifted_{config.synthetic.shift}")
        return [write_shifted_store(base, root, kind=str(config.synthetic.shift),
                                    count=int(config.synthetic.shift_count),
                                    seed=int(config.seed), classes=classes or None)]
    if not stores:
        raise ConfigError(f"mode {config.mode!r} needs synthetic data: set "
                          "--config.synthetic.stores=DIR[,DIR] or --config.synthetic.shift")
    for s in stores:
        if not os.path.isdir(s):
            raise ConfigError(f"synthetic.stores: {s!r} is not a directory")
    return [SyntheticStore(s) for s in stores]


def training_source(config: ml_collections.ConfigDict, real: Any,
                    synthetic: list[Any] | None) -> tuple[Any, Any, float]:
    """``(first, second, share)`` for :class:`MixedLoader` in each mixing rule.

    - ``dm`` (no synthetic data): the real rows only;
    - ``synthetic.mixing='union'`` (default, seed 004 eq. 5): one source, the union
      ``D_r ∪ D_s1 ∪ … ∪ D_sK`` with source ids 0, 1..K, read in epoch-wise permutations, so
      every example is equally likely (the synthetic share is ``m / (n + m)``);
    - ``'ratio'``: real rows and the union of the synthetic stores in a constant share
      ``synthetic.fraction`` per batch.
    """
    if not synthetic:
        return real, None, 0.0
    k = len(synthetic)
    if config.mode == "casd" and int(config.model.num_sources) < k + 1:
        raise ConfigError(f"model.num_sources={int(config.model.num_sources)} is too small "
                          f"for the real source and {k} synthetic source(s); set it to {k + 1}")
    mixing = str(config.synthetic.get("mixing", "union"))
    if mixing == "union":
        return SourceUnion([real, *synthetic], list(range(k + 1))), None, 0.0
    if mixing == "ratio":
        return real, SourceUnion(list(synthetic), list(range(1, k + 1))), float(
            config.synthetic.fraction)
    raise ConfigError(f"synthetic.mixing must be union or ratio, got {mixing!r}")


def make_loader(config: ml_collections.ConfigDict, real: Any, synthetic: list[Any] | None,
                total_steps: int) -> Any:
    """The loader of :func:`training_source`'s rule (an epoch is one pass over its first
    source: the real rows, or the whole union)."""
    first, second, frac = training_source(config, real, synthetic)
    bs = int(config.train.batch_size)
    steps_per_epoch = max(len(first) // bs, 1)
    epochs = max(math.ceil(total_steps / steps_per_epoch), 1)
    return MixedLoader(first, second, batch_size=bs, schedule=frac, epochs=epochs,
                       steps_per_epoch=steps_per_epoch, seed=int(config.seed),
                       num_workers=int(config.data.num_workers))


# ----------------------------------------------------------------------------------------
# The loop.


def _truncate_metrics(path: str, upto: int) -> None:
    """Drop the records of steps after ``upto`` (the restored checkpoint) from a metrics file,
    so a resumed run logs every step exactly once."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= upto]
    if len(keep) != len(lines):
        atomic_write(path, "".join(keep))


def _check_config(config: ml_collections.ConfigDict) -> None:
    if str(config.mode) not in MODES:
        raise ConfigError(f"config.mode must be one of {MODES}, got {config.mode!r}")
    if not config.workdir:
        raise ConfigError("config.workdir must be set (--config.workdir=DIR)")
    if int(config.train.batch_size) <= 0:
        raise ConfigError("train.batch_size must be positive")
    if str(config.mode) == "casd" and int(config.model.num_sources) < 2:
        raise ConfigError("casd needs model.num_sources >= 2 (real + at least one synthetic)")
    check_image_size(config)


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
            "classes": sorted(int(c) for c in np.unique(np.asarray(real.labels))),
            # the data's class names (index = label): a sampled store's manifest carries them
            "class_names": [str(n) for n in getattr(real, "class_names", [])]}
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "config.json"), config_dict)
    ckpt = checkpointer(config)
    last_ckpt = None
    if ckpt.latest_step() is not None:
        saved = checkpoint_extras(ckpt, ckpt.latest_step()).get("config", {})
        diffs = mismatching_fields(saved, config_dict, MODEL_FIELDS + RESUME_FIELDS)
        if diffs:
            was = {f: config_field(saved, f) for f in diffs}
            detail = ", ".join(
                f"{f} = {LEGACY_VALUES.get(f, v) if v == '<missing>' else v!r}"
                for f, v in was.items())
            raise ConfigError(f"cannot resume from {ckpt.directory}/{ckpt.latest_step()}: it "
                              f"was trained with {detail}; set the same value or use a new "
                              "workdir")
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
    from tensorboardX import SummaryWriter

    tb = SummaryWriter(os.path.join(workdir, "tb")) if jax.process_index() == 0 else None
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
                if tb is not None:
                    for k in ("loss", "lr", "ema_beta", "grad_norm", "images_per_s"):
                        if k in rec:
                            tb.add_scalar(f"train/{k}", rec[k], step + 1)
                last = rec
                if (step + 1) % ckpt_every == 0 or step + 1 == total_steps:
                    last_ckpt = save_checkpoint(ckpt, state, loader.get_state(), config_dict, info)
    finally:
        bar.close()
        ckpt.close()
        loader.close()
        if tb is not None:
            tb.close()
    return last
