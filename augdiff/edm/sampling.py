"""Sample a trained EDM model into a synthetic store (``augdiff sample``).

``sample_to_store(config)`` loads the latest checkpoint of ``config.workdir`` (EMA
parameters), checks that it was trained with the same model / EDM fields as ``config``,
and draws ``config.num_samples`` images with the configured sampler (Heun, 18 steps for
CIFAR-10 → NFE 35, EDM Algorithm 1 = seed 004 Algorithm 2) into a :class:`StoreWriter`.

Labels: in ``casd`` mode the source label ``y = sample.source_label`` (0 = real) is fixed for
every example (seed 004 §3); a class-conditional model gets class ``c_i`` spread evenly over
the classes it was trained on (example ``i`` → the ``i mod K``-th of them). Optional guidance
between labels uses :func:`augdiff.edm.samplers.guided_denoiser` with
``D_w = D(x; σ, y_neg) + w·(D(x; σ, y) − D(x; σ, y_neg))`` (``w = 1``: no guidance).

Reproducibility: example ``i`` starts from ``x_T = σ_max · n_i`` with
``n_i ~ N(0, I)`` drawn from ``fold_in(PRNGKey(sample.seed), i)`` (the stochastic sampler's
churn noise also comes from that key), so the bytes of an example do not depend on the batch
it landed in, the device count or a resume. Store keys are ``f"{i:08d}"``; completed keys are
skipped. In a multi-process run each process samples and writes its own contiguous slice of
examples (:func:`augdiff.distributed.process_slice`) into its own shards.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from augdiff import distributed
from augdiff.config import ConfigError
from augdiff.data.pixels import edm_to_uint8
from augdiff.data.store import StoreWriter, SyntheticStore, model_identity
from augdiff.edm import model as edm_model
from augdiff.edm import samplers
from augdiff.edm.core import denoise, sigma_schedule
from augdiff.edm.model import checkpoint_extras  # noqa: F401  (re-exported for callers)
from augdiff.edm.samplers import nfe


def example_labels(indices: np.ndarray, classes: list[int], *, class_conditional: bool,
                   class_label: int = -1) -> np.ndarray:
    """Class label of examples ``indices``.

    Class-conditional: the ``i mod K``-th of the ``K`` trained classes (spread evenly).
    Otherwise every example gets ``class_label``; ``-1`` means the trained class when the
    model saw a single class (a per-class generator, seed 004 §4.3), else 0.
    """
    indices = np.asarray(indices)
    if class_conditional:
        if not classes:
            raise ConfigError("class-conditional checkpoint lists no trained classes")
        return np.asarray(classes, np.int32)[indices % len(classes)]
    if class_label < 0:
        class_label = classes[0] if len(classes) == 1 else 0
    return np.full(indices.shape, class_label, np.int32)


def make_sample_fn(net_apply: Callable[..., jax.Array], edm_cfg: Any, *, mode: str,
                   image_shape: tuple[int, ...], num_sources: int, num_classes: int,
                   class_conditional: bool, sampler: str = "heun", num_steps: int = 18,
                   source_label: int = 0, guidance: float = 1.0, guidance_label: int = 1,
                   churn: dict[str, float] | None = None) -> Callable[..., jax.Array]:
    """``fn(params, key, indices[B], classes[B]) -> images[B, H, W, C]`` in [-1, 1].

    Example ``i`` draws its starting noise (and stochastic-sampler churn) from
    ``fold_in(key, i)``; the whole loop runs inside the caller's ``jax.jit``. With guidance the
    condition ``y`` is guided away from ``guidance_label`` (the source label in casd, else the
    class label) by ``D_w = D(y_neg) + w·(D(y) − D(y_neg))``.
    """
    if sampler not in samplers.SAMPLERS:
        raise ConfigError(f"sample.sampler must be one of {samplers.SAMPLERS}, got {sampler!r}")
    if mode == "casd" and not 0 <= source_label < num_sources:
        raise ConfigError(f"sample.source_label={source_label} is not a source id of a model "
                          f"with {num_sources} sources")
    use_guidance = float(guidance) != 1.0
    if use_guidance and mode != "casd" and not class_conditional:
        raise ConfigError("sample.guidance needs a conditional model (casd or class-conditional)")
    sigmas = sigma_schedule(int(num_steps), edm_cfg.sigma_min, edm_cfg.sigma_max, edm_cfg.rho)
    churn = dict(churn or {})

    def labels_of(classes: jax.Array, source: jax.Array | int) -> dict[str, jax.Array] | None:
        b = classes.shape[0]
        labels: dict[str, jax.Array] = {}
        if mode == "casd":
            src = jnp.broadcast_to(jnp.asarray(source, jnp.int32), (b,))
            labels["source"] = src
        if class_conditional:
            labels["class"] = classes.astype(jnp.int32)
        return labels or None

    def one(params: Any, key: jax.Array, cls: jax.Array) -> jax.Array:
        """One example (batch of 1); vmapped over the batch below."""
        cls = cls[None]
        x_T = jax.random.normal(key, (1,) + tuple(image_shape), jnp.float32) * sigmas[0]

        def den(x, sigma, labels):
            return denoise(net_apply, params, x, sigma, labels, train=False,
                           sigma_data=edm_cfg.sigma_data)

        if use_guidance:
            cond = "source" if mode == "casd" else "class"
            neg_src = guidance_label if mode == "casd" else source_label
            neg_cls = jnp.full_like(cls, guidance_label) if mode != "casd" else cls
            pos, neg = labels_of(cls, source_label), labels_of(neg_cls, neg_src)

            def den_stacked(x, sigma, lab):
                both = dict(pos)
                both[cond] = lab
                other = "class" if cond == "source" else "source"
                if other in both:
                    both[other] = jnp.concatenate([both[other], both[other]], 0)
                return den(x, sigma, both)

            denoiser = samplers.guided_denoiser(den_stacked, pos[cond], neg[cond], guidance)
        else:
            labels = labels_of(cls, source_label)
            denoiser = lambda x, s: den(x, s, labels)  # noqa: E731
        if sampler == "heun":
            return samplers.heun_sampler(denoiser, x_T, sigmas)[0]
        if sampler == "euler":
            return samplers.euler_sampler(denoiser, x_T, sigmas)[0]
        return samplers.stochastic_sampler(jax.random.fold_in(key, 1), denoiser, x_T, sigmas,
                                           **churn)[0]

    def fn(params: Any, key: jax.Array, indices: jax.Array, classes: jax.Array) -> jax.Array:
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
        return jax.vmap(lambda k, c: one(params, k, c))(keys, classes)

    return fn


def jit_sampler(sample_fn: Callable[..., jax.Array], mesh: Any) -> Callable[..., jax.Array]:
    """``sample_fn`` (:func:`make_sample_fn`) jitted once for ``mesh``: parameters and key
    replicated, the example indices and classes (and so the images) split over the batch axes.
    Every example is independent, so the compiled loop holds no collective."""
    rep = distributed.replicated(mesh)
    batch_sh = distributed.batch_sharding(mesh)
    return jax.jit(sample_fn, in_shardings=(rep, rep, batch_sh, batch_sh),
                   out_shardings=batch_sh)


def save_grid(images: np.ndarray, path: str, *, min_px: int = 64, pad: int = 2) -> None:
    """Write uint8 images [N, H, W, C] as one PNG grid (⌈√N⌉ columns), each image enlarged by
    an integer factor (nearest neighbour: every pixel a ``k × k`` block) to at least
    ``min_px`` pixels a side, with ``pad`` white pixels between and around them."""
    n, h, w, c = images.shape
    k = max(1, -(-int(min_px) // max(h, 1)))
    cols = max(int(math.ceil(math.sqrt(n))), 1)
    rows = max(int(math.ceil(n / cols)), 1)
    th, tw = k * h, k * w
    grid = np.full((rows * (th + pad) + pad, cols * (tw + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + q * (tw + pad)
        grid[y:y + th, x:x + tw] = np.repeat(np.repeat(images[i], k, axis=0), k, axis=1)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)


def _global_max(n: int) -> int:
    if jax.process_count() == 1:
        return n
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray([n], np.int64))))


def sample_to_store(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Sample ``config.num_samples`` images from the latest checkpoint into ``sample.store``.

    Returns a summary: ``store``, ``checkpoint_step``, ``written`` (this call, this process),
    ``skipped`` (already in the store). Errors name a missing checkpoint or the config fields
    that differ from the checkpoint's.
    """
    workdir = str(config.workdir)
    if not workdir:
        raise ConfigError("config.workdir must be set (--config.workdir=DIR)")
    n_total = int(config.num_samples)
    if n_total <= 0:
        raise ConfigError(f"num_samples must be positive, got {n_total}")
    s = config.sample
    size, ch = int(config.data.image_size), int(config.data.channels)
    mesh = distributed.mesh_from_config(config)
    rep = distributed.replicated(mesh)
    loaded = edm_model.load_model(config, sharding=rep)
    step, ckpt_path, params = loaded.step, loaded.path, loaded.params
    num_classes, classes = loaded.num_classes, loaded.classes
    class_conditional = bool(config.model.class_conditional)

    sample_fn = make_sample_fn(
        edm_model.make_net_apply(loaded.model), edm_model.edm_config(config),
        mode=str(config.mode), image_shape=(size, size, ch),
        num_sources=int(config.model.num_sources), num_classes=num_classes,
        class_conditional=class_conditional, sampler=str(s.sampler),
        num_steps=int(s.num_steps), source_label=int(s.source_label),
        guidance=float(s.guidance), guidance_label=int(s.guidance_label),
        churn=dict(S_churn=float(s.S_churn), S_min=float(s.S_min), S_max=float(s.S_max),
                   S_noise=float(s.S_noise)))
    draw = jit_sampler(sample_fn, mesh)
    key = jax.device_put(jax.random.PRNGKey(int(s.seed)), rep)

    store = str(s.store) or os.path.join(workdir, "store")
    mine = distributed.process_slice(n_total)
    local_dev = jax.local_device_count()
    local_bs = -(-max(int(s.batch_size) // jax.process_count(), 1) // local_dev) * local_dev
    model_id = model_identity(ckpt_path, kind="edm", step=int(step))
    provenance_base = {
        "model": f"edm:{ckpt_path}@{int(step)}",
        "checkpoint": ckpt_path, "checkpoint_step": int(step), "mode": str(config.mode),
        "sampler": str(s.sampler), "steps": int(s.num_steps),
        "nfe": nfe(str(s.sampler), int(s.num_steps)), "seed": int(s.seed),
        "guidance": float(s.guidance),
        "guidance_label": int(s.guidance_label) if float(s.guidance) != 1.0 else None,
    }
    written = 0
    generating = {"image_size": size, "channels": ch, "class_label": int(s.class_label),
                  "source_label": int(s.source_label), "churn": {
                      k: float(s[k]) for k in ("S_churn", "S_min", "S_max", "S_noise")}}
    with StoreWriter(store, method=f"edm/{config.mode}",
                     config={"workdir": workdir, **provenance_base, **generating},
                     model=model_id, class_names=list(loaded.extras.get("class_names") or []),
                     unfingerprinted=("workdir", "checkpoint"),
                     shard_size=int(s.shard_size)) as writer:
        done = writer.completed_keys
        pending = np.asarray([i for i in range(mine.start, mine.stop) if f"{i:08d}" not in done],
                             np.int64)
        skipped = (mine.stop - mine.start) - len(pending)
        rounds = _global_max(-(-len(pending) // local_bs))
        bar = tqdm(total=len(pending), desc="sample", disable=jax.process_index() != 0)
        for r in range(rounds):
            idx = pending[r * local_bs:(r + 1) * local_bs]
            n = len(idx)
            rows = idx if n else np.zeros((1,), np.int64)
            host = {"i": rows.astype(np.int32),
                    "c": example_labels(rows, classes, class_conditional=class_conditional,
                                        class_label=int(s.class_label))}
            host, _ = distributed.pad_to_multiple(host, local_bs)
            glob = distributed.host_local_to_global(host, mesh)
            images = distributed.global_to_host_local(
                draw(params, key, glob["i"], glob["c"]), mesh)
            images = edm_to_uint8(images[:n])
            for j in range(n):
                i, c = int(idx[j]), int(host["c"][j])
                prov = dict(provenance_base, example=i,
                            label=int(s.source_label) if config.mode == "casd" else c)
                writer.add(f"{i:08d}", images[j], c, source=1, provenance=prov)
            written += n
            bar.update(n)
        bar.close()
    if jax.process_index() == 0 and int(s.grid) > 0:
        syn = SyntheticStore(store)
        k = min(int(s.grid), len(syn))
        if k:
            save_grid(np.stack([np.asarray(syn[i]["image"]) for i in range(k)]),
                      os.path.join(os.path.dirname(os.path.abspath(store)),
                                   "samples_grid.png"))
    return {"store": store, "checkpoint_step": int(step), "written": written,
            "skipped": int(skipped)}
