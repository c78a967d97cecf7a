"""Diffusion Inversion (Zhou, Sahak & Ba 2023, "Training on Thin Air").

Reference code: yongchaoz/diffusion_inversion.

**Stage 1 — learn one conditioning tensor per real image.** For image ``x`` with (scaled) VAE
latent ``z₀ = E(resize(x))``, computed once at the generation resolution (128² → 16² latents for
SD-1.x), the conditioning ``c ∈ ℝ^{n_tokens × d_text}`` (e.g. 5 × 768) that replaces the text
encoder's output is the minimiser of the frozen model's denoising loss (LDM eq. 2; Gal et al.
2023, Textual Inversion, eq. 2, here on the whole conditioning tensor)::

    L(c) = E_{t ~ U{0..T−1}, ε ~ N(0, I)} ‖ ε − ε_θ(√ᾱ_t z₀ + √(1 − ᾱ_t) ε, t, c) ‖²,

estimated with one (t, ε) per image per step and minimised by AdamW (constant lr 0.03, up to
3K steps; checkpoints at 1K/2K/3K). Many images are optimised at once: the objective of a batch
is the **sum** of the per-image losses, so each vector's gradient, AdamW state and randomness
(``fold_in(fold_in(key, image_id), step)``) are its own and inverting B images together equals
B separate inversions. The batch of vectors is sharded over the mesh, the UNet replicated; each
process inverts its own groups of images; groups are checkpointed with orbax and resumed.

**Initialisation.** ``torch_linear`` (default, the original code): the code holds a group's
vectors as the weight of a bias-free ``nn.Linear(num_emb, tokens·d)`` fed one-hot ids, so they
start from PyTorch's default init ``U(−1/√num_emb, 1/√num_emb)`` (kaiming-uniform with a = √5),
±0.1 for its groups of 100 (``init_fan_in``). ``empty`` (the first rows of the encoded empty
prompt), ``class_prompt`` and ``random`` (N(0, 1)) are options. The scale matters: it sets the
vectors' size relative to λ = 0.1 and to the mean unconditional.

Stage 2 (sampling from the learned vectors) and the ``augdiff generate`` command of the method
are :mod:`augdiff.methods.diffinv`; this module learns the vectors and keeps them on disk
(``<workdir>/inversion/``).
"""

from __future__ import annotations

import functools
import glob
import io
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from augdiff import distributed
from augdiff.data.pixels import to_signed_rgb
from augdiff.files import atomic_write
from augdiff.sd import loading, pipelines, schedulers
from augdiff.train.checkpoint import Checkpointer

Array = jax.Array

INITS = ("torch_linear", "empty", "class_prompt", "random")


# ----------------------------------------------------------------------------- stage 1


def denoising_loss(
    components: loading.SDComponents,
    params: dict,
    cond: Array,
    latents: Array,
    t: Array,
    noise: Array,
) -> Array:
    """Per-image ``‖ε − ε_θ(√ᾱ_t z₀ + √(1−ᾱ_t) ε, t, c)‖²`` (mean over latent elements), ``[B]``.

    ``latents`` are scaled NCHW VAE latents ``z₀``; ``t`` [B] integer timesteps; ``noise`` ε.
    v-prediction models are compared in ε-space (:func:`augdiff.sd.pipelines.eps_prediction`).
    """
    schedule = schedulers.NoiseSchedule.from_diffusers_config(components.scheduler_config)
    abar = jnp.asarray(schedule.alphas_cumprod, jnp.float32)[t].reshape(-1, 1, 1, 1)
    x_t = jnp.sqrt(abar) * latents + jnp.sqrt(1.0 - abar) * noise  # DDPM eq. 4
    eps = pipelines.eps_prediction(components, params, x_t, t, cond)
    return jnp.mean((eps.astype(jnp.float32) - noise) ** 2, axis=(1, 2, 3))


def step_draws(
    image_keys: Array, step: Array, latent_shape: Sequence[int], num_train_timesteps: int
) -> tuple[Array, Array]:
    """(t, ε) of every image at ``step``: from ``fold_in(image_key, step)`` (sub-streams 0, 1)."""

    def one(k: Array) -> tuple[Array, Array]:
        ks = jax.random.fold_in(k, step)
        t = jax.random.randint(jax.random.fold_in(ks, 0), (), 0, num_train_timesteps)
        eps = jax.random.normal(jax.random.fold_in(ks, 1), tuple(latent_shape), jnp.float32)
        return t, eps

    return jax.vmap(one)(image_keys)


def make_optimizer(
    learning_rate: float = 0.03, weight_decay: float = 1e-2
) -> optax.GradientTransformation:
    """AdamW with a constant learning rate (the paper's 0.03)."""
    return optax.adamw(learning_rate=float(learning_rate), weight_decay=float(weight_decay))


def optimise_rows(per_row_loss: Callable[[Array, Array], Array],
                  optimizer: optax.GradientTransformation, vectors: Array, opt_state: Any,
                  start: Array | int, stop: Array | int) -> tuple[Array, Any, Array]:
    """Optimiser steps ``[start, stop)`` on the **sum** of ``per_row_loss(vectors, step)``
    ([rows] losses) in one ``lax.fori_loop``: each row's gradient and optimiser moments are
    its own, so optimising rows together equals optimising them one by one. Returns
    (vectors, opt_state, the per-row loss of the last step). Traced inside the caller's jit."""

    def total(v, step):
        per_row = per_row_loss(v, step)
        return jnp.sum(per_row), per_row

    def body(step, carry):
        v, state, _ = carry
        (_, per_row), grads = jax.value_and_grad(total, has_aux=True)(v, step)
        updates, state = optimizer.update(grads, state, v)
        return optax.apply_updates(v, updates), state, per_row

    init = (vectors, opt_state, jnp.zeros(vectors.shape[0], jnp.float32))
    return jax.lax.fori_loop(start, stop, body, init)


@functools.lru_cache(maxsize=16)
def _train_fn(
    components: loading.SDComponents,
    learning_rate: float,
    weight_decay: float,
    mesh: Mesh | None,
) -> Callable[..., Any]:
    """``run(params, cond, opt_state, latents, image_keys, start, stop)``: steps [start, stop)
    as one ``lax.fori_loop`` inside one jit; returns (cond, opt_state, per-image loss of the
    last step). With a mesh, rows are sharded over it and the shardings are explicit."""
    optimizer = make_optimizer(learning_rate, weight_decay)
    num_train = schedulers.NoiseSchedule.from_diffusers_config(
        components.scheduler_config
    ).num_train_timesteps

    def run(params, cond, opt_state, latents, image_keys, start, stop):
        def per_image_loss(c, step):
            t, eps = step_draws(image_keys, step, latents.shape[1:], num_train)
            return denoising_loss(components, params, c, latents, t, eps)

        return optimise_rows(per_image_loss, optimizer, cond, opt_state, start, stop)

    if mesh is None:
        return jax.jit(run)
    rows, rep = distributed.batch_sharding(mesh), distributed.replicated(mesh)
    opt_sh = _opt_state_sharding(optimizer, mesh)
    return jax.jit(
        run,
        in_shardings=(rep, rows, opt_sh, rows, rows, None, None),
        out_shardings=(rows, opt_sh, rows),
        donate_argnums=(1, 2),
    )


def _opt_state_sharding(optimizer: optax.GradientTransformation, mesh: Mesh) -> Any:
    """Row sharding for AdamW's per-vector moments (rank 3), replicated scalars (the count)."""
    abstract = jax.eval_shape(optimizer.init, jax.ShapeDtypeStruct((1, 1, 1), jnp.float32))
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, P(distributed.DATA_AXES) if x.ndim == 3 else P()), abstract
    )


def initial_vectors(
    components: loading.SDComponents,
    params: dict,
    labels: Sequence[int],
    *,
    num_tokens: int,
    init: str = "torch_linear",
    class_prompts: Sequence[str] | None = None,
    key: Array | None = None,
    image_ids: Sequence[int] | None = None,
    init_fan_in: int = 100,
) -> np.ndarray:
    """Starting conditioning ``[B, num_tokens, d]`` of every image.

    ``torch_linear`` (the original code): ``U(−b, b)`` with ``b = 1/√init_fan_in``, PyTorch's
    default ``nn.Linear(init_fan_in, ·)`` weight init (the code's group size, 100 → ±0.1); row
    ``r`` drawn from ``fold_in(key, image_ids[r])``. ``empty``: the first ``num_tokens`` rows of
    the encoded empty prompt (same for all); ``class_prompt``: those of the image's class
    prompt; ``random``: N(0, 1), also from ``fold_in(key, image_id)``.
    """
    n, d = len(labels), int(components.unet.cross_attention_dim)
    if not 1 <= num_tokens <= components.max_length:
        raise ValueError(f"diffinv: num_tokens must be in [1, {components.max_length}]")
    if init in ("torch_linear", "random"):
        if key is None:
            raise ValueError(f"diffinv: init={init!r} needs a key")
        if init == "torch_linear" and int(init_fan_in) < 1:
            raise ValueError(f"diffinv: init_fan_in must be >= 1, got {init_fan_in}")
        ids = np.arange(n) if image_ids is None else np.asarray(image_ids, np.int64)
        if len(ids) != n:
            raise ValueError(f"diffinv: {len(ids)} image ids for {n} labels")
        bound = 1.0 / np.sqrt(float(init_fan_in))

        def one(i: Array) -> Array:
            k = jax.random.fold_in(key, i)
            if init == "random":
                return jax.random.normal(k, (num_tokens, d))
            return jax.random.uniform(k, (num_tokens, d), minval=-bound, maxval=bound)

        return np.asarray(jax.vmap(one)(jnp.asarray(ids, jnp.uint32)), np.float32)
    if init == "empty":
        e = np.asarray(pipelines.encode_prompts(components, params, [""]))[0, :num_tokens]
        return np.broadcast_to(e, (n, num_tokens, d)).astype(np.float32).copy()
    if init == "class_prompt":
        if class_prompts is None:
            raise ValueError("diffinv: init='class_prompt' needs class_prompts")
        e = np.asarray(pipelines.encode_prompts(components, params, list(class_prompts)))
        return e[np.asarray(labels, np.int64), :num_tokens].astype(np.float32)
    raise ValueError(f"diffinv: init must be one of {INITS}, got {init!r}")


def _to_host(tree: Any) -> Any:
    """Host (numpy) copies: a group's checkpoint belongs to one process, and orbax does not
    serialise process-local device arrays in a multi-process run."""
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def _place_rows(x: Any, mesh: Mesh | None) -> Any:
    return x if mesh is None else jax.device_put(x, distributed.batch_sharding(mesh))


def invert(
    components: loading.SDComponents,
    params: dict,
    latents: Array,
    image_keys: Array,
    init_cond: Array,
    *,
    num_steps: int,
    learning_rate: float = 0.03,
    weight_decay: float = 1e-2,
    mesh: Mesh | None = None,
    checkpoint_dir: str | None = None,
    save_steps: Sequence[int] = (),
    chunk: int = 50,
    image_ids: Sequence[int] | None = None,
    callback: Callable[[int, np.ndarray], None] | None = None,
    progress: bool = True,
    snapshots: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """Stage 1 on one batch of images: learn ``cond`` [B, tokens, d] from ``init_cond``.

    Args:
      latents: scaled NCHW latents ``z₀`` [B, C, h, w] of the images (encode them once with
        :func:`augdiff.sd.pipelines.encode_images_to_latents`).
      image_keys: one key per image; step s of image i uses ``fold_in(image_keys[i], s)``.
      num_steps: total optimisation steps.
      mesh: rows padded to and sharded over its devices; None = default device.
      checkpoint_dir: orbax checkpoints at ``save_steps`` and ``num_steps``; an existing
        checkpoint is resumed from (its image ids must match ``image_ids``).
      chunk: steps per jitted call (progress / callback granularity).
      callback: ``callback(step, per_image_loss)`` after every chunk (may raise to stop).
      snapshots: if given, filled with ``{save step: vectors [B, tokens, d]}`` for every save
        step (those of earlier runs restored from their checkpoints): stage 2 samples from
        several checkpoints (1K/2K/3K).

    Returns:
      (learned vectors [B, tokens, d] as numpy, [(step, mean loss of that step)] of this run).
    """
    from tqdm import tqdm

    cond = jnp.asarray(init_cond, jnp.float32)
    latents = jnp.asarray(latents, jnp.float32)
    image_keys = jnp.asarray(image_keys)
    b = int(cond.shape[0])
    if latents.shape[0] != b or image_keys.shape[0] != b:
        raise ValueError(
            f"diffinv: {b} vectors, {latents.shape[0]} latents, {image_keys.shape[0]} keys"
        )
    if cond.ndim != 3 or cond.shape[-1] != components.unet.cross_attention_dim:
        raise ValueError(
            f"diffinv: cond must be [B, tokens, {components.unet.cross_attention_dim}], "
            f"got {cond.shape}"
        )
    if num_steps < 0:
        raise ValueError(f"diffinv: num_steps must be >= 0, got {num_steps}")
    ids = [int(i) for i in (image_ids if image_ids is not None else range(b))]
    n = b
    if mesh is not None:
        (cond, latents, image_keys), n = distributed.pad_to_multiple(
            (cond, latents, image_keys), distributed.num_batch_shards(mesh)
        )
        params = pipelines.place_params(params, mesh)
    cond, latents, image_keys = (_place_rows(x, mesh) for x in (cond, latents, image_keys))
    optimizer = make_optimizer(learning_rate, weight_decay)
    opt_state = optimizer.init(cond)
    if mesh is not None:
        opt_state = jax.device_put(opt_state, _opt_state_sharding(optimizer, mesh))
    run = _train_fn(components, float(learning_rate), float(weight_decay), mesh)

    saves = sorted({int(s) for s in save_steps if 0 < int(s) <= num_steps} | {int(num_steps)})
    saves = [s for s in saves if s > 0]
    step = 0
    ckpt = (
        Checkpointer(checkpoint_dir, max_to_keep=None, process_local=True)
        if checkpoint_dir
        else None
    )
    history: list[tuple[int, float]] = []
    try:
        if ckpt is not None:
            done = [s for s in ckpt.all_steps() if s <= num_steps]
            if done:
                step = max(done)
                host_like = _to_host({"cond": cond, "opt_state": opt_state})
                state, extras = ckpt.restore(step, like=host_like)
                if [int(i) for i in extras.get("image_ids", [])] != ids:
                    raise ValueError(
                        f"diffinv: checkpoint {checkpoint_dir} holds other images "
                        f"({extras.get('image_ids', [])[:4]}...) than this group ({ids[:4]}...)"
                    )
                cond = _place_rows(jnp.asarray(state["cond"]), mesh)
                opt_state = jax.tree_util.tree_map(jnp.asarray, state["opt_state"])
                if mesh is not None:
                    opt_state = jax.device_put(opt_state, _opt_state_sharding(optimizer, mesh))
                if snapshots is not None:
                    for s_done in saves:
                        if s_done < step and s_done in done:
                            old, _ = ckpt.restore(s_done, like=host_like)
                            snapshots[s_done] = np.asarray(old["cond"])[:n]
            if snapshots is not None and step in saves:
                snapshots[step] = np.asarray(cond)[:n]
        bar = tqdm(total=num_steps, initial=step, desc="diffinv stage 1", disable=not progress)
        while step < num_steps:
            stop = min(step + max(int(chunk), 1), min(s for s in saves if s > step))
            with distributed.mesh_context(mesh):  # per-shard kernels (TPU attention)
                cond, opt_state, per_image = run(
                    params, cond, opt_state, latents, image_keys, step, stop
                )
            step = stop
            loss = np.asarray(per_image)[:n]
            history.append((step, float(loss.mean())))
            bar.update(stop - bar.n)
            bar.set_postfix(loss=f"{loss.mean():.4f}")
            if snapshots is not None and step in saves:
                snapshots[step] = np.asarray(cond)[:n]
            if ckpt is not None and step in saves:
                ckpt.save(
                    step,
                    _to_host({"cond": cond, "opt_state": opt_state}),
                    {"image_ids": ids, "step": step, "loss": float(loss.mean())},
                )
            if callback is not None:
                callback(step, loss)
        bar.close()
    finally:
        if ckpt is not None:
            ckpt.close()
    return np.asarray(cond)[:n], history


@functools.partial(jax.jit, static_argnames=("components",))
def _eval_losses(components, params, cond, latents, t, noise):
    return denoising_loss(components, params, cond, latents, t, noise)


def evaluation_loss(
    components: loading.SDComponents,
    params: dict,
    cond: Array,
    latents: Array,
    key: Array,
    num_draws: int = 32,
) -> np.ndarray:
    """Monte-Carlo estimate of L(c) for each (vector, latent) row with ``num_draws`` shared
    (t, ε) draws from ``key`` (common random numbers, so rows are compared on equal terms)."""
    cond, latents = jnp.asarray(cond), jnp.asarray(latents)
    num_train = schedulers.NoiseSchedule.from_diffusers_config(
        components.scheduler_config
    ).num_train_timesteps
    kt, ke = jax.random.split(key)
    ts = jax.random.randint(kt, (num_draws,), 0, num_train)
    eps = jax.random.normal(ke, (num_draws, *latents.shape[1:]))
    total = np.zeros(cond.shape[0])
    for j in range(num_draws):
        t = jnp.full((cond.shape[0],), ts[j])
        noise = jnp.broadcast_to(eps[j], latents.shape)
        total += np.asarray(_eval_losses(components, params, cond, latents, t, noise))
    return total / num_draws




@functools.partial(jax.jit, static_argnames=("components", "sampler", "start"))
def _reconstruct(components, sampler, start, params, latents, cond, noise):
    def model_fn(x_in, t, i):
        del i
        return pipelines.unet_output(components, params, x_in, t, cond)

    x = sampler.add_noise(latents, noise, start)
    return schedulers.denoise_loop(model_fn, sampler, x, None, start_index=start)


def reconstruct_latents(
    components: loading.SDComponents,
    params: dict,
    latents: Array,
    cond: Array,
    key: Array,
    *,
    strength: float = 0.6,
    num_steps: int = 20,
) -> np.ndarray:
    """SDEdit-style reconstruction (Meng et al. 2022) of latents ``z₀`` under conditioning
    ``cond`` without guidance: noise to the DDIM step of ``strength`` (ε from ``key``, shared
    by every row), then denoise deterministically. Returns the reconstructed latents."""
    smp = pipelines.make_sampler(components, "ddim", num_steps)
    start = smp.img2img_start(strength)
    z = jnp.asarray(latents, jnp.float32)
    noise = jnp.broadcast_to(jax.random.normal(key, z.shape[1:]), z.shape)
    return np.asarray(
        _reconstruct(components, smp, int(start), params, z, jnp.asarray(cond, jnp.float32), noise)
    )


# ----------------------------------------------------------------- vectors on disk


def _group_dir(workdir: str, g: int) -> str:
    return os.path.join(workdir, "inversion", f"group-{g:05d}")


def _vectors_file(workdir: str, g: int) -> str:
    return os.path.join(workdir, "inversion", "vectors", f"group-{g:05d}.npz")


def _save_npz_atomic(path: str, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def run_stage1(
    config: Any, components: loading.SDComponents, params: dict, real: Any, mesh: Mesh
) -> dict[str, Any]:
    """Invert every image of the real subset, group by group (this process's groups only).

    Group ``g`` holds images ``[g·B, (g+1)·B)`` and belongs to process ``g mod P``; it is
    checkpointed in ``<workdir>/inversion/group-g`` and, when finished, its vectors are written
    to ``<workdir>/inversion/vectors/group-g.npz`` (ids, labels, vectors at ``use_step`` and
    the vectors at every save step, ``snapshot_steps`` / ``snapshots``, for stage 2).
    """
    inv = config.inversion
    n_total = len(real) if not inv.max_images else min(len(real), int(inv.max_images))
    bs = int(inv.batch_size)
    groups = list(range(jax.process_index(), -(-n_total // bs), jax.process_count()))
    res = int(inv.resolution)
    base = jax.random.PRNGKey(int(config.seed))
    prompts = [inv.prompt_template.format(n.replace("_", " ")) for n in real.class_names]
    use_step = int(inv.use_step) or int(inv.steps)
    done = 0
    for g in groups:
        out_file = _vectors_file(config.workdir, g)
        if os.path.isfile(out_file):
            continue
        ids = np.arange(g * bs, min((g + 1) * bs, n_total))
        labels = np.asarray(real.labels)[ids]
        x = to_signed_rgb(np.stack([real[int(i)]["image"] for i in ids]), res)
        latents = pipelines.encode_images_to_latents(components, params, x)
        keys = jnp.stack([jax.random.fold_in(base, int(i)) for i in ids])
        init = initial_vectors(
            components,
            params,
            labels,
            num_tokens=int(inv.num_tokens),
            init=inv.init,
            class_prompts=prompts,
            key=jax.random.PRNGKey(int(config.seed) + 2),
            image_ids=ids.tolist(),
            init_fan_in=int(inv.get("init_fan_in", 100)),
        )
        saves = [int(s) for s in inv.save_steps]
        snaps: dict[int, np.ndarray] = {}
        vectors, history = invert(
            components,
            params,
            latents,
            keys,
            init,
            num_steps=use_step,
            learning_rate=float(inv.learning_rate),
            weight_decay=float(inv.weight_decay),
            mesh=mesh,
            checkpoint_dir=_group_dir(config.workdir, g),
            save_steps=saves,
            chunk=int(inv.chunk),
            image_ids=ids.tolist(),
            progress=jax.process_index() == 0,
            snapshots=snaps,
        )
        snap_steps = sorted(snaps)
        _save_npz_atomic(
            out_file,
            ids=ids,
            labels=labels,
            vectors=vectors,
            step=np.int64(use_step),
            group=np.int64(g),
            snapshot_steps=np.asarray(snap_steps, np.int64),
            snapshots=np.stack([snaps[k] for k in snap_steps]) if snap_steps else vectors[None],
            loss=np.float64(history[-1][1] if history else np.nan),
        )
        done += 1
    distributed.barrier("diffinv stage 1")
    return {"groups": -(-n_total // bs), "groups_done_now": done, "images": n_total}


def load_vectors(
    workdir: str, step: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, vectors) of every finished group, sorted by image id; the final vectors,
    or those of save step ``step``."""
    ids, labels, _, snaps = load_inversion(workdir)
    if step is None:
        return ids, labels, snaps["final"]
    if int(step) not in snaps:
        have = sorted(k for k in snaps if k != "final")
        raise ValueError(f"diffinv: no stage-1 vectors at step {step} (saved: {have})")
    return ids, labels, snaps[int(step)]


def load_inversion(
    workdir: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[Any, np.ndarray]]:
    """(ids, labels, groups, {save step: vectors, 'final': vectors}) of every finished group,
    sorted by image id; a step is listed only when every group saved it."""
    files = sorted(glob.glob(os.path.join(workdir, "inversion", "vectors", "group-*.npz")))
    if not files:
        raise FileNotFoundError(f"diffinv: no learned vectors under {workdir}/inversion/vectors")
    parts = [dict(np.load(f)) for f in files]
    ids = np.concatenate([p["ids"] for p in parts])
    order = np.argsort(ids)
    labels = np.concatenate([p["labels"] for p in parts])[order]
    groups = np.concatenate(
        [np.full(len(p["ids"]), int(p.get("group", gi))) for gi, p in enumerate(parts)]
    )[order]
    snaps: dict[Any, np.ndarray] = {"final": np.concatenate([p["vectors"] for p in parts])[order]}
    common = set.intersection(
        *[set(int(x) for x in p.get("snapshot_steps", np.zeros(0, np.int64))) for p in parts]
    )
    for st in sorted(common):
        rows = [p["snapshots"][list(p["snapshot_steps"]).index(st)] for p in parts]
        snaps[st] = np.concatenate(rows)[order]
    return ids[order], labels, groups, snaps


