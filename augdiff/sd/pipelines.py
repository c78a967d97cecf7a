"""Stable Diffusion pipelines in JAX: text-to-image, img2img, InstructPix2Pix, unCLIP variations,
generation from arbitrary embeddings, and the differentiable noise prediction.

Everything takes ``(components, params)`` from :func:`augdiff.sd.loading.load_sd`.

Conventions
- Images in: float NHWC in [-1, 1]. Images out of the pipelines: float32 NHWC in [0, 1]
  (diffusers' ``output_type='np'``: ``clip((x + 1) / 2, 0, 1)``); :func:`decode_latents`
  returns the raw decoder output in [-1, 1].
- Latents: NCHW, as diffusers' PyTorch pipelines and the Flax UNet, so the same initial noise
  can be given to both (``latents=``, ``noise=``...).
- Conditioning is computed once and reused: :func:`encode_prompts` (text), :func:`clip_image_embeds`
  (CLIP image), :func:`encode_images_to_latents` (VAE). Every pipeline accepts the encodings
  (or prompts, which it encodes).
- Randomness: one ``key`` for the batch (row b uses ``fold_in(key, b)``) or one key per row
  (e.g. ``fold_in(base_key, example_number)``, so an example's image does not depend on the
  batch it was generated in). Row key k gives ``fold_in(k, 0)``: initial latent noise,
  ``fold_in(k, 1)``: sampler noise (ancestral samplers), ``fold_in(k, 2)``: VAE posterior
  sample (img2img), ``fold_in(k, 3)``: unCLIP embedding noise.
- Each pipeline's whole denoising loop plus the VAE decode is one ``jax.jit`` (the loop is
  ``schedulers.denoise_loop``'s ``lax.fori_loop``). With a ``mesh`` the batch is split over its
  ``('data', 'fsdp')`` axes, parameters are replicated (or fsdp-sharded, :func:`place_params`),
  and a batch that does not divide the device count is padded and trimmed.

Guidance (``augdiff.sd.guidance``): classifier-free guidance
ε̃ = ε_u + w (ε_c - ε_u) (Ho & Salimans 2022, eq. 6); InstructPix2Pix's dual guidance
ε̃ = ε(∅,∅) + s_I (ε(c_I,∅) - ε(∅,∅)) + s_T (ε(c_I,c_T) - ε(c_I,∅)) (Brooks et al. 2023, eq. 3).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from augdiff import distributed
from augdiff.data.pixels import signed_to_unit
from augdiff.sd import guidance, schedulers
from augdiff.sd.loading import SDComponents
from augdiff.sd.unclip import apply_unet, clip_preprocess, noise_image_embeddings

Array = jax.Array
Prompts = Sequence[str] | str

# Sub-streams of a row key (see the module docstring).
_INIT, _STEP, _VAE, _EMBED = 0, 1, 2, 3


# ------------------------------------------------------------------------ placement


def place_params(params: dict, mesh: Mesh, fsdp: bool = False) -> dict:
    """Put parameters on ``mesh``: replicated, or with ``fsdp=True`` each weight's last axis
    split over the ``fsdp`` mesh axis where it divides (the rest replicated)."""
    n_fsdp = mesh.shape["fsdp"]
    if not fsdp or n_fsdp == 1:
        return distributed.replicate(params, mesh)

    def put(x):
        spec = P()
        if x.ndim >= 2 and x.shape[-1] % n_fsdp == 0:
            spec = P(*([None] * (x.ndim - 1)), "fsdp")
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(put, params)


def _batched(mesh: Mesh | None, tree: Any) -> tuple[Any, int]:
    """Pad the leading axis to the mesh's batch shards and place it; returns (tree, n)."""
    leaves = jax.tree_util.tree_leaves(tree)
    n = int(leaves[0].shape[0])
    if mesh is None:
        return tree, n
    tree, n = distributed.pad_to_multiple(tree, distributed.num_batch_shards(mesh))
    return distributed.shard_batch(tree, mesh), n


def _params_on(mesh: Mesh | None, params: dict) -> dict:
    # device_put onto the sharding an array already has is free, so this is cheap on reuse.
    return params if mesh is None else place_params(params, mesh)


def _gather(x: Array, n: int) -> np.ndarray:
    return np.asarray(distributed.gather_to_host(x))[:n]


def row_keys(key: Array, n: int) -> Array:
    """Per-row keys: ``key`` itself when it is already a batch of ``n`` keys, else
    ``fold_in(key, b)`` for b < n."""
    key = jnp.asarray(key)
    if key.ndim == (1 if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else 2):
        if key.shape[0] != n:
            raise ValueError(f"got {key.shape[0]} keys for a batch of {n}")
        return key
    return jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(n))


def _normal_rows(keys: Array, stream: int, shape: tuple[int, ...]) -> Array:
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, stream), shape, jnp.float32))(
        keys
    )


# ------------------------------------------------------------------------- encoders


def tokenize(components: SDComponents, prompts: Prompts) -> np.ndarray:
    """CLIP token ids [N, max_length] (padded to max_length, truncated), as diffusers does."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be strings")
    ids = components.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=components.max_length,
        truncation=True,
        return_tensors="np",
    ).input_ids
    return ids.astype(np.int32)


@functools.partial(jax.jit, static_argnames=("components",))
def _text_encode(components: SDComponents, params: dict, ids: Array) -> Array:
    pos = jnp.broadcast_to(jnp.arange(ids.shape[-1]), ids.shape)
    out = components.text_encoder.apply(
        {"params": params["text_encoder"]}, ids, jnp.ones_like(ids), pos, deterministic=True
    )
    return out[0].astype(jnp.float32)


def encode_prompts(components: SDComponents, params: dict, prompts: Prompts) -> Array:
    """Text conditioning [N, max_length, hidden]: the CLIP text encoder's last hidden state
    (after the final layer norm), as diffusers' ``encode_prompt`` with ``clip_skip=None``."""
    return _text_encode(components, params, jnp.asarray(tokenize(components, prompts)))


def _check_images(components: SDComponents, images: Any, name: str = "images") -> Array:
    x = jnp.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name} must be NHWC with 3 channels, got shape {x.shape}")
    f = components.vae_scale_factor
    if x.shape[1] % f or x.shape[2] % f:
        raise ValueError(
            f"{name} height/width {x.shape[1:3]} must be multiples of the VAE factor {f}"
        )
    if x.dtype == jnp.uint8:
        raise ValueError(f"{name} must be float in [-1, 1], got uint8 (use x / 127.5 - 1)")
    return x.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("components", "scaled"))
def _vae_encode(
    components: SDComponents, params: dict, images: Array, noise: Array | None, scaled: bool
) -> Array:
    x = jnp.transpose(images, (0, 3, 1, 2)).astype(components.dtype)
    dist = components.vae.apply(
        {"params": params["vae"]}, x, method=components.vae.encode
    ).latent_dist
    mean = dist.mean.astype(jnp.float32)
    if noise is None:
        z = mean
    else:  # sample of the posterior N(mean, std²) with the given (NCHW) standard normal noise
        z = mean + dist.std.astype(jnp.float32) * jnp.transpose(noise, (0, 2, 3, 1))
    z = jnp.transpose(z, (0, 3, 1, 2))
    return z * components.vae_scaling_factor if scaled else z


def _vae_encode_rows(components: SDComponents, params: dict, images: Array,
                     noise: Array | None, scaled: bool, mesh: Mesh | None) -> Array:
    """:func:`_vae_encode` with the rows padded to and split over ``mesh`` (every chip encodes
    its own rows, as the sampler that follows runs them) and trimmed back."""
    if mesh is None:
        return _vae_encode(components, params, images, noise, scaled)
    rows, n = _batched(mesh, {"x": images, "noise": noise})
    z = _vae_encode(components, _params_on(mesh, params), rows["x"], rows.get("noise"), scaled)
    return z[:n]


def encode_images_to_latents(
    components: SDComponents,
    params: dict,
    images: Any,
    *,
    key: Array | None = None,
    noise: Array | None = None,
    scaled: bool = True,
) -> Array:
    """VAE latents (NCHW) of NHWC images in [-1, 1].

    The posterior mode (mean) by default; a sample mean + std·ε with ``key`` (row b's ε from
    ``fold_in(fold_in(key, b), 2)``) or explicit NCHW ``noise``. ``scaled`` multiplies by the
    VAE scaling factor (SD's latent space; InstructPix2Pix's image latents are unscaled).
    """
    x = _check_images(components, images)
    if noise is None and key is not None:
        shape = (
            components.latent_channels,
            x.shape[1] // components.vae_scale_factor,
            x.shape[2] // components.vae_scale_factor,
        )
        noise = _normal_rows(row_keys(key, x.shape[0]), _VAE, shape)
    return _vae_encode(components, params, x, None if noise is None else jnp.asarray(noise), scaled)


def _decode(components: SDComponents, params: dict, latents: Array) -> Array:
    z = (latents / components.vae_scaling_factor).astype(components.dtype)
    out = components.vae.apply({"params": params["vae"]}, z, method=components.vae.decode).sample
    return jnp.transpose(out, (0, 2, 3, 1)).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("components",))
def _decode_jit(components: SDComponents, params: dict, latents: Array) -> Array:
    return _decode(components, params, latents)


def decode_latents(components: SDComponents, params: dict, latents: Array) -> Array:
    """NHWC images in [-1, 1] (unclipped) from scaled NCHW latents: decoder(z / scaling)."""
    return _decode_jit(components, params, jnp.asarray(latents))


@functools.partial(jax.jit, static_argnames=("components", "normalize"))
def _clip_image(
    components: SDComponents, params: dict, images: Array, normalize: bool
) -> tuple[Array, Array]:
    x = clip_preprocess(  # CLIPImageProcessor: short side resize, centre crop, normalise
        (images + 1.0) / 2.0,
        components.clip_image_size,
        components.clip_image_mean,
        components.clip_image_std,
    ).astype(components.dtype)
    p = params["image_encoder"]
    last, pooled = components.image_encoder.apply(
        {"params": {"vision_model": p["vision_model"]}}, x, return_dict=False
    )[:2]
    embeds = pooled.astype(jnp.float32) @ p["visual_projection"]["kernel"].astype(jnp.float32)
    if normalize:
        embeds = embeds / jnp.linalg.norm(embeds, axis=-1, keepdims=True)
    return embeds, last.astype(jnp.float32)


def clip_image_embeds(
    components: SDComponents, params: dict, images: Any, *, normalize: bool = False
) -> Array:
    """Projected CLIP image embeddings [N, projection_dim] of NHWC images in [-1, 1].

    As ``CLIPVisionModelWithProjection(...).image_embeds``: images are mapped to [0, 1] and
    pre-processed as ``CLIPImageProcessor`` (:func:`augdiff.sd.unclip.clip_preprocess`: shorter
    side resized to the encoder's size, centre crop, CLIP mean/std), and the pooled
    (post-layer-norm CLS) output is projected. unCLIP uses
    them unnormalised; ``normalize=True`` L2-normalises them for CLIP cosine similarity.
    """
    if components.image_encoder is None:
        raise ValueError(f"model kind {components.kind!r} has no CLIP image encoder")
    x = jnp.asarray(images, jnp.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be NHWC with 3 channels, got shape {x.shape}")
    return _clip_image(components, params, x, normalize)[0]


# -------------------------------------------------------------------- noise prediction


def unet_output(
    components: SDComponents,
    params: dict,
    latents: Array,
    t: Array,
    cond: Array,
    class_input: Array | None = None,
    image_latents: Array | None = None,
) -> Array:
    """Raw UNet output (ε, v or x0 per the scheduler's ``prediction_type``); differentiable.

    ``image_latents`` (InstructPix2Pix) are concatenated to the latents on the channel axis;
    ``class_input`` is unCLIP's noised image embedding (:func:`augdiff.sd.unclip.apply_unet`).
    """
    x = latents if image_latents is None else jnp.concatenate([latents, image_latents], axis=1)
    return apply_unet(components, params, x, t, cond, class_input)


def eps_prediction(
    components: SDComponents,
    params: dict,
    latents: Array,
    t: Array,
    cond: Array,
    class_input: Array | None = None,
    image_latents: Array | None = None,
) -> Array:
    """ε̂(x_t, t, cond): the noise prediction, differentiable in every argument (e.g. the
    conditioning embeddings learnt by Diffusion Inversion).

    ``latents`` are the noised latents x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (NCHW), ``t`` integer
    training timesteps ([B] or scalar). v- and x0-predicting models are converted to ε with
    ``schedulers.vp_predict_x0_eps`` (ε̂ = √ᾱ_t v + √(1-ᾱ_t) x_t for v-prediction).
    """
    out = unet_output(components, params, latents, t, cond, class_input, image_latents)
    schedule = schedulers.NoiseSchedule.from_diffusers_config(components.scheduler_config)
    if schedule.prediction_type == "epsilon":
        return out
    abar = jnp.asarray(schedule.alphas_cumprod, jnp.float32)[jnp.asarray(t, jnp.int32)]
    abar = jnp.reshape(abar, (-1, 1, 1, 1))
    _, eps = schedulers.vp_predict_x0_eps(
        schedule.prediction_type,
        out,
        latents.astype(jnp.float32),
        jnp.sqrt(abar),
        jnp.sqrt(1 - abar),
    )
    return eps


# ----------------------------------------------------------------------- core sampler


@functools.partial(
    jax.jit,
    static_argnames=("components", "sampler", "mode", "start_index", "decode", "guidance_rescale"),
)
def _sample(
    components: SDComponents,
    sampler: schedulers.Sampler,
    mode: str,
    start_index: int,
    decode: bool,
    guidance_rescale: float,
    params: dict,
    noise: Array,
    keys: Array,
    init_latents: Array | None,
    cond: Array,
    uncond: Array | None,
    class_cond: Array | None,
    class_uncond: Array | None,
    image_latents: Array | None,
    guidance_scale: Array,
    image_guidance_scale: Array,
) -> Array:
    """One jit: initial latent, the whole ``denoise_loop`` with guidance, then VAE decode.

    ``guidance_scale`` / ``image_guidance_scale`` are per-row [B] (one scale per example);
    ``guidance_rescale`` φ > 0 rescales the CFG output (``guidance.rescale_noise_cfg``).
    All guidance arithmetic and branch stacking is ``augdiff.sd.guidance``'s.
    """
    w_text = guidance_scale.reshape(-1, 1, 1, 1)
    w_image = image_guidance_scale.reshape(-1, 1, 1, 1)

    if init_latents is None:
        x = noise * sampler.init_noise_sigma
    else:
        x = sampler.add_noise(init_latents, noise, start_index)

    def unet(x_in, t, text, cls, img):
        return unet_output(components, params, x_in, t, text, cls, img)

    def cat(*xs):
        return None if xs[0] is None else guidance.concat_branches(*xs)

    def model_fn(x_in: Array, t: Array, i: Array) -> Array:
        del i
        if mode == "none":
            return unet(x_in, t, cond, class_cond, image_latents)
        if mode == "cfg":
            # diffusers' order: [uncond, cond]
            out = unet(guidance.repeat_branches(x_in, 2), t, cat(uncond, cond),
                       cat(class_uncond, class_cond), None)
            eps_u, eps_c = guidance.split_branches(out, 2)
            guided = guidance.cfg(eps_u, eps_c, w_text)
            if guidance_rescale > 0:
                guided = guidance.rescale_noise_cfg(guided, eps_c, guidance_rescale)
            return guided
        # InstructPix2Pix: (text+image, image only, neither), as diffusers orders them.
        zeros = jnp.zeros_like(image_latents)
        out = unet(
            guidance.repeat_branches(x_in, 3),
            t,
            cat(cond, uncond, uncond),
            None,
            cat(image_latents, image_latents, zeros),
        )
        eps_text, eps_image, eps_uncond = guidance.split_branches(out, 3)
        return guidance.instruct_pix2pix_guidance(eps_text, eps_image, eps_uncond, w_text, w_image)

    step_keys = (
        jax.vmap(lambda k: jax.random.fold_in(k, _STEP))(keys) if sampler.stochastic else None
    )
    x = schedulers.denoise_loop(model_fn, sampler, x, step_keys, start_index=start_index)
    if not decode:
        return x
    return signed_to_unit(_decode(components, params, x))


def make_sampler(
    components: SDComponents,
    sampler: str | schedulers.Sampler = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
) -> schedulers.Sampler:
    """A sampler over the model's own ``scheduler_config`` (or ``sampler`` itself if built)."""
    if isinstance(sampler, schedulers.Sampler):
        return sampler
    return schedulers.make_sampler(sampler, components.scheduler_config, num_steps, eta=eta)


def _as_embeds(components: SDComponents, params: dict, x: Any, n: int | None, name: str) -> Array:
    """Prompts -> encoded; arrays pass through; a single row is broadcast to ``n`` rows."""
    if isinstance(x, str) or (isinstance(x, Sequence) and x and isinstance(x[0], str)):
        x = encode_prompts(components, params, x)
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 3:
        raise ValueError(
            f"{name} must be prompts or [N, tokens, dim] embeddings, got shape {x.shape}"
        )
    if n is not None and x.shape[0] == 1 and n > 1:
        x = jnp.broadcast_to(x, (n,) + x.shape[1:])
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} rows, expected {n}")
    return x


def _run(
    components: SDComponents,
    params: dict,
    sampler: schedulers.Sampler,
    *,
    mode: str,
    key: Array,
    cond: Array,
    uncond: Array | None,
    latent_shape: tuple[int, int, int],
    latents: Array | None = None,
    init_latents: Array | None = None,
    start_index: int = 0,
    class_cond: Array | None = None,
    class_uncond: Array | None = None,
    image_latents: Array | None = None,
    guidance_scale: float | Array = 1.0,
    image_guidance_scale: float | Array = 1.0,
    guidance_rescale: float = 0.0,
    mesh: Mesh | None = None,
    output: str = "images",
) -> np.ndarray:
    if output not in ("images", "latents"):
        raise ValueError(f"output must be 'images' or 'latents', got {output!r}")
    guidance_rescale = float(guidance_rescale)
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
    n = int(cond.shape[0])
    keys = row_keys(key, n)
    noise = (
        _normal_rows(keys, _INIT, latent_shape)
        if latents is None
        else jnp.asarray(latents, jnp.float32)
    )
    if noise.shape != (n, *latent_shape):
        raise ValueError(f"latents/noise must have shape {(n, *latent_shape)}, got {noise.shape}")
    batch = dict(
        noise=noise,
        keys=keys,
        init_latents=init_latents,
        cond=cond,
        uncond=uncond,
        class_cond=class_cond,
        class_uncond=class_uncond,
        image_latents=image_latents,
        guidance_scale=_per_row(guidance_scale, n, "guidance_scale"),
        image_guidance_scale=_per_row(image_guidance_scale, n, "image_guidance_scale"),
    )
    batch = {k: v for k, v in batch.items() if v is not None}
    batch, n = _batched(mesh, batch)
    with distributed.mesh_context(mesh):  # per-shard kernels (TPU attention)
        out = _sample(
            components,
            sampler,
            mode,
            int(start_index),
            output == "images",
            guidance_rescale if mode == "cfg" else 0.0,
            _params_on(mesh, params),
            batch["noise"],
            batch["keys"],
            batch.get("init_latents"),
            batch["cond"],
            batch.get("uncond"),
            batch.get("class_cond"),
            batch.get("class_uncond"),
            batch.get("image_latents"),
            batch["guidance_scale"],
            batch["image_guidance_scale"],
        )
    return _gather(out, n)


def _uses_cfg(scale: float | Array) -> bool:
    """CFG runs when any row's scale exceeds 1 (diffusers: ``guidance_scale > 1``)."""
    return bool(np.any(np.asarray(scale) > 1.0))


def _per_row(scale: float | Array, n: int, name: str) -> Array:
    """A guidance scale as one value per row: a scalar is broadcast, [n] is kept."""
    w = jnp.asarray(scale, jnp.float32)
    if w.ndim == 0:
        return jnp.broadcast_to(w, (n,))
    if w.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one value per row ({n}), got {w.shape}")
    return w


def latent_shape(
    components: SDComponents, height: int | None = None, width: int | None = None
) -> tuple[int, int, int]:
    """(C, H/f, W/f) of the latents of a ``height × width`` image (default: the UNet's size)."""
    f = components.vae_scale_factor
    default = int(components.unet.sample_size) * f
    h, w = height or default, width or default
    if h % f or w % f:
        raise ValueError(f"height/width ({h}, {w}) must be multiples of the VAE factor {f}")
    return (components.latent_channels, h // f, w // f)


# --------------------------------------------------------------------------- pipelines


def text2img(
    components: SDComponents,
    params: dict,
    prompts: Prompts | Array,
    key: Array,
    *,
    negative: Prompts | Array | None = None,
    guidance_scale: float = 7.5,
    guidance_rescale: float = 0.0,
    num_steps: int = 50,
    sampler: str | schedulers.Sampler = "ddim",
    eta: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    latents: Array | None = None,
    mesh: Mesh | None = None,
    output: str = "images",
) -> np.ndarray:
    """Text-to-image (diffusers ``StableDiffusionPipeline``). Returns [N, H, W, 3] in [0, 1].

    ``prompts`` may be strings or precomputed :func:`encode_prompts` embeddings; ``negative``
    defaults to the empty prompt; ``guidance_scale <= 1`` disables CFG (as diffusers).
    ``guidance_rescale`` φ (diffusers' argument; Lin et al. 2024 §3.4) rescales the guided
    output towards the conditional one's std; 0 is plain CFG.
    ``latents`` (NCHW) overrides the key's initial noise; ``height``/``width`` choose the
    output resolution (latents are ``height / vae_scale_factor``).
    """
    if components.kind != "txt2img":
        raise ValueError(f"text2img needs a txt2img model, got kind {components.kind!r}")
    return generate_from_embeddings(
        components,
        params,
        _as_embeds(components, params, prompts, None, "prompts"),
        key,
        uncond=negative,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        num_steps=num_steps,
        sampler=sampler,
        eta=eta,
        height=height,
        width=width,
        latents=latents,
        mesh=mesh,
        output=output,
    )


def generate_from_embeddings(
    components: SDComponents,
    params: dict,
    cond: Array,
    key: Array,
    *,
    uncond: Prompts | Array | None = None,
    guidance_scale: float | Array = 7.5,
    guidance_rescale: float = 0.0,
    num_steps: int = 50,
    sampler: str | schedulers.Sampler = "ddim",
    eta: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    latents: Array | None = None,
    mesh: Mesh | None = None,
    output: str = "images",
) -> np.ndarray:
    """Generate from arbitrary conditioning tensors ``cond`` [N, tokens, dim] (e.g. Diffusion
    Inversion's learnt embeddings) with CFG against ``uncond`` (default: the empty prompt;
    one row is broadcast). Any token count works; ``dim`` must be the UNet's cross-attention width.
    ``guidance_scale`` is a float or one scale per row [N] (ε̃_b = ε_u + w_b (ε_c − ε_u); e.g.
    Diffusion Inversion draws w per image). ``guidance_rescale`` as in :func:`text2img`.
    """
    cond = jnp.asarray(cond, jnp.float32)
    if cond.ndim != 3 or cond.shape[-1] != components.unet.cross_attention_dim:
        raise ValueError(
            f"cond must be [N, tokens, {components.unet.cross_attention_dim}], got {cond.shape}"
        )
    n = cond.shape[0]
    smp = make_sampler(components, sampler, num_steps, eta)
    use_cfg = _uses_cfg(guidance_scale)
    un = None
    if use_cfg:
        un = _as_embeds(components, params, [""] if uncond is None else uncond, n, "uncond")
        if un.shape[1] != cond.shape[1]:
            raise ValueError(f"uncond has {un.shape[1]} tokens, cond {cond.shape[1]}")
    return _run(
        components,
        params,
        smp,
        mode="cfg" if use_cfg else "none",
        key=key,
        cond=cond,
        uncond=un,
        latent_shape=latent_shape(components, height, width),
        latents=latents,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        mesh=mesh,
        output=output,
    )


def img2img(
    components: SDComponents,
    params: dict,
    images: Any,
    prompts: Prompts | Array,
    key: Array,
    *,
    strength: float = 0.8,
    negative: Prompts | Array | None = None,
    guidance_scale: float = 7.5,
    num_steps: int = 50,
    sampler: str | schedulers.Sampler = "ddim",
    eta: float = 0.0,
    noise: Array | None = None,
    encoder_noise: Array | None = None,
    sample_posterior: bool = True,
    mesh: Mesh | None = None,
    output: str = "images",
) -> np.ndarray:
    """Image-to-image (diffusers ``StableDiffusionImg2ImgPipeline``; Meng et al. 2022, SDEdit).

    x_start = add_noise(z_0, ε, start) with z_0 the scaled VAE latent of ``images`` (NHWC,
    [-1, 1]) and start = ``sampler.img2img_start(strength)``; then the remaining steps.
    ``sample_posterior`` draws z_0 from the VAE posterior (diffusers' default) rather than
    its mean; ``noise`` / ``encoder_noise`` (NCHW) override the key-derived ε and posterior noise.
    """
    if components.kind != "txt2img":
        raise ValueError(f"img2img needs a txt2img model, got kind {components.kind!r}")
    x = _check_images(components, images)
    n = x.shape[0]
    cond = _as_embeds(components, params, prompts, n, "prompts")
    smp = make_sampler(components, sampler, num_steps, eta)
    start = smp.img2img_start(strength)
    keys = row_keys(key, n)
    lat_shape = (
        components.latent_channels,
        x.shape[1] // components.vae_scale_factor,
        x.shape[2] // components.vae_scale_factor,
    )
    if sample_posterior and encoder_noise is None:
        encoder_noise = _normal_rows(keys, _VAE, lat_shape)
    z0 = _vae_encode_rows(components, params, x, encoder_noise if sample_posterior else None,
                          True, mesh)
    use_cfg = _uses_cfg(guidance_scale)
    un = (
        _as_embeds(components, params, [""] if negative is None else negative, n, "negative")
        if use_cfg
        else None
    )
    return _run(
        components,
        params,
        smp,
        mode="cfg" if use_cfg else "none",
        key=keys,
        cond=cond,
        uncond=un,
        latent_shape=lat_shape,
        latents=noise,
        init_latents=z0,
        start_index=start,
        guidance_scale=guidance_scale,
        mesh=mesh,
        output=output,
    )


def instruct_pix2pix(
    components: SDComponents,
    params: dict,
    images: Any,
    prompts: Prompts | Array,
    key: Array,
    *,
    text_guidance: float = 7.5,
    image_guidance: float = 1.5,
    num_steps: int = 100,
    sampler: str | schedulers.Sampler = "euler_ancestral",
    latents: Array | None = None,
    mesh: Mesh | None = None,
    output: str = "images",
) -> np.ndarray:
    """InstructPix2Pix (Brooks et al. 2023; diffusers ``StableDiffusionInstructPix2PixPipeline``).

    The 8-channel UNet sees [x_t ; E(image)] (unscaled VAE posterior mode of ``images``, NHWC
    in [-1, 1]); dual guidance over (text+image, image, neither) with ``text_guidance`` s_T and
    ``image_guidance`` s_I (eq. 3). DiffuseMix uses ``text_guidance=4``, euler_ancestral, 256².
    """
    if components.kind != "ip2p":
        raise ValueError(f"instruct_pix2pix needs an ip2p model, got kind {components.kind!r}")
    x = _check_images(components, images)
    n = x.shape[0]
    cond = _as_embeds(components, params, prompts, n, "prompts")
    uncond = _as_embeds(components, params, [""], n, "uncond")
    image_latents = _vae_encode_rows(components, params, x, None, False, mesh)
    smp = make_sampler(components, sampler, num_steps)
    return _run(
        components,
        params,
        smp,
        mode="ip2p",
        key=key,
        cond=cond,
        uncond=uncond,
        latent_shape=tuple(image_latents.shape[1:]),
        latents=latents,
        image_latents=image_latents,
        guidance_scale=text_guidance,
        image_guidance_scale=image_guidance,
        mesh=mesh,
        output=output,
    )


def unclip_variation(
    components: SDComponents,
    params: dict,
    image_embeds: Array,
    key: Array,
    *,
    prompts: Prompts | Array = "",
    noise_level: int = 0,
    guidance_scale: float = 10.0,
    num_steps: int = 20,
    sampler: str | schedulers.Sampler = "ddim",
    eta: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    latents: Array | None = None,
    embed_noise: Array | None = None,
    mesh: Mesh | None = None,
    output: str = "images",
) -> np.ndarray:
    """Image variations conditioned on CLIP image embeddings (stable-diffusion-2-1-unclip;
    diffusers ``StableUnCLIPImg2ImgPipeline``), optionally with a text prompt.

    ``image_embeds`` [N, D] from :func:`clip_image_embeds`; they are noise-augmented at
    ``noise_level`` (:func:`augdiff.sd.unclip.noise_image_embeddings`, ε from the row key or
    ``embed_noise``) and added to the UNet's time embedding. CFG uses the empty prompt and a
    zero class input as the unconditional branch (as diffusers).
    """
    if components.kind != "unclip":
        raise ValueError(f"unclip_variation needs an unclip model, got kind {components.kind!r}")
    e = jnp.asarray(image_embeds, jnp.float32)
    if e.ndim != 2 or e.shape[-1] != components.image_embed_dim:
        raise ValueError(f"image_embeds must be [N, {components.image_embed_dim}], got {e.shape}")
    n = e.shape[0]
    keys = row_keys(key, n)
    if embed_noise is None:
        embed_noise = _normal_rows(keys, _EMBED, (e.shape[-1],))
    class_cond = noise_image_embeddings(components, params, e, noise_level, embed_noise)
    cond = _as_embeds(components, params, prompts, n, "prompts")
    use_cfg = _uses_cfg(guidance_scale)
    smp = make_sampler(components, sampler, num_steps, eta)
    return _run(
        components,
        params,
        smp,
        mode="cfg" if use_cfg else "none",
        key=keys,
        cond=cond,
        uncond=_as_embeds(components, params, [""], n, "uncond") if use_cfg else None,
        latent_shape=latent_shape(components, height, width),
        latents=latents,
        class_cond=class_cond,
        class_uncond=jnp.zeros_like(class_cond) if use_cfg else None,
        guidance_scale=guidance_scale,
        mesh=mesh,
        output=output,
    )
