"""Diffusion Inversion (Zhou, Sahak & Ba 2023, "Training on Thin Air"): stage 2 and the command.

Reference code: yongchaoz/diffusion_inversion. Stage 1, the conditioning vectors learned from
the real images, is :mod:`augdiff.methods.inversion`.

**Stage 2 — sample from perturbed vectors** (paper §3.2, App. B.2.2). Classifier-free guidance
whose unconditional input ``ū`` is the mean of the learned vectors:

- ``uncond='global'`` (paper): ``ū = (1/N) Σ_i c_i`` over every vector;
- ``uncond='group'`` (code: ``emb.weight.mean(dim=1)``, the mean of one stage-1 group);
- ``uncond='class'`` (code for MedMNIST, where a group is one class).

Guidance weight ``w`` in the form of ``guidance_form`` (:func:`augdiff.sd.guidance.cfg_scale`):
``paper`` ε̂ = (1 + w) ε(ĉ) − w ε(ū) (the paper's equation, the default) or ``diffusers``
ε̂ = ε(ū) + w (ε(ĉ) − ε(ū)) (the original code's ``guidance_scale``). The configs' w ∈ {2, 3, 4}
therefore mean UNet scales 3, 4, 5 under ``paper`` and 2, 3, 4 under ``diffusers``.

Perturbation of vector ``c_i`` with partner ``c_j`` (another vector of the same class):

    ĉ = (1 − s) c_i + s c_j        (interpolation, strength s = 0.1: ĉ = 0.9 c_i + 0.1 c_j)
    ĉ ← ĉ + λ ε,  ε ~ N(0, I)     (Gaussian noise λ = 0.1, applied after the interpolation)

(the paper's ĉ = α c₁ + (1 − α) c₂ with α = 1 − s; the code builds the one-hot mix
``e_i + s (e_j − e_i)`` and adds the noise to the embedded result).

**The 45 variants** of a vector are the grid checkpoints × guidance weights × partners:
1K/2K/3K stage-1 steps × w ∈ {2, 3, 4} × 5 partners; variant ``k`` is
``(checkpoint, w, partner slot) = unravel(k, (C, W, P))``. For each (vector, checkpoint, w) the P
partners are distinct same-class vectors drawn without replacement (cycling when the class has
fewer; the vector itself only when it is alone in its class). Sampling uses SD-1.4's default
PNDM scheduler (PLMS with ``skip_prk_steps``) with 100 steps. Each image's provenance records
the vector, partner, checkpoint, w, the guidance form and scale, s, λ and the seed.

Keys: vector ``i``'s variant ``k`` is example ``e = i·K + k`` with row key
``r = fold_in(PRNGKey(seed + 1), e)``: latent noise ``fold_in(r, 0)`` (as the SD pipelines),
ε of the perturbation ``fold_in(r, 21)``. Partners come from a numpy ``SeedSequence`` of
``(seed, vector id, checkpoint index, w index)``, so they do not depend on batching either.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from augdiff import distributed
from augdiff.data.pixels import unit_to_store
from augdiff.data.sources import open_real_source
from augdiff.data.store import StoreWriter, example_keys, pending_batches
from augdiff.methods.inversion import load_inversion, run_stage1
from augdiff.sd import guidance, loading, pipelines, tiny
from augdiff.sd.generate import model_identity_of

Array = jax.Array

STREAM_NOISE = 21  # fold_in stream of the perturbation's ε (module docstring, Keys)
UNCOND_MODES = ("global", "group", "class")


def unconditional_vector(vectors: Array) -> Array:
    """ū = (1/N) Σ_i c_i: the mean of every learned vector, CFG's unconditional input."""
    v = jnp.asarray(vectors, jnp.float32)
    if v.ndim != 3 or v.shape[0] == 0:
        raise ValueError(
            f"diffinv: vectors must be a non-empty [N, tokens, d] array, got {v.shape}"
        )
    return jnp.mean(v, axis=0)


def unconditional_rows(
    vectors: np.ndarray, rows: np.ndarray, mode: str, *, groups: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """The unconditional input of each row ``[len(rows), tokens, d]``.

    ``global`` (paper): the mean of all ``vectors``; ``group`` (the original code): the mean of
    the vectors of the row's stage-1 group; ``class``: the mean of the row's class.
    """
    v = np.asarray(vectors, np.float32)
    rows = np.asarray(rows, np.int64)
    if mode == "global":
        return np.broadcast_to(np.asarray(unconditional_vector(v)), (len(rows), *v.shape[1:]))
    if mode not in UNCOND_MODES:
        raise ValueError(f"diffinv: uncond must be one of {UNCOND_MODES}, got {mode!r}")
    by = np.asarray(groups if mode == "group" else labels)
    means = {int(g): v[by == g].mean(axis=0) for g in np.unique(by[rows])}
    return np.stack([means[int(by[r])] for r in rows]) if len(rows) else v[:0]


def gaussian_perturbation(key: Array, c: Array, noise_scale: float | Array) -> Array:
    """ĉ = c + λ ε, ε ~ N(0, I) drawn from ``fold_in(key, 21)``."""
    eps = jax.random.normal(jax.random.fold_in(key, STREAM_NOISE), c.shape, jnp.float32)
    return c + noise_scale * eps


def interpolate(c1: Array, c2: Array, alpha: float | Array) -> Array:
    """ĉ = α c₁ + (1 − α) c₂ (paper §3.2); strength s = 1 − α is the partner's share."""
    return alpha * c1 + (1.0 - alpha) * c2


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """Stage-2 perturbation: interpolation with strength ``s`` (ĉ = (1−s) c + s c_partner),
    then Gaussian noise ``λ`` (paper defaults s = λ = 0.1)."""

    noise_scale: float = 0.1
    interpolation_strength: float = 0.1

    def __post_init__(self) -> None:
        if self.noise_scale < 0:
            raise ValueError(f"diffinv: noise_scale must be >= 0, got {self.noise_scale}")
        if not 0.0 <= self.interpolation_strength <= 1.0:
            raise ValueError(
                "diffinv: interpolation_strength must be in [0, 1], got "
                f"{self.interpolation_strength}"
            )


@jax.jit
def _perturb_rows(keys, c, partner, noise_scale, strength):
    def one(k, ci, pi):
        return gaussian_perturbation(k, interpolate(ci, pi, 1.0 - strength), noise_scale)

    return jax.vmap(one)(keys, c, partner)


def perturb(keys: Array, c: Array, partner: Array, perturbation: Perturbation) -> Array:
    """Perturbed vectors ``ĉ = (1 − s) c + s c_partner + λ ε`` [B, tokens, d]."""
    return _perturb_rows(
        jnp.asarray(keys),
        jnp.asarray(c, jnp.float32),
        jnp.asarray(partner, jnp.float32),
        jnp.float32(perturbation.noise_scale),
        jnp.float32(perturbation.interpolation_strength),
    )


def variant_grid(
    checkpoints: Sequence[int], guidance: Sequence[float], num_partners: int
) -> list[tuple[int, int, int]]:
    """Variant k ↦ (checkpoint index, guidance index, partner slot), k = 0..C·W·P−1 (C-order):
    the paper's 45 = 3 checkpoints × 3 guidance weights × 5 partners."""
    c, w, p = len(checkpoints), len(guidance), int(num_partners)
    if c == 0 or w == 0 or p < 1:
        raise ValueError(
            f"diffinv: need >= 1 checkpoint, guidance weight and partner, got {c}, {w}, {p}"
        )
    return [tuple(int(x) for x in np.unravel_index(k, (c, w, p))) for k in range(c * w * p)]


def partner_set(
    seed: int, vector: int, combo: int, row: int, labels: np.ndarray, num: int
) -> np.ndarray:
    """``num`` partner rows of the same class as ``row`` for one (vector, checkpoint, w) combo.

    Distinct, drawn without replacement from the class's other rows (numpy ``SeedSequence``
    of ``(seed, vector, combo)``); cycled when the class has fewer than ``num`` others; the row
    itself when it is alone. (The original code draws from the whole class including the row
    itself and tops up from other classes when the class is too small.)
    """
    labels = np.asarray(labels)
    others = np.flatnonzero(labels == labels[row])
    others = others[others != row]
    if len(others) == 0:
        return np.full(num, row, np.int64)
    rng = np.random.default_rng([int(seed), int(vector), int(combo)])
    pick = rng.permutation(others)
    return np.resize(pick, num).astype(np.int64)


def sample(
    components: loading.SDComponents,
    params: dict,
    cond: Array,
    uncond: Array,
    guidance_weights: Array,
    keys: Array,
    *,
    guidance_form: str = "paper",
    num_steps: int = 100,
    sampler: str = "pndm",
    eta: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    mesh: Mesh | None = None,
    output: str = "images",
) -> np.ndarray:
    """Stage-2 CFG sampling from learned vectors with a **per-row** guidance weight.

    ``guidance_form='paper'``: ε̂_b = (1 + w_b) ε(x_t, t, c_b) − w_b ε(x_t, t, u_b) (paper
    §3.2); ``'diffusers'``: ε̂_b = ε(u_b) + w_b (ε(c_b) − ε(u_b)) (the original code).
    ``uncond`` is one row [tokens, d] (e.g. :func:`unconditional_vector`) or [B, tokens, d];
    row b's randomness comes from ``keys[b]``. This is the SD core's
    :func:`augdiff.sd.pipelines.generate_from_embeddings` (one jit) with per-row scales
    ``guidance.cfg_scale(w, form)``. Returns [B, H, W, 3] in [0, 1] (or the final latents
    with ``output='latents'``).
    """
    un = jnp.asarray(uncond, jnp.float32)
    w = np.asarray(guidance_weights, np.float32)
    return pipelines.generate_from_embeddings(
        components,
        params,
        cond,
        keys,
        uncond=un[None] if un.ndim == 2 else un,
        guidance_scale=jnp.asarray(guidance.cfg_scale(w, guidance_form), jnp.float32),
        num_steps=num_steps,
        sampler=sampler,
        eta=eta,
        height=height,
        width=width,
        mesh=mesh,
        output=output,
    )


def run_stage2(
    config: Any, components: loading.SDComponents, params: dict, real: Any, mesh: Mesh
) -> dict[str, Any]:
    """The C·W·P variants of every learned vector into the store (resumable).

    Variant ``k`` of vector ``i`` is (checkpoint, w, partner slot) = :func:`variant_grid` [k]:
    the vector at that stage-1 checkpoint interpolated with that partner (strength s), plus
    λ-noise, sampled with weight w against the unconditional of that checkpoint's vectors.
    """

    smp_cfg = config.sampling
    ids, labels, groups, snaps = load_inversion(config.workdir)
    ckpts = [int(c) for c in smp_cfg.checkpoints] or ["final"]
    missing = [c for c in ckpts if c not in snaps]
    if missing:
        have = sorted(k for k in snaps if k != "final")
        raise ValueError(
            f"diffinv: sampling.checkpoints {missing} were not saved by stage 1 (saved: {have}); "
            "add them to inversion.save_steps"
        )
    scales = [float(w) for w in smp_cfg.guidance_scales]
    form = str(smp_cfg.guidance_form)
    guidance.cfg_scale(1.0, form)  # validates the form
    uncond_mode = str(smp_cfg.uncond)
    if uncond_mode not in UNCOND_MODES:
        raise ValueError(
            f"diffinv: sampling.uncond must be one of {UNCOND_MODES}, got {uncond_mode!r}"
        )
    n_part = int(smp_cfg.num_partners)
    grid = variant_grid(ckpts, scales, n_part)
    k_per = len(grid)
    pert = Perturbation(
        noise_scale=float(smp_cfg.noise_scale),
        interpolation_strength=float(smp_cfg.interpolation_strength),
    )
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
        checkpoints=ckpts,
        guidance_scales=scales,
        guidance_form=form,
        num_partners=n_part,
        noise_scale=pert.noise_scale,
        interpolation_strength=pert.interpolation_strength,
        uncond=uncond_mode,
        steps=int(smp_cfg.steps),
        sampler=smp_cfg.sampler,
        resolution=res,
        num_tokens=int(snaps["final"].shape[1]),
        num_classes=real.num_classes,
        class_names=list(real.class_names),
    )
    store_dir = config.get("store_dir", None) or os.path.join(config.workdir, "synthetic")
    uncond_cache: dict[tuple[Any, int], np.ndarray] = {}

    def uncond_of(ck: Any, row: int) -> np.ndarray:
        tag = {"global": 0, "group": int(groups[row]), "class": int(labels[row])}[uncond_mode]
        if (ck, tag) not in uncond_cache:
            uncond_cache[(ck, tag)] = unconditional_rows(
                snaps[ck], np.array([row]), uncond_mode, groups=groups, labels=labels
            )[0]
        return uncond_cache[(ck, tag)]

    written = 0
    with StoreWriter(store_dir, method="diffinv", config=manifest_cfg,
                     model=model_identity_of(components)) as store:
        for batch in pending_batches(store, mine, int(smp_cfg.batch_size), desc="diffinv stage 2"):
            keys = example_keys(base, [it["example"] for it in batch])
            rows = np.array([it["row"] for it in batch])
            combos = [grid[it["variant"]] for it in batch]
            partners = np.array(
                [
                    partner_set(
                        int(config.seed), int(ids[r]), ci * len(scales) + wi, int(r), labels, n_part
                    )[pi]
                    for r, (ci, wi, pi) in zip(rows, combos, strict=True)
                ]
            )
            c_i = np.stack(
                [snaps[ckpts[ci]][r] for r, (ci, _, _) in zip(rows, combos, strict=True)]
            )
            c_j = np.stack(
                [snaps[ckpts[ci]][j] for j, (ci, _, _) in zip(partners, combos, strict=True)]
            )
            c_hat = perturb(keys, c_i, c_j, pert)
            un = np.stack(
                [uncond_of(ckpts[ci], int(r)) for r, (ci, _, _) in zip(rows, combos, strict=True)]
            )
            w = np.array([scales[wi] for (_, wi, _) in combos], np.float32)
            images = sample(
                components,
                params,
                c_hat,
                un,
                w,
                keys,
                guidance_form=form,
                num_steps=int(smp_cfg.steps),
                sampler=smp_cfg.sampler,
                height=res,
                width=res,
                mesh=mesh,
            )
            out = unit_to_store(images, int(config.data.image_size), int(config.data.channels))
            for i, (it, img) in enumerate(zip(batch, out, strict=True)):
                ci, wi, pi = combos[i]
                prov = dict(
                    vector_id=int(ids[rows[i]]),
                    parent=int(ids[rows[i]]),
                    parent_name=real.name_of(int(ids[rows[i]])),
                    partner_vector_id=int(ids[partners[i]]),
                    partner_slot=pi,
                    variant=it["variant"],
                    checkpoint=ckpts[ci],
                    guidance=scales[wi],
                    guidance_form=form,
                    cfg_scale=float(guidance.cfg_scale(scales[wi], form)),
                    interpolation_strength=pert.interpolation_strength,
                    noise_scale=pert.noise_scale,
                    uncond=uncond_mode,
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
    components, params = tiny.load_from_config(config.model, config.workdir, int(config.seed),
                                               "txt2img")
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
