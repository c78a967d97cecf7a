"""Semantic hybrid blending (SHB, seed 000 §3.3), written offline, and the CLIP it needs.

SHB blends an edit ``Î`` and its parent ``I`` with a mask from CLIP similarity to the class
text (:mod:`augdiff.methods.semantic`) at the edit's resolution ``R``
(:func:`write_semantic_hybrids`), resizes the blend to ``data.image_size`` and then runs
DiffuseMix's fractal step there (:func:`fractal_finish`: ``C = (1 − λ) H + λ F`` with λ and
``F`` from the pair key, label weight ``1 − λ`` under label scaling). The similarity map is
CLIP image embeddings of crops (the seed 000 code) or CLIP patch tokens
(:func:`shb_similarity_fn`); CLIP is ``diffusemix.shb.clip`` or, with ``diffusemix.shb.tiny``,
a tiny random one (:func:`load_clip`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from augdiff import distributed
from augdiff.data.pixels import range_to_uint8, resize_uint8, uint8_to_range, unit_to_store
from augdiff.methods import hybrids, semantic
from augdiff.methods.edits import HYBRID_SOURCE
from augdiff.sd import tiny


def load_clip(shb: Any, workdir: str, seed: int) -> tuple[Any, dict, Any, str]:
    """``(clip_model, params, tokenizer, label)`` for SHB: a transformers ``FlaxCLIPModel`` from
    ``shb.clip`` (folder / cached hub id, e.g. openai/clip-vit-base-patch32), or with
    ``shb.tiny`` a tiny random one in ``<workdir>/tiny_clip``. ``label`` is what provenance
    records (``tiny-random`` for the test model)."""
    from transformers import CLIPTokenizer, FlaxCLIPModel

    given = str(shb.get("clip", "") or "")
    path = tiny.path_or_tiny(
        given, tiny=bool(shb.get("tiny", False)), tiny_dir=os.path.join(workdir, "tiny_clip"),
        marker="config.json", make=lambda d: tiny.make_tiny_clip(d, seed),
        missing="SHB needs CLIP: set diffusemix.shb.clip (FlaxCLIPModel folder / hub id) or "
                "diffusemix.shb.tiny=True")
    label = given or "tiny-random"
    model, params = FlaxCLIPModel.from_pretrained(path, _do_init=False)
    return model, params, CLIPTokenizer.from_pretrained(path), label


def class_text_embeddings(
    clip_model: Any, params: dict, tokenizer: Any, class_names: Sequence[str], template: str
) -> jax.Array:
    """Projected CLIP text embeddings [C, D] of ``template.format(name)`` per class."""
    prompts = [template.format(n.replace("_", " ")) for n in class_names]
    tok = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="np",
                    max_length=tokenizer.model_max_length)
    return semantic.clip_text_embeddings(
        clip_model, tok.input_ids.astype(np.int32), tok.attention_mask.astype(np.int32), params
    )


@functools.partial(jax.jit, static_argnames=("spec",))
def fractal_finish(
    key: jax.Array, x: jax.Array, pair_ids: jax.Array, fractals: jax.Array | None = None, *,
    spec: hybrids.DiffuseMixSpec,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """DiffuseMix's fractal step on finished hybrids ``x`` [B, h, w, C] (the SHB rows):
    ``C = (1 − λ) x + λ F`` with λ and F from the pair key (offline policy) when
    ``spec.fractal``. Returns ``(images, weights, lam)`` ([B] each; ``lam`` = 0 without)."""
    b, h, w, _ = x.shape
    if not spec.fractal:
        return x, jnp.ones((b,), jnp.float32), jnp.zeros((b,), jnp.float32)
    if fractals is None:
        raise ValueError("spec.fractal is on: pass a fractal bank [K, h, w, C] as `fractals`")
    keys = hybrids.pair_keys(key, pair_ids, policy="offline")
    lam = hybrids.draw_lambda(keys, spec.lam)
    x = hybrids.fractal_blend(x, hybrids.pick_fractals(keys, fractals, h, w).astype(x.dtype), lam)
    return x, hybrids.label_weights(lam, spec.label_scaling), lam


def shb_settings(shb: Any) -> dict[str, Any]:
    """The mask settings of ``config.diffusemix.shb`` for :func:`semantic.semantic_hybrid`."""
    smoothing = str(shb.get("smoothing", "paper"))
    semantic.smoothing_geometry(smoothing, int(shb.kernel_size))  # validates
    return dict(percentile=float(shb.get("percentile", 50.0)),
                kernel_size=int(shb.kernel_size), smoothing=smoothing,
                binary=bool(shb.get("binary", False)))


def write_semantic_hybrids(
    writer: Any,
    original: np.ndarray,
    generated: np.ndarray,
    labels: np.ndarray,
    pair_ids: np.ndarray,
    *,
    key: jax.Array,
    spec: hybrids.DiffuseMixSpec,
    similarity_fn: Callable[[jax.Array, jax.Array], jax.Array],
    clip_label: str,
    size: int,
    fractals: jax.Array | None = None,
    settings: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    source: int = HYBRID_SOURCE,
    provenance: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Offline SHB hybrids through a ``StoreWriter`` (keys ``hybrid-<pair_id>``, stored keys
    skipped), at the EDIT's resolution: ``generated`` uint8 [N, R, R, C] are the edits at the
    resolution they were made at and ``original`` the real images (resized to R² bicubically,
    as the editor's input was); SHB blends at R² (``similarity_fn(generated in [-1, 1],
    labels) -> [B, g, g]``, :func:`semantic.semantic_hybrid`), the blend is resized to
    ``size``² (:func:`augdiff.data.pixels.unit_to_store`) and DiffuseMix's fractal step
    follows at ``size``² (:func:`fractal_finish`). Returns the number added."""
    settings = dict(settings or {})
    n = len(original)
    res = int(generated.shape[1])
    pair_ids = np.asarray(pair_ids, np.int64)
    todo = [i for i in range(n) if f"hybrid-{pair_ids[i]}" not in writer.completed_keys]
    variant = {"mask": "semantic", "resolution": res, **settings, "fractal": spec.fractal,
               "lam": spec.lam, "label_scaling": spec.label_scaling, "clip": clip_label}
    added = 0
    for start in range(0, len(todo), batch_size):
        rows = np.asarray(todo[start : start + batch_size])
        m = len(rows)
        o = uint8_to_range(resize_uint8(original[rows], res))
        g = uint8_to_range(generated[rows])
        lab = jnp.asarray(np.asarray(labels)[rows].astype(np.int32))
        x, _ = semantic.semantic_hybrid(o, g, similarity_fn(g, lab), **settings)
        h = unit_to_store((np.asarray(x) + 1.0) / 2.0, int(size))
        (h_p, ids_p), _ = distributed.pad_to_multiple(
            (h, pair_ids[rows].astype(np.int32)), batch_size)
        y, w, lam = fractal_finish(key, uint8_to_range(h_p), jnp.asarray(ids_p), fractals,
                                   spec=spec)
        images = range_to_uint8(distributed.unpad(y, m))
        weights, lams = np.asarray(w)[:m], np.asarray(lam)[:m]
        for j, i in enumerate(rows):
            prov = dict(provenance[i]) if provenance is not None else {}
            prov.update(pair_id=int(pair_ids[i]), hybrid=variant, weight=float(weights[j]))
            if spec.fractal:
                prov["lam"] = float(lams[j])
            added += writer.add(f"hybrid-{pair_ids[i]}", images[j], int(labels[i]), source, prov)
    return added


def shb_similarity_fn(
    shb: Any, clip_model: Any, clip_params: Any, text_emb: jax.Array, resolution: int
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``fn(generated [B, R, R, C] in [-1, 1], labels [B]) -> S`` for ``shb.features``:
    ``crops`` (the seed 000 code: CLIP image embeddings of ``shb.crop``-px crops at stride
    ``shb.stride`` at 256², scaled to the edit resolution R) or ``tokens`` (CLIP patch
    tokens)."""
    features = str(shb.get("features", "crops"))
    if features == "crops":
        crop, stride = semantic.scaled_crop_geometry(
            resolution, int(shb.get("crop", semantic.CROP_256)),
            int(shb.get("stride", semantic.STRIDE_256)))
        embed = semantic.clip_image_embedding_fn(clip_model, clip_params)
        return lambda g, lab: semantic.crop_similarity_map(embed, g, text_emb, lab, crop=crop,
                                                           stride=stride)
    if features == "tokens":
        feats = semantic.clip_patch_feature_fn(clip_model, clip_params)
        return lambda g, lab: semantic.token_similarity_map(feats, g, text_emb, lab)
    raise ValueError(f"diffusemix.shb.features must be 'crops' or 'tokens', got {features!r}")
