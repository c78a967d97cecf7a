"""Classifier training on real (+ synthetic) data: train state, jitted steps, the training loop.

Pieces, usable on their own:

- :class:`TrainState` -- params, BatchNorm statistics, optimizer state, step and the data-
  augmentation key; a plain pytree (checkpointed as is).
- :func:`learning_rate_fn` -- multi-step (seed 000: 0.1, /10 at epochs 100 and 200) or cosine
  (seed 003) decay per step, with optional linear warm-up.
- :func:`make_optimizer` -- SGD (momentum 0.9, coupled weight decay as in ``torch.optim.SGD``)
  or AdamW.
- :func:`make_train_step` / :func:`make_eval_step` -- each ``jax.jit``-ed once with explicit
  in/out shardings over a ``('data', 'fsdp')`` mesh: batch split over every device, state
  replicated and donated.
- :func:`train_and_evaluate` -- the loop behind ``augdiff train``: MixedLoader stream,
  per-epoch evaluation on the full test split, ``metrics.json``, TensorBoard scalars, orbax
  checkpoints with the loader state, exact resumption.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from augdiff import distributed
from augdiff.config import config_diff, to_dict
from augdiff.data import augment as A
from augdiff.data import schedules
from augdiff.data.loader import MixedLoader
from augdiff.data.online import online_config, online_rows
from augdiff.data.sources import open_real_source, prescan
from augdiff.data.store import SyntheticStore
from augdiff.files import write_json
from augdiff.models.classifiers import get_classifier, param_count
from augdiff.train import losses
from augdiff.train.checkpoint import Checkpointer
from augdiff.train.losses import NonFiniteLossError

TRAIN_KEYS = ("image", "label", "weight", "source")
EVAL_KEYS = ("image", "label", "mask")


# --------------------------------------------------------------------------------------------
# State, optimizer, learning rate


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. ``rng`` is a raw ``uint32[2]`` key; the key of
    step ``s`` is ``fold_in(rng, s)``, so a resumed run draws the same augmentations."""

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


def learning_rate_fn(
    optim: Mapping[str, Any] | ml_collections.ConfigDict, steps_per_epoch: int, epochs: int
) -> Callable[[jax.Array], jax.Array]:
    """The learning rate ``eta(s)`` at optimizer step ``s`` (0-based).

    With ``W = warmup_epochs * steps_per_epoch`` and ``S = epochs * steps_per_epoch``:

    - ``multistep``: ``eta(s) = lr * gamma ** #{m in milestones : s >= m * steps_per_epoch}``
      (seed 000: lr 0.1, gamma 0.1, milestones (100, 200) of 300 epochs);
    - ``cosine``: ``eta(s) = lr * (1 + cos(pi * (s - W) / (S - W))) / 2`` (seed 003, lr 0.1);
    - ``constant``: ``eta(s) = lr``;

    and during warm-up (``s < W``) the rate ramps linearly: ``eta(s) * (s + 1) / W``.
    """
    kind = optim.get("schedule", "cosine")
    lr = float(optim["lr"])
    gamma = float(optim.get("gamma", 0.1))
    warm = int(round(float(optim.get("warmup_epochs", 0) or 0) * steps_per_epoch))
    total = int(epochs * steps_per_epoch)
    boundaries = jnp.asarray(
        [int(m) * steps_per_epoch for m in (optim.get("milestones", ()) or ())], jnp.int32
    )
    if kind not in ("multistep", "cosine", "constant"):
        raise ValueError(f"optim.schedule {kind!r} unknown; choose multistep, cosine or constant")
    if total <= warm:
        raise ValueError(f"warm-up ({warm} steps) must be shorter than training ({total} steps)")

    def fn(step: jax.Array) -> jax.Array:
        s = jnp.asarray(step, jnp.float32)
        if kind == "multistep":
            passed = jnp.sum(jnp.asarray(step)[None] >= boundaries) if boundaries.size else 0
            base = lr * gamma ** jnp.asarray(passed, jnp.float32)
        elif kind == "cosine":
            frac = jnp.clip((s - warm) / (total - warm), 0.0, 1.0)
            base = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        else:
            base = jnp.asarray(lr, jnp.float32)
        if warm > 0:
            base = base * jnp.minimum(1.0, (s + 1.0) / warm)
        return jnp.asarray(base, jnp.float32)

    return fn


def make_optimizer(
    optim: Mapping[str, Any] | ml_collections.ConfigDict,
    lr_fn: Callable[[jax.Array], jax.Array],
) -> optax.GradientTransformation:
    """``sgd``: ``v <- mu v + (g + lambda w);  w <- w - eta v`` (``torch.optim.SGD`` with weight
    decay ``lambda`` and momentum ``mu``, optionally Nesterov); ``adamw``: Loshchilov & Hutter
    (2019) decoupled weight decay."""
    name = optim.get("name", "sgd")
    wd = float(optim.get("weight_decay", 0.0))
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(wd),
            optax.sgd(lr_fn, momentum=float(optim.get("momentum", 0.9)),
                      nesterov=bool(optim.get("nesterov", False))),
        )
    if name == "adamw":
        return optax.adamw(lr_fn, b1=float(optim.get("b1", 0.9)), b2=float(optim.get("b2", 0.999)),
                           weight_decay=wd)
    raise ValueError(f"optim.name {name!r} unknown; choose sgd or adamw")


def create_train_state(
    key: jax.Array, model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...]
) -> TrainState:
    """Initialise parameters and BatchNorm statistics from ``key`` (``image_shape`` = HWC)."""
    init_key, data_key = jax.random.split(key)

    @jax.jit
    def init(k):
        variables = model.init(k, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
            rng=data_key,
        )

    return init(init_key)


def state_sharding(state: Any, mesh: Mesh) -> Any:
    """Parameters, statistics and optimizer state replicated on every device of ``mesh``."""
    rep = distributed.replicated(mesh)
    return jax.tree_util.tree_map(lambda _: rep, state)


# --------------------------------------------------------------------------------------------
# Steps


def augment_batch(
    key: jax.Array,
    x: jax.Array,
    y: jax.Array,
    aug: Mapping[str, Any] | ml_collections.ConfigDict,
) -> tuple[jax.Array, jax.Array]:
    """Classical augmentation on device: random crop (zero padding ``crop_pad``) + horizontal
    flip, CutOut, then Mixup or CutMix on the soft targets ``y`` (both enabled: one of them per
    batch with probability 1/2, as in timm). ``x`` is in ``[-1, 1]``; the crop pads with black
    (-1), as torchvision pads the raw image."""
    k_crop, k_cut, k_mix, k_cm, k_pick = jax.random.split(key, 5)
    if aug.get("crop_flip", True):
        x = A.random_crop_flip(k_crop, x, pad=int(aug.get("crop_pad", 4)), fill=-1.0)
    if int(aug.get("cutout", 0) or 0) > 0:
        x = A.cutout(k_cut, x, int(aug["cutout"]))
    mix_a = float(aug.get("mixup_alpha", 0.0) or 0.0)
    cut_a = float(aug.get("cutmix_alpha", 0.0) or 0.0)
    if mix_a > 0 and cut_a > 0:
        xm, ym = A.mixup(k_mix, x, y, mix_a)
        xc, yc = A.cutmix(k_cm, x, y, cut_a)
        pick = jax.random.bernoulli(k_pick)
        x, y = jnp.where(pick, xc, xm), jnp.where(pick, yc, ym)
    elif mix_a > 0:
        x, y = A.mixup(k_mix, x, y, mix_a)
    elif cut_a > 0:
        x, y = A.cutmix(k_cm, x, y, cut_a)
    return x, y


def _batch_shardings(mesh: Mesh, keys: tuple[str, ...]) -> dict[str, NamedSharding]:
    bs = distributed.batch_sharding(mesh)
    return {k: bs for k in keys}


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    state: TrainState,
    *,
    num_classes: int,
    loss_kind: str = "ce",
    augment: Mapping[str, Any] | None = None,
    lr_fn: Callable[[jax.Array], jax.Array] | None = None,
    donate: bool = True,
    online: Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]] | None = None,
    online_keys: tuple[str, ...] = (),
    steps_per_epoch: int = 1,
    online_per_step: bool = False,
) -> Callable[[TrainState, dict[str, Any]], tuple[TrainState, dict[str, jax.Array]]]:
    """One SGD step, jitted once: ``(state, batch) -> (state, metrics)``.

    ``batch`` holds ``image`` uint8 NHWC, ``label`` int32, ``weight`` float32 and ``source``
    int32 (0 = real), split over the mesh's batch axes. ``weight`` is the per-example label
    weight (label scaling; the loader sets it for synthetic rows), used by the BCE loss.
    Metrics: ``loss``, ``top1`` (train accuracy against the un-mixed label),
    ``synthetic_share`` and ``lr``, each a replicated scalar.

    ``online(batch, epoch) -> batch``: an optional on-device transform applied before the
    classical augmentation, to the batch with ``image`` in [-1, 1] (e.g. DiffuseMix hybrids
    redrawn per epoch, :class:`augdiff.methods.online.OnlinePairs`); it may replace
    ``image`` and ``weight``, and reads the extra batch fields ``online_keys``. The epoch is
    ``state.step // steps_per_epoch`` (with ``online_per_step``: the global step itself, for a
    transform redrawn every step, :class:`augdiff.methods.online.OnlineFractals`).
    """
    if loss_kind not in losses.LOSSES:
        raise ValueError(f"loss.kind {loss_kind!r} unknown; choose from {losses.LOSSES}")
    augment = dict(augment or {})

    def step_fn(state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(state.rng, state.step)
        x = A.normalize(batch["image"])
        weights = batch["weight"].astype(jnp.float32)
        if online is not None:
            when = state.step if online_per_step else state.step // steps_per_epoch
            out = online({**batch, "image": x}, when)
            x, weights = out["image"], out["weight"].astype(jnp.float32)
        y = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)
        x, y = augment_batch(key, x, y, augment)
        is_syn = (batch["source"] > 0).astype(jnp.float32)

        def loss_fn(params):
            logits, new_vars = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            loss = losses.classification_loss(loss_kind, logits, y, weights)
            return loss, (logits, new_vars["batch_stats"])

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "top1": jnp.mean(losses.topk_correct(logits, batch["label"], 1)),
            "synthetic_share": jnp.mean(is_syn),
            "lr": lr_fn(state.step) if lr_fn is not None else jnp.zeros((), jnp.float32),
        }
        new_state = state.replace(
            params=params, batch_stats=new_stats, opt_state=opt_state, step=state.step + 1
        )
        return new_state, metrics

    st_sh = state_sharding(state, mesh)
    rep = distributed.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(st_sh, _batch_shardings(mesh, TRAIN_KEYS + tuple(online_keys))),
        out_shardings=(st_sh, rep),
        donate_argnums=(0,) if donate else (),
    )


def make_eval_step(
    model: nn.Module, mesh: Mesh, state: TrainState, *, loss_kind: str = "ce", num_classes: int
) -> Callable[[TrainState, dict[str, Any]], dict[str, jax.Array]]:
    """Sums over one padded test batch (``mask`` = 0 on padding rows): ``top1``, ``top5``,
    ``loss``, ``count``, and per class ``class_top1`` / ``class_count`` (length
    ``num_classes``). Jitted once with explicit shardings."""

    def eval_fn(state: TrainState, batch: dict[str, jax.Array]):
        logits = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            A.normalize(batch["image"]),
            train=False,
        )
        m = batch["mask"].astype(jnp.float32)
        y = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)
        per = losses.per_example_loss(loss_kind, logits, y)
        k5 = min(5, num_classes)
        correct = losses.topk_correct(logits, batch["label"], 1) * m
        return {
            "top1": jnp.sum(correct),
            "top5": jnp.sum(losses.topk_correct(logits, batch["label"], k5) * m),
            "loss": jnp.sum(per * m),
            "count": jnp.sum(m),
            "class_top1": jnp.zeros(num_classes, jnp.float32).at[batch["label"]].add(correct),
            "class_count": jnp.zeros(num_classes, jnp.float32).at[batch["label"]].add(m),
        }

    st_sh = state_sharding(state, mesh)
    return jax.jit(
        eval_fn,
        in_shardings=(st_sh, _batch_shardings(mesh, EVAL_KEYS)),
        out_shardings=distributed.replicated(mesh),
    )


# --------------------------------------------------------------------------------------------
# Evaluation over a whole split


def eval_batches(source: Any, batch_size: int, cache: dict | None = None) -> Iterator[dict]:
    """Every row of ``source`` in order, in batches of exactly ``batch_size``; the last batch is
    padded (repeating its last row) with ``mask`` 0 on the padding, never dropped.

    With ``cache`` (a dict), the decoded split is kept in memory after the first pass.
    """
    n = len(source)
    if n == 0:
        raise ValueError("evaluation split is empty")
    if cache is not None and "image" in cache:
        images, labels = cache["image"], cache["label"]
    else:
        images = labels = None
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if images is None:
            recs = [source[i] for i in range(start, stop)]
            img = np.stack([r["image"] for r in recs])
            lab = np.asarray([r["label"] for r in recs], np.int32)
            if cache is not None:
                cache.setdefault("_parts", []).append((img, lab))
        else:
            img, lab = images[start:stop], labels[start:stop]
        batch = {"image": img, "label": lab, "mask": np.ones(stop - start, np.float32)}
        if stop - start < batch_size:
            batch, _ = distributed.pad_to_multiple(batch, batch_size)
            batch["mask"][stop - start:] = 0.0
        yield batch
    if cache is not None and images is None:
        parts = cache.pop("_parts")
        cache["image"] = np.concatenate([p[0] for p in parts])
        cache["label"] = np.concatenate([p[1] for p in parts])


def evaluate(
    eval_step: Callable, state: TrainState, source: Any, batch_size: int, mesh: Mesh,
    cache: dict | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean loss over every example of ``source``, and per class
    (index = label) the top-1 accuracy ``test_class_top1`` and count ``test_class_count``."""
    totals: dict[str, Any] = {}
    for batch in eval_batches(source, batch_size, cache):
        out = eval_step(state, distributed.shard_batch(batch, mesh))
        totals = out if not totals else jax.tree_util.tree_map(jnp.add, totals, out)
    host = jax.device_get(totals)
    per_class = np.asarray(host.pop("class_top1"), np.float64)
    per_count = np.asarray(host.pop("class_count"), np.float64)
    t = {k: float(v) for k, v in host.items()}
    n = max(t["count"], 1.0)
    return {"test_top1": t["top1"] / n, "test_top5": t["top5"] / n, "test_loss": t["loss"] / n,
            "test_count": int(t["count"]),
            "test_class_top1": [float(c / max(k, 1.0)) for c, k in zip(per_class, per_count,
                                                                      strict=True)],
            "test_class_count": [int(k) for k in per_count]}


# --------------------------------------------------------------------------------------------
# The training loop


def _dtype(name: Any) -> Any:
    return jnp.dtype(name) if isinstance(name, str) else name


def _open_data(config: ml_collections.ConfigDict):
    data = config.data
    # Subsets (per_class, imbalance_factor) shape the training split only; the test split is
    # always complete.
    # The pre-scan reads every file before anything compiles and reports every problem at
    # once; unreadable files it found are left out (data.skip_corrupt) and counted.
    train_split, test_split = data.get("train_split", "train"), data.get("test_split", "test")
    scan = prescan(data, [train_split, test_split],
                   progress=bool(config.get("progress", True)) and jax.process_index() == 0)
    if jax.process_index() == 0:
        print("\n".join(scan.lines()), flush=True)
    scan.check()
    real = open_real_source(data, train_split, subset=True, skip=scan.skipped(train_split))
    test = open_real_source(data, test_split, subset=False, skip=scan.skipped(test_split))
    synthetic = None
    syn_cfg = config.get("synthetic", None)
    schedule: Any = 0.0
    if syn_cfg is not None and syn_cfg.get("path", ""):
        synthetic = SyntheticStore(syn_cfg.path)
        if synthetic.num_classes > real.num_classes:
            raise ValueError(
                f"synthetic store {syn_cfg.path} has labels up to {synthetic.num_classes - 1} but "
                f"the real data has only {real.num_classes} classes"
            )
        want = (int(data.image_size), int(data.image_size), int(data.channels))
        got = tuple(synthetic[0]["image"].shape)
        if got != want:
            raise ValueError(
                f"synthetic store {syn_cfg.path} holds {got} images but data.image_size/channels "
                f"ask for {want}"
            )
        schedule = schedules.from_config(syn_cfg.get("schedule", None), epochs=config.epochs)
    label_weight = float(syn_cfg.get("label_weight", 1.0)) if syn_cfg is not None else 1.0
    rho0 = schedule.rho if isinstance(schedule, schedules.Constant) else None
    uses_synthetic = synthetic is not None and rho0 != 0.0
    steps_per_epoch = epoch_steps(
        len(real) if rho0 != 1.0 or synthetic is None else 0,
        len(synthetic) if uses_synthetic else 0,
        int(config.batch_size),
        fixed=int(config.get("steps_per_epoch", 0) or 0),
    )
    loader = MixedLoader(
        real,
        synthetic,
        batch_size=config.batch_size - online_rows(config),  # synthetic.online adds the rest
        schedule=schedule,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        seed=config.seed,
        num_workers=int(data.get("num_workers", 0)),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        synthetic_weight=None if label_weight == 1.0 else label_weight,
    )
    return real, test, synthetic, loader, steps_per_epoch, scan.skipped_images()


def epoch_steps(num_real: int, num_synthetic: int, batch_size: int, *, fixed: int = 0) -> int:
    """Steps in one epoch — the one definition used by ``augdiff train`` and ``augdiff run``.

    An epoch is one pass over the data the run trains on: ``⌊(n_real + n_syn) / B⌋`` steps
    (at least 1), where ``n_real`` counts the real images the run draws from (0 for a
    synthetic-only run, ρ ≡ 1) and ``n_syn`` the synthetic store's records (0 without one).
    For a mixed run that is the union of originals and hybrids, as DiffuseMix trains on the
    concatenation of the two datasets; the schedule ρ(t) (seed 000 eqs. 1-3) sets the share of
    synthetic images inside each batch, not the epoch's length. ``fixed > 0`` (the config's
    ``steps_per_epoch``) overrides it.
    """
    if fixed > 0:
        return int(fixed)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return max(1, (int(num_real) + int(num_synthetic)) // int(batch_size))


OnlineBuilder = Callable[[ml_collections.ConfigDict, Any, Any, Mesh], tuple[Any, Any]]
"""``online(config, real, synthetic, mesh) -> (transform, source)``: the builder a caller of
:func:`train_and_evaluate` hands in (:func:`augdiff.methods.online.build`)."""


def _online_kind(config: ml_collections.ConfigDict) -> str:
    """``config.online.kind`` ('none' without one); an unknown kind is a ``ValueError``."""
    online = config.get("online", None)
    kind = online.get("kind", "none") if online is not None else "none"
    if kind in ("none", ""):
        return "none"
    if kind not in ("diffusemix", "fractal"):
        raise ValueError(f"online.kind {kind!r} unknown; choose none, diffusemix or fractal")
    return kind


def _online_sources(config: ml_collections.ConfigDict, real: Any, synthetic: Any, mesh: Mesh,
                    online: OnlineBuilder | None) -> tuple[Any, Any]:
    """``(transform, generator)`` of the run: the on-device transform ``config.online.kind``
    names and the generator of ``config.synthetic.online``, both built by the caller's
    ``online`` (the trainer knows no method); ``(None, None)`` when neither is asked for."""
    kind = _online_kind(config)
    wanted = (["online.kind"] if kind != "none" else []) + (
        ["synthetic.online.kind"] if online_config(config) is not None else [])
    if not wanted:
        return None, None
    if online is None:
        raise ValueError(f"{' and '.join(wanted)} asks for online rows: pass "
                         "online=augdiff.methods.online.build to train_and_evaluate")
    return online(config, real, synthetic, mesh)


def build_classifier(
    config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int
) -> tuple[nn.Module, Callable[[jax.Array], jax.Array], optax.GradientTransformation,
           tuple[int, int, int]]:
    """``(model, lr_fn, tx, image_shape)`` of a classifier config: what :func:`make_train_step`
    and :func:`create_train_state` are built from (one home for ``augdiff train`` and
    ``augdiff compile``)."""
    model = get_classifier(
        config.model.name,
        num_classes,
        width=int(config.model.width),
        dtype=_dtype(config.model.get("dtype", "float32")),
        stem=config.model.get("stem", None) or None,
    )
    lr_fn = learning_rate_fn(config.optim, steps_per_epoch, int(config.epochs))
    tx = make_optimizer(config.optim, lr_fn)
    image_shape = (int(config.data.image_size),) * 2 + (int(config.data.channels),)
    return model, lr_fn, tx, image_shape


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    *,
    step_hook: Callable[[int, dict[str, Any]], None] | None = None,
    online: OnlineBuilder | None = None,
) -> dict[str, Any]:
    """Train a classifier as ``config`` says and evaluate it on the full test split each epoch
    (every ``eval_every_epochs`` epochs and after the last one when that is set).

    Writes ``workdir/metrics.json`` (``epochs``: per-epoch ``train_loss``, ``train_top1``,
    ``test_top1``, ``test_top5``, ``synthetic_share``, ``lr``; final values at the top level),
    ``workdir/checkpoints`` (orbax; state + loader state + history, each epoch and every
    ``checkpoint_every_steps``), ``workdir/tb`` (TensorBoard) and ``workdir/run.json`` (wall
    times). Restarted on the same workdir it resumes from the latest checkpoint and ends with
    exactly the metrics of an uninterrupted run.

    ``step_hook(step, metrics)`` is called after every step (``step`` counts completed steps);
    tests use it to simulate a crash.

    ``online(config, real, synthetic, mesh) -> (transform, source)`` builds what the config's
    ``online.kind`` (an on-device transform) and ``synthetic.online`` (a generator source)
    ask for; pass :func:`augdiff.methods.online.build`. A config that asks for either without
    ``online`` is a ``ValueError``.
    """
    t_start = time.time()
    workdir = os.path.abspath(config.workdir)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    mesh = distributed.mesh_from_config(config)
    n_shards = distributed.num_batch_shards(mesh)
    if config.batch_size % n_shards:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of the {n_shards} "
                         f"batch shards of the mesh {dict(mesh.shape)}")
    eval_bs = int(config.get("eval_batch_size", 0) or config.batch_size)
    eval_bs = -(-eval_bs // n_shards) * n_shards

    real, test, synthetic, loader, steps_per_epoch, skipped_images = _open_data(config)
    # config.online: a transform on device; synthetic.online: rows made on device.
    transform, generator = _online_sources(config, real, synthetic, mesh, online)
    train_keys = TRAIN_KEYS + (tuple(transform.extra_keys) if transform is not None else ())
    num_classes = int(real.num_classes)
    epochs = int(config.epochs)
    total_steps = epochs * steps_per_epoch

    model, lr_fn, tx, image_shape = build_classifier(config, num_classes, steps_per_epoch)
    state = create_train_state(jax.random.PRNGKey(config.seed), model, tx, image_shape)
    state = jax.device_put(state, state_sharding(state, mesh))

    loss_kind = config.loss.kind
    train_step = make_train_step(
        model, tx, mesh, state,
        num_classes=num_classes,
        loss_kind=loss_kind,
        augment=config.augment.to_dict(),
        lr_fn=lr_fn,
        online=transform.device if transform is not None else None,
        online_keys=train_keys[len(TRAIN_KEYS):],
        steps_per_epoch=steps_per_epoch,
        online_per_step=bool(getattr(transform, "per_step", False)),
    )
    eval_step = make_eval_step(model, mesh, state, loss_kind=loss_kind, num_classes=num_classes)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                        max_to_keep=int(config.get("keep_checkpoints", 2)))
    history: list[dict[str, Any]] = []
    epoch_losses: list[float] = []
    epoch_top1: list[float] = []
    epoch_share: list[float] = []
    start_step = 0
    latest = ckpt.latest_step()
    if latest is not None:
        state, extras = ckpt.restore(latest, like=state)
        loader.set_state(extras["loader"])
        history = extras["history"]
        epoch_losses = [float(v) for v in extras["epoch_losses"]]
        epoch_top1 = [float(v) for v in extras["epoch_top1"]]
        epoch_share = [float(v) for v in extras["epoch_share"]]
        start_step = int(latest)
        if is_main:
            print(f"augdiff train: resuming from step {start_step} ({ckpt.directory})", flush=True)
            changed = [k for k in config_diff(extras.get("config", {}), to_dict(config))
                       if k not in ("progress", "workdir")]
            if changed:
                print(f"augdiff train: warning: config differs from the checkpointed run in "
                      f"{', '.join(changed)}; the resumed run will not match an uninterrupted one",
                      flush=True)

    from tensorboardX import SummaryWriter
    from tqdm.auto import tqdm

    tb = SummaryWriter(os.path.join(workdir, "tb")) if is_main else None
    meta = {"num_params": param_count(state.params), "num_classes": num_classes,
            "steps_per_epoch": steps_per_epoch, "train_examples": len(real),
            "test_examples": len(test),
            "synthetic_examples": len(synthetic) if synthetic is not None else 0,
            "skipped_images": skipped_images}
    eval_cache: dict | None = {} if config.get("eval_cache", True) else None
    pending: list[tuple[int, dict[str, jax.Array]]] = []  # device metrics not yet fetched
    last_good = latest

    def flush_pending() -> None:
        """Fetch buffered step metrics; stop on the first non-finite loss."""
        for s, m in jax.device_get(pending):
            loss = float(m["loss"])
            if not math.isfinite(loss):
                where = (f"checkpoint step {last_good} in {ckpt.directory}" if last_good is not None
                         else "none (no checkpoint saved yet)")
                raise NonFiniteLossError(
                    f"non-finite training loss {loss} at step {s}; last good checkpoint: {where}"
                )
            epoch_losses.append(loss)
            epoch_top1.append(float(m["top1"]))
            epoch_share.append(float(m["synthetic_share"]))
            if tb is not None and s % int(config.get("log_every_steps", 50)) == 0:
                tb.add_scalar("train/loss_step", loss, s)
                tb.add_scalar("train/lr", float(m["lr"]), s)
        pending.clear()

    def save(step: int) -> None:
        nonlocal last_good
        extras = {"loader": loader.get_state(), "history": history,
                  "epoch_losses": epoch_losses, "epoch_top1": epoch_top1,
                  "epoch_share": epoch_share, "meta": meta, "config": to_dict(config)}
        if generator is not None:  # spilled rows up to here are on disk before the checkpoint
            generator.flush_spill()  # that covers them (re-spilled keys are de-duplicated)
        ckpt.save(step, state, extras)
        last_good = step

    def summary() -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": history, **meta}
        if history:
            out.update({k: v for k, v in history[-1].items() if k != "epoch"})
        return out

    ckpt_every = int(config.get("checkpoint_every_steps", 0) or 0)
    bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
               disable=not is_main or not config.get("progress", True), dynamic_ncols=True)
    it = iter(loader)
    t_train = time.time()
    eval_s = 0.0  # test-split evaluation inside the loop (run.json: eval_s)
    finished = False
    try:
        for step in range(start_step, total_steps):
            host_batch = next(it)
            if transform is not None:
                host_batch = transform.host(host_batch)
            batch = distributed.host_local_to_global(
                {k: np.asarray(host_batch[k]) for k in train_keys}, mesh
            )
            if generator is not None:
                batch = generator.complete(batch, step)
            state, metrics = train_step(state, batch)
            done = step + 1
            pending.append((done, metrics))
            if step_hook is not None:
                step_hook(done, metrics)
            end_of_epoch = done % steps_per_epoch == 0
            if end_of_epoch or (ckpt_every and done % ckpt_every == 0) or len(pending) >= 50:
                flush_pending()
                bar.set_postfix(loss=f"{np.mean(epoch_losses[-20:]):.3f}")
            bar.update(1)
            if end_of_epoch:
                epoch = done // steps_per_epoch
                # ``eval_every_epochs`` (default 1): test-split evaluation every N epochs and
                # always after the last one (0 = the last one only); the other epochs' rows
                # carry the training figures alone.
                every = int(config.get("eval_every_epochs", 1) or 0)
                evaluated = epoch == epochs or (every > 0 and epoch % every == 0)
                t_eval = time.time()
                ev = (evaluate(eval_step, state, test, eval_bs, mesh, eval_cache)
                      if evaluated else {})
                eval_s += time.time() - t_eval
                row = {
                    "epoch": epoch,
                    "step": done,
                    "train_loss": float(np.mean(epoch_losses)),
                    "train_top1": float(np.mean(epoch_top1)),
                    "synthetic_share": float(np.mean(epoch_share)),
                    "lr": float(lr_fn(done - 1)),
                    **ev,
                }
                history.append(row)
                epoch_losses, epoch_top1, epoch_share = [], [], []
                if tb is not None:
                    for k, v in row.items():
                        if k not in ("epoch", "step") and not isinstance(v, list):
                            tb.add_scalar(f"epoch/{k}", v, epoch)
                    tb.flush()
                if is_main:
                    write_json(os.path.join(workdir, "metrics.json"), summary())
                    bar.write(f"epoch {epoch}/{epochs}: train_loss {row['train_loss']:.4f}"
                              + (f" test_top1 {row['test_top1']:.4f} test_top5 "
                                 f"{row['test_top5']:.4f}" if evaluated else ""))
                save(done)
            elif ckpt_every and done % ckpt_every == 0:
                save(done)
        flush_pending()
        finished = True
    finally:
        bar.close()
        ckpt.close()
        if generator is not None:  # a failed run keeps only what its checkpoints committed
            generator.close(commit=finished)
        if tb is not None:
            tb.close()
        close = getattr(loader, "close", None)
        if close is not None:
            close()
    result = summary()
    if is_main:
        write_json(os.path.join(workdir, "metrics.json"), result)
        loop_s = time.time() - t_train
        write_json(os.path.join(workdir, "run.json"), {
            "wall_time_s": time.time() - t_start,
            "train_loop_s": loop_s,
            "eval_s": eval_s,  # inside train_loop_s; the steps took train_loop_s - eval_s
            "resumed_from_step": start_step,
            "devices": distributed.describe(mesh),
            **({"generator_s": generator.generator_s, "generator_refreshes": generator.refreshes,
                "generated_images": generator.refreshes * generator.buffer_size,
                "generator_share": generator.generator_s / max(loop_s - eval_s, 1e-9)}
               if generator is not None else {}),
        })
    return result
