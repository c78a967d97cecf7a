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

**Stage 2 — sample from perturbed vectors.** Classifier-free guidance whose unconditional input
is the mean of all learned vectors, ``ū = (1/N) Σ_i c_i``::

    ε̃ = ε_θ(x_t, t, ū) + w (ε_θ(x_t, t, ĉ) − ε_θ(x_t, t, ū)),   w ~ U{guidance set, e.g. 2, 3, 4}

with the perturbed conditioning (paper §3.2)

- interpolation with a same-class partner: ``ĉ = α c₁ + (1 − α) c₂``, ``α ~ U[α_min, α_max]``;
- Gaussian noise: ``ĉ = c + λ ε``, ``ε ~ N(0, I)``;

applied in that order when both are on. K variants per vector (45 in the paper), 100 DDIM steps
by default; every image's provenance records the vector id, partner, λ, α, w and the seed.

Keys: vector ``i``'s variant ``k`` is example ``e = i·K + k`` with row key
``r = fold_in(PRNGKey(seed + 1), e)``: latent noise ``fold_in(r, 0)`` (as the SD pipelines),
partner ``fold_in(r, 19)``, α ``fold_in(r, 20)``, ε of the perturbation ``fold_in(r, 21)``,
guidance ``fold_in(r, 22)``.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
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
from augdiff.methods import augcond
from augdiff.sd import loading, pipelines, schedulers

Array = jax.Array

STREAM_ALPHA, STREAM_NOISE, STREAM_GUIDANCE = 20, 21, 22
INITS = ("empty", "class_prompt", "random")


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
        def total_loss(c, step):
            t, eps = step_draws(image_keys, step, latents.shape[1:], num_train)
            per_image = denoising_loss(components, params, c, latents, t, eps)
            return jnp.sum(per_image), per_image

        def body(step, carry):
            c, state, _ = carry
            (_, per_image), grads = jax.value_and_grad(total_loss, has_aux=True)(c, step)
            updates, state = optimizer.update(grads, state, c)
            return optax.apply_updates(c, updates), state, per_image

        init = (cond, opt_state, jnp.zeros(cond.shape[0], jnp.float32))
        return jax.lax.fori_loop(start, stop, body, init)

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
    init: str = "empty",
    class_prompts: Sequence[str] | None = None,
    key: Array | None = None,
) -> np.ndarray:
    """Starting conditioning ``[B, num_tokens, d]`` of every image.

    ``empty``: the first ``num_tokens`` rows of the encoded empty prompt (same for all);
    ``class_prompt``: those of the image's class prompt; ``random``: N(0, 1) from ``key``.
    """
    n, d = len(labels), int(components.unet.cross_attention_dim)
    if not 1 <= num_tokens <= components.max_length:
        raise ValueError(f"diffinv: num_tokens must be in [1, {components.max_length}]")
    if init == "empty":
        e = np.asarray(pipelines.encode_prompts(components, params, [""]))[0, :num_tokens]
        return np.broadcast_to(e, (n, num_tokens, d)).astype(np.float32).copy()
    if init == "class_prompt":
        if class_prompts is None:
            raise ValueError("diffinv: init='class_prompt' needs class_prompts")
        e = np.asarray(pipelines.encode_prompts(components, params, list(class_prompts)))
        return e[np.asarray(labels, np.int64), :num_tokens].astype(np.float32)
    if init == "random":
        if key is None:
            raise ValueError("diffinv: init='random' needs a key")
        return np.asarray(jax.random.normal(key, (n, num_tokens, d)), np.float32)
    raise ValueError(f"diffinv: init must be one of {INITS}, got {init!r}")


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

    Returns:
      (learned vectors [B, tokens, d] as numpy, [(step, mean loss of that step)] of this run).
    """
    from tqdm import tqdm

    from augdiff.train.checkpoint import Checkpointer

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
    ckpt = Checkpointer(checkpoint_dir, max_to_keep=None) if checkpoint_dir else None
    history: list[tuple[int, float]] = []
    try:
        if ckpt is not None:
            done = [s for s in ckpt.all_steps() if s <= num_steps]
            if done:
                step = max(done)
                state, extras = ckpt.restore(step, like={"cond": cond, "opt_state": opt_state})
                if [int(i) for i in extras.get("image_ids", [])] != ids:
                    raise ValueError(
                        f"diffinv: checkpoint {checkpoint_dir} holds other images "
                        f"({extras.get('image_ids', [])[:4]}...) than this group ({ids[:4]}...)"
                    )
                cond, opt_state = state["cond"], state["opt_state"]
        bar = tqdm(total=num_steps, initial=step, desc="diffinv stage 1", disable=not progress)
        while step < num_steps:
            stop = min(step + max(int(chunk), 1), min(s for s in saves if s > step))
            cond, opt_state, per_image = run(
                params, cond, opt_state, latents, image_keys, step, stop
            )
            step = stop
            loss = np.asarray(per_image)[:n]
            history.append((step, float(loss.mean())))
            bar.update(stop - bar.n)
            bar.set_postfix(loss=f"{loss.mean():.4f}")
            if ckpt is not None and step in saves:
                ckpt.save(
                    step,
                    {"cond": cond, "opt_state": opt_state},
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


# ----------------------------------------------------------------------------- stage 2


def unconditional_vector(vectors: Array) -> Array:
    """ū = (1/N) Σ_i c_i: the mean of every learned vector, CFG's unconditional input."""
    v = jnp.asarray(vectors, jnp.float32)
    if v.ndim != 3 or v.shape[0] == 0:
        raise ValueError(
            f"diffinv: vectors must be a non-empty [N, tokens, d] array, got {v.shape}"
        )
    return jnp.mean(v, axis=0)


def gaussian_perturbation(key: Array, c: Array, noise_scale: float | Array) -> Array:
    """ĉ = c + λ ε, ε ~ N(0, I) drawn from ``fold_in(key, 21)``."""
    eps = jax.random.normal(jax.random.fold_in(key, STREAM_NOISE), c.shape, jnp.float32)
    return c + noise_scale * eps


def interpolate(c1: Array, c2: Array, alpha: float | Array) -> Array:
    """ĉ = α c₁ + (1 − α) c₂."""
    return alpha * c1 + (1.0 - alpha) * c2


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """Stage-2 perturbation: interpolation (α ~ U[alpha_min, alpha_max]) then Gaussian noise λ."""

    noise_scale: float = 0.0
    interpolate: bool = False
    alpha_min: float = 0.5
    alpha_max: float = 1.0

    def __post_init__(self) -> None:
        if self.noise_scale < 0:
            raise ValueError(f"diffinv: noise_scale must be >= 0, got {self.noise_scale}")
        if not 0.0 <= self.alpha_min <= self.alpha_max <= 1.0:
            raise ValueError(
                f"diffinv: need 0 <= alpha_min <= alpha_max <= 1, got "
                f"[{self.alpha_min}, {self.alpha_max}]"
            )


@jax.jit
def _perturb_rows(keys, c, partner, noise_scale, interp, alpha_min, alpha_max):
    def one(k, ci, pi):
        u = jax.random.uniform(jax.random.fold_in(k, STREAM_ALPHA))
        alpha = jnp.where(interp, alpha_min + (alpha_max - alpha_min) * u, 1.0)
        return gaussian_perturbation(k, interpolate(ci, pi, alpha), noise_scale), alpha

    return jax.vmap(one)(keys, c, partner)


def perturb(
    keys: Array, c: Array, partner: Array, perturbation: Perturbation
) -> tuple[Array, Array]:
    """Perturbed vectors ``ĉ`` [B, tokens, d] and the α of each row (1 when not interpolating)."""
    return _perturb_rows(
        jnp.asarray(keys),
        jnp.asarray(c, jnp.float32),
        jnp.asarray(partner, jnp.float32),
        jnp.float32(perturbation.noise_scale),
        jnp.bool_(perturbation.interpolate),
        jnp.float32(perturbation.alpha_min),
        jnp.float32(perturbation.alpha_max),
    )


def draw_guidance(keys: Array, scales: Sequence[float]) -> np.ndarray:
    """w of every row, uniform over the set ``scales`` (from ``fold_in(key, 22)``)."""
    table = jnp.asarray(list(scales), jnp.float32)
    if table.ndim != 1 or table.shape[0] == 0:
        raise ValueError(f"diffinv: guidance scales must be a non-empty list, got {scales}")
    idx = jax.vmap(
        lambda k: jax.random.randint(jax.random.fold_in(k, STREAM_GUIDANCE), (), 0, len(table))
    )(jnp.asarray(keys))
    return np.asarray(table[idx])


def sample(
    components: loading.SDComponents,
    params: dict,
    cond: Array,
    uncond: Array,
    guidance_scales: Array,
    keys: Array,
    *,
    num_steps: int = 100,
    sampler: str = "ddim",
    eta: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    mesh: Mesh | None = None,
    output: str = "images",
) -> np.ndarray:
    """Stage-2 CFG sampling from learned vectors with a **per-row** guidance scale.

    ε̃_b = ε(x_t, t, u_b) + w_b (ε(x_t, t, c_b) − ε(x_t, t, u_b)) (Ho & Salimans 2022, eq. 6),
    ``uncond`` one row [tokens, d] (e.g. :func:`unconditional_vector`) or [B, tokens, d]; row b's
    randomness comes from ``keys[b]``. This is the SD core's
    :func:`augdiff.sd.pipelines.generate_from_embeddings` (one jit) with per-row scales.
    Returns [B, H, W, 3] in [0, 1] (or the final latents with ``output='latents'``).
    """
    un = jnp.asarray(uncond, jnp.float32)
    return pipelines.generate_from_embeddings(
        components,
        params,
        cond,
        keys,
        uncond=un[None] if un.ndim == 2 else un,
        guidance_scale=jnp.asarray(guidance_scales, jnp.float32),
        num_steps=num_steps,
        sampler=sampler,
        eta=eta,
        height=height,
        width=width,
        mesh=mesh,
        output=output,
    )


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


# ------------------------------------------------------------------------ the command


def _group_dir(workdir: str, g: int) -> str:
    return os.path.join(workdir, "inversion", f"group-{g:05d}")


def _vectors_file(workdir: str, g: int) -> str:
    return os.path.join(workdir, "inversion", "vectors", f"group-{g:05d}.npz")


def _save_npz_atomic(path: str, **arrays: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def run_stage1(
    config: Any, components: loading.SDComponents, params: dict, real: Any, mesh: Mesh
) -> dict[str, Any]:
    """Invert every image of the real subset, group by group (this process's groups only).

    Group ``g`` holds images ``[g·B, (g+1)·B)`` and belongs to process ``g mod P``; it is
    checkpointed in ``<workdir>/inversion/group-g`` and, when finished, its vectors are written
    to ``<workdir>/inversion/vectors/group-g.npz`` (ids, labels, vectors at ``use_step``).
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
        x = augcond.to_float(np.stack([real[int(i)]["image"] for i in ids]), res)
        latents = pipelines.encode_images_to_latents(components, params, x)
        keys = jnp.stack([jax.random.fold_in(base, int(i)) for i in ids])
        init = initial_vectors(
            components,
            params,
            labels,
            num_tokens=int(inv.num_tokens),
            init=inv.init,
            class_prompts=prompts,
            key=jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + 2), g),
        )
        saves = [int(s) for s in inv.save_steps]
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
        )
        _save_npz_atomic(
            out_file,
            ids=ids,
            labels=labels,
            vectors=vectors,
            step=np.int64(use_step),
            loss=np.float64(history[-1][1] if history else np.nan),
        )
        done += 1
    _sync("diffinv stage 1")
    return {"groups": -(-n_total // bs), "groups_done_now": done, "images": n_total}


def load_vectors(workdir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, vectors) of every finished group, sorted by image id."""
    files = sorted(glob.glob(os.path.join(workdir, "inversion", "vectors", "group-*.npz")))
    if not files:
        raise FileNotFoundError(f"diffinv: no learned vectors under {workdir}/inversion/vectors")
    parts = [np.load(f) for f in files]
    ids = np.concatenate([p["ids"] for p in parts])
    order = np.argsort(ids)
    labels = np.concatenate([p["labels"] for p in parts])[order]
    vectors = np.concatenate([p["vectors"] for p in parts])[order]
    return ids[order], labels, vectors


def run_stage2(
    config: Any, components: loading.SDComponents, params: dict, real: Any, mesh: Mesh
) -> dict[str, Any]:
    """K perturbed variants of every learned vector into the store (resumable)."""

    from augdiff.data.store import StoreWriter, example_keys, pending_batches

    smp_cfg = config.sampling
    ids, labels, vectors = load_vectors(config.workdir)
    uncond = np.asarray(unconditional_vector(vectors))
    k_per = int(smp_cfg.num_variants)
    pert = Perturbation(
        noise_scale=float(smp_cfg.noise_scale),
        interpolate=bool(smp_cfg.interpolate),
        alpha_min=float(smp_cfg.alpha_min),
        alpha_max=float(smp_cfg.alpha_max),
    )
    scales = [float(w) for w in smp_cfg.guidance_scales]
    plan = [
        dict(key=f"di-r{int(ids[i]):07d}-v{k:03d}", row=i, variant=k, example=i * k_per + k)
        for i in range(len(ids))
        for k in range(k_per)
    ]
    mine = plan[distributed.process_slice(len(plan))]
    base = jax.random.PRNGKey(int(config.seed) + 1)
    res = int(config.inversion.resolution)
    model_label = loading.model_label(components)
    manifest_cfg = dict(
        model=model_label,
        num_vectors=len(ids),
        num_variants=k_per,
        guidance_scales=scales,
        noise_scale=pert.noise_scale,
        interpolate=pert.interpolate,
        alpha_range=[pert.alpha_min, pert.alpha_max],
        steps=int(smp_cfg.steps),
        sampler=smp_cfg.sampler,
        resolution=res,
        num_tokens=int(vectors.shape[1]),
        num_classes=real.num_classes,
        class_names=list(real.class_names),
    )
    store_dir = config.get("store_dir", None) or os.path.join(config.workdir, "synthetic")
    written = 0
    with StoreWriter(store_dir, method="diffinv", config=manifest_cfg) as store:
        for batch in pending_batches(store, mine, int(smp_cfg.batch_size), desc="diffinv stage 2"):
            keys = example_keys(base, [it["example"] for it in batch])
            rows = np.array([it["row"] for it in batch])
            partners = augcond.same_class_partners(keys, rows, labels) if pert.interpolate else rows
            c_hat, alpha = perturb(keys, vectors[rows], vectors[partners], pert)
            w = draw_guidance(keys, scales)
            images = sample(
                components,
                params,
                c_hat,
                uncond,
                w,
                keys,
                num_steps=int(smp_cfg.steps),
                sampler=smp_cfg.sampler,
                height=res,
                width=res,
                mesh=mesh,
            )
            out = augcond.to_store(images, int(config.data.image_size), int(config.data.channels))
            alpha = np.asarray(alpha)
            for i, (it, img) in enumerate(zip(batch, out, strict=True)):
                prov = dict(
                    vector_id=int(ids[rows[i]]),
                    parent=int(ids[rows[i]]),
                    parent_name=real.name_of(int(ids[rows[i]])),
                    partner_vector_id=int(ids[partners[i]]) if pert.interpolate else None,
                    variant=it["variant"],
                    noise_scale=pert.noise_scale,
                    alpha=round(float(alpha[i]), 6),
                    guidance=float(w[i]),
                    steps=int(smp_cfg.steps),
                    sampler=smp_cfg.sampler,
                    seed=int(config.seed),
                    example=it["example"],
                    model=model_label,
                )
                if int(img.max()) == 0:
                    store.note("black_images")
                label = int(labels[rows[i]])
                written += bool(store.add(it["key"], img, label, source=1, provenance=prov))
    return {"store": store_dir, "planned": len(plan), "this_process": len(mine), "written": written}


def generate(config: Any) -> dict[str, Any]:
    """``augdiff generate`` with ``method='diffinv'``: stage 1 then stage 2, each resumable."""
    from augdiff.data.sources import open_real_source

    components, params = augcond.load_model(
        config.model, config.workdir, int(config.seed), "txt2img"
    )
    real = open_real_source(config.data, "train")
    mesh = distributed.make_mesh(devices=jax.local_devices())
    params = pipelines.place_params(params, mesh)
    summary: dict[str, Any] = {"model": loading.model_label(components)}
    stages = str(config.get("stages", "12"))
    if "1" in stages:
        summary["stage1"] = run_stage1(config, components, params, real, mesh)
    if "2" in stages:
        summary["stage2"] = run_stage2(config, components, params, real, mesh)
    with open(os.path.join(config.workdir, "inversion", "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    return summary
