"""Diffusion Inversion on a class-conditional EDM, not on Stable Diffusion: seed 003's method
(and seed 001's embedding mixes) run on augdiff's own generator, as an analog.

Seed 003 (Zhou et al. 2023, §3) inverts every real image into a conditioning vector of a
frozen text-to-image model and samples new training images from perturbed vectors. No
Stable Diffusion weights exist where augdiff is tested, but the shipped class-conditional EDM
(``augdiff/assets/generator_cifar10``) has a conditioning input of its own: the one-hot class
vector ``e_c ∈ ℝ^K`` that EDM's SongUNet maps to the noise embedding (``map_label``, a linear
layer of ``√K · e_c``). The analog replaces that one-hot by a learned ``c_i ∈ ℝ^K`` per image,
everything else frozen.

**Stage 1 — inversion** (seed 003 eq. 2 with EDM's loss, eq. 8 of Karras et al. 2022)::

    c_i = argmin_c  E_{ln σ ~ N(P_mean, P_std²), n ~ N(0, σ² I)}  λ(σ) ‖D_θ(x_i + n; σ, c) − x_i‖²

one (σ, n) per image per step from ``fold_in(fold_in(PRNGKey(seed), image id), step)``,
minimised by AdamW (the paper's constant lr 0.03, weight decay 0.01) on the *sum* of the
per-image losses, so each vector's gradient and Adam state are its own and inverting images
in groups equals inverting them one by one. Vectors start as the original code's
``nn.Linear`` init, ``U(±1/√fan_in)`` (``init='torch_linear'``; ``'class'`` starts at the
image's one-hot). Snapshots at ``save_steps`` stand in for the paper's 1K/2K/3K checkpoints.
Each finished group is one ``.npz`` under ``<inversion dir>/`` with the settings it was made
with; a file whose settings differ, whose zip CRC fails, or whose vectors are not finite is
refused with an error naming it (delete it to redo that group).

**Stage 2 — sampling** (seed 003 §3.2, App. B.2.2). Example ``e = i·V + k`` is variant ``k``
of vector ``i``; variant ``k`` is (checkpoint, guidance weight, partner slot) =
:func:`augdiff.methods.diffinv.variant_grid` ``[k]``. Vector ``i`` gets ``images_per_vector``
variants, ``k = (i·m + t) mod V`` for ``t < m``, so the grid is covered evenly. The
conditioning of example ``e`` (row key ``r = fold_in(PRNGKey(seed + 1), e)``):

- ``conditioning='inverted'``, ``augment='none'`` (Diffusion Inversion):
  ``ĉ = 0.9 c_i + 0.1 c_j + 0.1 ε`` with ``c_j`` a same-class partner
  (:func:`augdiff.methods.diffinv.perturb`, :func:`~augdiff.methods.diffinv.partner_set`);
- ``conditioning='inverted'``, ``augment='embed_cutmix+dropout'`` etc. (seed 001's
  augmented conditioning on the inverted vectors): Mixup / CutMix of ``c_i`` with a uniformly
  drawn same-class partner, then Dropout(p) (:mod:`augdiff.methods.augcond`, its streams);
- ``conditioning='class'`` (plain class-conditional sampling, the comparison): ``e_{y_i}``.

Guidance is classifier-free with the mean vector as the unconditional input (paper §3.2):
``D̂ = D(x; σ, ū) + s (D(x; σ, ĉ) − D(x; σ, ū))``, ``s = 1 + w`` (``guidance_form='paper'``),
``ū`` the mean of every learned vector at that checkpoint (for ``'class'``: the mean one-hot,
the classes' frequencies), sampled by EDM's Heun solver from ``x_T = σ_max · n``,
``n ~ N(0, I)`` drawn from ``fold_in(r, 0)``. So an image depends only on its example number,
never on the batch, the device count or a resume.
"""

from __future__ import annotations

import functools
import io
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from augdiff import distributed
from augdiff.config import ConfigError, resolve_path
from augdiff.data.pixels import edm_to_uint8, to_signed
from augdiff.data.sources import open_real_source
from augdiff.data.store import StoreWriter, example_keys, model_identity, pending_batches
from augdiff.edm import core, samplers
from augdiff.edm.model import open_generator
from augdiff.files import atomic_write, write_json
from augdiff.methods import augcond, diffinv
from augdiff.methods.inversion import make_optimizer, optimise_rows
from augdiff.sd.guidance import cfg_scale

Array = jax.Array

CONDITIONINGS = ("inverted", "class")
INITS = ("torch_linear", "class")
FORMAT = "augdiff.edm_inversion/1"


# ----------------------------------------------------------------------------- stage 1


def step_noise(image_keys: Array, step: Array | int, image_shape: Sequence[int],
               cfg: core.EDMConfig) -> tuple[Array, Array]:
    """(σ [B], n [B, H, W, C]) of every image at ``step``: ``ln σ ~ N(P_mean, P_std²)`` from
    ``fold_in(fold_in(image_key, step), 0)``, ``n ~ N(0, σ² I)`` from ``…, 1)``."""

    def one(k: Array) -> tuple[Array, Array]:
        ks = jax.random.fold_in(k, step)
        sigma = core.sample_sigma_train(jax.random.fold_in(ks, 0), (), cfg)
        n = jax.random.normal(jax.random.fold_in(ks, 1), tuple(image_shape), jnp.float32)
        return sigma, n * sigma

    return jax.vmap(one)(image_keys)


def inversion_loss(net_apply: Callable[..., Array], params: Any, cfg: core.EDMConfig,
                   vectors: Array, images: Array, sigma: Array, noise: Array) -> Array:
    """Per-image ``λ(σ) · mean‖D_θ(x + n; σ, c) − x‖²`` [B] with ``c`` = ``vectors`` [B, K]
    in place of the one-hot class label (EDM eq. 8, the network frozen)."""
    d = core.denoise(net_apply, params, images + noise, sigma, {"class": vectors},
                     sigma_data=cfg.sigma_data)
    err = jnp.mean(jnp.square(d - images), axis=(1, 2, 3))
    return core.loss_weight(sigma, cfg.sigma_data) * err


@functools.lru_cache(maxsize=8)
def _inversion_steps(net_apply: Callable[..., Array], cfg: core.EDMConfig,
                     learning_rate: float, weight_decay: float) -> Callable[..., Any]:
    """``run(params, vectors, opt_state, images, image_keys, start, stop)``: AdamW steps
    ``[start, stop)`` in one jitted ``fori_loop``; returns (vectors, opt_state, last losses)."""
    optimizer = make_optimizer(learning_rate, weight_decay)

    def run(params, vectors, opt_state, images, image_keys, start, stop):
        def per_image_loss(v, step):
            sigma, noise = step_noise(image_keys, step, images.shape[1:], cfg)
            return inversion_loss(net_apply, params, cfg, v, images, sigma, noise)

        return optimise_rows(per_image_loss, optimizer, vectors, opt_state, start, stop)

    return jax.jit(run)


def initial_vectors(labels: np.ndarray, ids: np.ndarray, num_classes: int, *, init: str,
                    seed: int, fan_in: int = 100) -> np.ndarray:
    """Starting vectors [B, K]: ``torch_linear`` ``U(±1/√fan_in)`` from
    ``fold_in(PRNGKey(seed + 2), id)`` (the original code's ``nn.Linear`` init), or ``class``,
    the image's one-hot."""
    if init == "class":
        return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, np.int64)]
    if init != "torch_linear":
        raise ConfigError(f"edm_diffinv.inversion.init must be one of {INITS}, got {init!r}")
    bound = 1.0 / np.sqrt(float(fan_in))
    base = jax.random.PRNGKey(int(seed) + 2)
    draw = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(base, i), (num_classes,),
                                                 minval=-bound, maxval=bound))
    return np.asarray(draw(jnp.asarray(np.asarray(ids, np.uint32))), np.float32)


def invert_group(gen: dict[str, Any], images: np.ndarray, labels: np.ndarray, ids: np.ndarray,
                 *, steps: int, save_steps: Sequence[int], learning_rate: float,
                 weight_decay: float, init: str, seed: int, fan_in: int = 100,
                 progress: bool = False) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Invert one group of images (uint8 [B, H, W, C]) through the frozen generator ``gen``
    (:func:`augdiff.edm.model.open_generator`): the vectors at every save step
    ``{step: [B, K]}`` and the per-image loss of the last step."""
    x = jnp.asarray(to_signed(images))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(int(seed)), i))(
        jnp.asarray(np.asarray(ids, np.uint32)))
    v = jnp.asarray(initial_vectors(labels, ids, int(gen["num_classes"]), init=init,
                                    seed=seed, fan_in=fan_in))
    run = _inversion_steps(gen["net_apply"], gen["edm"], float(learning_rate),
                           float(weight_decay))
    state = make_optimizer(learning_rate, weight_decay).init(v)
    snaps: dict[int, np.ndarray] = {}
    loss = np.zeros(len(ids), np.float32)
    start = 0
    for stop in sorted({int(s) for s in save_steps if 0 < int(s) <= steps} | {int(steps)}):
        v, state, last = run(gen["params"], v, state, x, keys, start, stop)
        snaps[stop] = np.asarray(v, np.float32)
        loss = np.asarray(last, np.float32)
        start = stop
        if progress:
            tqdm.write(f"edm_diffinv: group of {len(ids)} images at step {stop}/{steps}: "
                       f"loss {float(loss.mean()):.4f}")
    return snaps, loss


def _settings(config: Any, gen: dict[str, Any]) -> dict[str, Any]:
    """What a group file must have been made with to be reused (checked on load)."""
    inv = config.inversion
    return {"format": FORMAT, "generator": gen["checkpoint"], "generator_step": gen["step"],
            "seed": int(config.seed), "steps": int(inv.steps),
            "save_steps": sorted(int(s) for s in inv.save_steps),
            "learning_rate": float(inv.learning_rate), "weight_decay": float(inv.weight_decay),
            "init": str(inv.init), "fan_in": int(inv.fan_in),
            "image_size": int(gen["size"])}


def _group_file(folder: str, g: int) -> str:
    return os.path.join(folder, f"group-{g:05d}.npz")


def read_group(path: str, settings: dict[str, Any], ids: np.ndarray) -> dict[str, np.ndarray]:
    """A finished group's arrays, verified: the zip's CRCs, the settings it was made with,
    its image ids and finite vectors. Anything else is a :class:`ConfigError` naming the file."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            if bad is not None:
                raise ValueError(f"member {bad} fails its CRC")
        with np.load(path, allow_pickle=False) as f:
            d = {k: f[k] for k in f.files}
        meta = json.loads(str(d["settings"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ConfigError(f"edm_diffinv: inversion file {path} is unreadable ({e}); delete it "
                          "to invert that group again") from None
    if meta != settings:
        diff = sorted(k for k in set(meta) | set(settings) if meta.get(k) != settings.get(k))
        raise ConfigError(f"edm_diffinv: inversion file {path} was made with other settings "
                          f"({', '.join(diff)}); delete it or use another inversion dir")
    if not np.array_equal(d["ids"], ids):
        raise ConfigError(f"edm_diffinv: inversion file {path} holds other images than the "
                          "data subset's; delete it or use another inversion dir")
    if not np.all(np.isfinite(d["snapshots"])):
        raise ConfigError(f"edm_diffinv: inversion file {path} holds non-finite vectors")
    return d


def run_inversion(config: Any, gen: dict[str, Any], real: Any, folder: str) -> dict[str, Any]:
    """Invert every image of the real subset, group by group (``inversion.group_size``; group
    ``g`` belongs to process ``g mod P``), each finished group written atomically to
    ``folder/group-g.npz``; finished groups are verified and kept (resume)."""
    inv = config.inversion
    n, bs = len(real), int(inv.group_size)
    settings = _settings(config, gen)
    size = int(gen["size"])
    done = 0
    for g in range(jax.process_index(), -(-n // bs), jax.process_count()):
        ids = np.arange(g * bs, min((g + 1) * bs, n))
        path = _group_file(folder, g)
        if os.path.isfile(path):
            read_group(path, settings, ids)
            continue
        images = np.stack([_image_at(real, int(i), size) for i in ids])
        labels = np.asarray(real.labels)[ids]
        snaps, loss = invert_group(
            gen, images, labels, ids, steps=int(inv.steps), save_steps=inv.save_steps,
            learning_rate=float(inv.learning_rate), weight_decay=float(inv.weight_decay),
            init=str(inv.init), seed=int(config.seed), fan_in=int(inv.fan_in),
            progress=jax.process_index() == 0)
        steps = sorted(snaps)
        buf = io.BytesIO()
        np.savez(buf, ids=ids, labels=labels, steps=np.asarray(steps, np.int64),
                 snapshots=np.stack([snaps[s] for s in steps]), loss=loss,
                 settings=np.asarray(json.dumps(settings, sort_keys=True)))
        atomic_write(path, buf.getvalue())
        done += 1
    distributed.barrier("edm_diffinv inversion")
    return {"groups": -(-n // bs), "groups_done_now": done, "images": n}


def load_inversion(config: Any, gen: dict[str, Any], num_images: int,
                   folder: str) -> dict[int, np.ndarray]:
    """``{save step: vectors [N, K]}`` of every image, from the verified group files."""
    bs = int(config.inversion.group_size)
    settings = _settings(config, gen)
    parts = []
    for g in range(-(-num_images // bs)):
        path = _group_file(folder, g)
        if not os.path.isfile(path):
            raise ConfigError(f"edm_diffinv: inversion file {path} is missing; run the "
                              "inversion (stages '1') first")
        parts.append(read_group(path, settings, np.arange(g * bs, min((g + 1) * bs,
                                                                      num_images))))
    steps = [int(s) for s in parts[0]["steps"]]
    return {s: np.concatenate([p["snapshots"][i] for p in parts]) for i, s in enumerate(steps)}


def _image_at(real: Any, i: int, size: int) -> np.ndarray:
    img = np.asarray(real[i]["image"], np.uint8)
    if img.shape[:2] != (size, size):
        raise ConfigError(f"edm_diffinv: image {real.name_of(i)} is {img.shape[:2]}, the "
                          f"generator's size is {size}; set data.image_size={size}")
    return img


# ----------------------------------------------------------------------------- stage 2


def variant_of(vector: int, t: int, images_per_vector: int, num_variants: int) -> int:
    """Variant ``k = (i·m + t) mod V`` of vector ``i``'s ``t``-th image: consecutive vectors
    take consecutive variants, so every (checkpoint, w, partner slot) is used evenly."""
    return (int(vector) * int(images_per_vector) + int(t)) % int(num_variants)


def plan(num_vectors: int, images_per_vector: int, num_variants: int,
         ids: np.ndarray) -> list[dict[str, Any]]:
    """Every example: store key, vector row, variant and example number ``e = i·V + k``."""
    if not 1 <= images_per_vector <= num_variants:
        raise ConfigError(f"edm_diffinv.sampling.images_per_vector must be in 1..{num_variants}"
                          f" (the variants of a vector), got {images_per_vector}")
    out = []
    for i in range(num_vectors):
        for t in range(images_per_vector):
            k = variant_of(i, t, images_per_vector, num_variants)
            out.append(dict(key=f"edi-r{int(ids[i]):07d}-v{k:03d}", row=i, variant=k,
                            example=i * num_variants + k))
    return out


def conditioning(keys: Array, c: np.ndarray, partner: np.ndarray, *, augment: str,
                 perturbation: diffinv.Perturbation, alpha: float, dropout_p: float,
                 cutmix_mode: str = "block") -> np.ndarray:
    """The conditioning of each example [B, K] from its vector ``c`` and partner's.

    ``augment='none'``: Diffusion Inversion's ``(1 − s) c + s c_partner + λ ε``;
    otherwise seed 001's mix (``embed_mixup`` / ``embed_cutmix``) of ``c`` and the partner,
    then Dropout(``dropout_p``) when the spec names ``dropout``
    (:class:`augdiff.methods.augcond.Augmentation`)."""
    if augment == "none":
        out = diffinv.perturb(keys, c[:, None, :], partner[:, None, :], perturbation)
        return np.asarray(out)[:, 0, :]
    aug = augcond.Augmentation.parse(augment, alpha=alpha, dropout_p=dropout_p,
                                     embed_cutmix_mode=cutmix_mode)
    if aug.mix.startswith("pixel"):
        raise ConfigError(f"edm_diffinv.augment={augment!r}: pixel mixes need an image "
                          "encoder; the analog mixes the inverted vectors (embed_*)")

    e, _ = augcond.mix_embeddings(aug, jnp.asarray(keys), jnp.asarray(c), jnp.asarray(partner))
    return np.asarray(e)


@functools.lru_cache(maxsize=8)
def _sampler(net_apply: Callable[..., Array], cfg: core.EDMConfig, image_shape: tuple,
             num_steps: int) -> Callable[..., Array]:
    """``draw(params, keys [B], cond [B, K], uncond [B, K], scale [B])`` → images in [−1, 1]:
    Heun from ``x_T = σ_max · N(fold_in(key, 0))`` under mean-vector CFG, one example at a
    time (vmapped), so an image does not depend on its batch."""
    sigmas = core.sigma_schedule(int(num_steps), cfg.sigma_min, cfg.sigma_max, cfg.rho)

    def one(params, key, c, u, s):
        x_t = jax.random.normal(jax.random.fold_in(key, 0), (1, *image_shape)) * sigmas[0]

        def den(x, sigma, lab):
            return core.denoise(net_apply, params, x, sigma, {"class": lab},
                                sigma_data=cfg.sigma_data)

        denoiser = samplers.guided_denoiser(den, c[None], u[None], s)
        return samplers.heun_sampler(denoiser, x_t, sigmas)[0]

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, 0)))


def generate(config: Any) -> dict[str, Any]:
    """``augdiff generate`` with ``method='edm_diffinv'``: invert (stage ``1``), then sample
    (stage ``2``) into the store, each resumable."""
    gen_dir = resolve_path(str(config.generator), must_exist=True)
    gen = open_generator(gen_dir)
    if not gen["class_conditional"] or gen["mode"] != "dm":
        raise ConfigError(f"edm_diffinv: generator {gen_dir} must be a class-conditional DM "
                          "EDM (its one-hot input is what gets inverted)")
    real = open_real_source(config.data, "train")
    if real.num_classes != gen["num_classes"]:
        raise ConfigError(f"edm_diffinv: the data has {real.num_classes} classes, the "
                          f"generator {gen['num_classes']}")
    mode = str(config.conditioning)
    if mode not in CONDITIONINGS:
        raise ConfigError(f"edm_diffinv.conditioning must be one of {CONDITIONINGS}, "
                          f"got {mode!r}")
    folder = str(config.inversion.dir) or os.path.join(str(config.workdir), "inversion")
    summary: dict[str, Any] = {"generator": gen["checkpoint"], "generator_step": gen["step"],
                               "conditioning": mode, "inversion_dir": folder}
    stages = str(config.get("stages", "12"))
    if mode == "inverted" and "1" in stages:
        summary["inversion"] = run_inversion(config, gen, real, folder)
    if "2" in stages:
        summary["sampling"] = run_sampling(config, gen, real, folder)
    if jax.process_index() == 0:
        write_json(os.path.join(str(config.workdir), "edm_diffinv_summary.json"), summary)
    return summary


def run_sampling(config: Any, gen: dict[str, Any], real: Any, folder: str) -> dict[str, Any]:
    """Every planned example into ``store_dir`` (default ``<workdir>/store``); resumable."""
    s = config.sampling
    mode, augment = str(config.conditioning), str(config.augment)
    labels = np.asarray(real.labels, np.int64)
    n, k_dim = len(real), int(gen["num_classes"])
    if mode == "inverted":
        snaps = load_inversion(config, gen, n, folder)
        ckpts = [int(c) for c in s.checkpoints]
        missing = [c for c in ckpts if c not in snaps]
        if missing:
            raise ConfigError(f"edm_diffinv.sampling.checkpoints {missing} were not saved by "
                              f"the inversion (saved: {sorted(snaps)})")
    else:
        snaps, ckpts = {0: np.eye(k_dim, dtype=np.float32)[labels]}, [0]
        augment = "none"
    uncond = {c: snaps[c].mean(axis=0) for c in ckpts}  # ū: the mean vector (paper §3.2)
    scales = [float(w) for w in s.guidance]
    n_part = int(s.num_partners) if mode == "inverted" and augment == "none" else 1
    grid = diffinv.variant_grid(ckpts, scales, n_part)
    pert = diffinv.Perturbation(noise_scale=float(s.noise_scale),
                                interpolation_strength=float(s.interpolation_strength))
    ids = np.arange(n)
    examples = plan(n, int(s.images_per_vector), len(grid), ids)
    mine = examples[distributed.process_slice(len(examples))]
    base = jax.random.PRNGKey(int(config.seed) + 1)
    draw = _sampler(gen["net_apply"], gen["edm"], tuple(gen["image_shape"]), int(s.num_steps))
    form = str(s.guidance_form)
    manifest = dict(conditioning=mode, augment=augment, generator_step=int(gen["step"]),
                    checkpoints=ckpts, guidance=scales, guidance_form=form,
                    num_partners=n_part, noise_scale=pert.noise_scale,
                    interpolation_strength=pert.interpolation_strength,
                    alpha=float(s.alpha), dropout_p=float(s.dropout_p),
                    images_per_vector=int(s.images_per_vector), sampler="heun",
                    steps=int(s.num_steps), nfe=samplers.nfe("heun", int(s.num_steps)),
                    seed=int(config.seed), image_size=int(gen["size"]),
                    inversion=_settings(config, gen) if mode == "inverted" else None)
    store_dir = str(config.store_dir) or os.path.join(str(config.workdir), "store")
    written = 0
    with StoreWriter(store_dir, method="edm_diffinv", config=manifest,
                     model=model_identity(gen["checkpoint"], kind="edm", step=int(gen["step"])),
                     class_names=list(real.class_names)) as store:
        for batch in pending_batches(store, mine, int(s.batch_size), desc="edm_diffinv"):
            keys = example_keys(base, [it["example"] for it in batch])
            rows = np.array([it["row"] for it in batch])
            combos = [grid[it["variant"]] for it in batch]
            if mode == "class":
                partners = rows
            elif augment == "none":
                partners = np.array([diffinv.partner_set(
                    int(config.seed), int(r), ci * len(scales) + wi, int(r), labels, n_part)[pi]
                    for r, (ci, wi, pi) in zip(rows, combos, strict=True)])
            else:
                partners = augcond.same_class_partners(keys, rows, labels)
            c_i = np.stack([snaps[ckpts[ci]][r] for r, (ci, _, _) in
                            zip(rows, combos, strict=True)])
            c_j = np.stack([snaps[ckpts[ci]][j] for j, (ci, _, _) in
                            zip(partners, combos, strict=True)])
            cond = c_i if mode == "class" else conditioning(
                keys, c_i, c_j, augment=augment, perturbation=pert, alpha=float(s.alpha),
                dropout_p=float(s.dropout_p))
            un = np.stack([uncond[ckpts[ci]] for ci, _, _ in combos])
            scale = np.array([cfg_scale(scales[wi], form) for _, wi, _ in combos], np.float32)
            images = edm_to_uint8(np.asarray(draw(gen["params"], keys, jnp.asarray(cond),
                                                  jnp.asarray(un), jnp.asarray(scale))))
            for j, it in enumerate(batch):
                ci, wi, pi = combos[j]
                r = int(rows[j])
                prov = dict(vector_id=r, parent=r, parent_name=real.name_of(r),
                            partner=int(partners[j]), variant=it["variant"],
                            checkpoint=ckpts[ci], guidance=scales[wi], cfg_scale=float(scale[j]),
                            conditioning=mode, augment=augment, example=it["example"],
                            seed=int(config.seed))
                written += bool(store.add(it["key"], images[j], int(labels[r]), source=1,
                                          provenance=prov))
    return {"store": store_dir, "planned": len(examples), "this_process": len(mine),
            "written": written}
