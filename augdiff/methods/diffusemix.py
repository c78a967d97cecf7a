"""DiffuseMix generation (Islam et al., CVPR 2024) and its seed 000 variants, end to end.

``augdiff generate`` with ``method='diffusemix'`` runs two phases into ``store_dir``:

1. **Edits** (``<store_dir>/edits``, source id 1). Every real training image ``I_i`` (of the
   ``data`` subset) is edited with every prompt ``p_j`` of the bank by InstructPix2Pix
   (Brooks et al. 2023)::

       Î_ij = IP2P(I_i, p_j)   with dual guidance  ε̃ = ε(∅,∅) + s_I (ε(c_I,∅) − ε(∅,∅))
                                                        + s_T (ε(c_I,c_T) − ε(c_I,∅))

   DiffuseMix's setting: the nine prompts of :data:`DIFFUSEMIX_PROMPTS` (or any subset, e.g.
   seed 000's single prompt), text guidance ``s_T = 4``, image guidance ``s_I = 1.5`` (the
   diffusers default DiffuseMix keeps), Euler-ancestral sampling, inputs resized to 256².
   Edits are resized back to ``data.image_size``. Black outputs (every pixel at or below
   ``black_threshold``; what a safety checker returns) and non-finite outputs are dropped and
   counted in the manifest (``writer.note``: ``filtered_black``, ``filtered_nonfinite``).

2. **Hybrids** (``<store_dir>/hybrids``, source id 2), for the offline variants: every edit and
   its parent become ``H = M ⊙ I + (1 − M) ⊙ Î`` (concatenation or random half masks of
   :mod:`augdiff.methods.hybrids`, or CLIP-guided semantic blending of
   :mod:`augdiff.methods.semantic`), then optionally ``C = (1 − λ) H + λ F`` with a fractal
   ``F`` from a bank and the label weight ``1 − λ`` (label scaling) in the record's ``weight``.
   With ``hybrid.policy='online'`` no hybrid is written:
   :class:`augdiff.methods.online.OnlinePairs` builds them on device inside the classifier's
   input pipeline, from the same keys.

Randomness: ``edit_key, hybrid_key, fractal_key = split(PRNGKey(seed), 3)``. Edit number
``e = i · P + j`` (real row ``i``, prompt ``j`` of ``P``) draws everything from
``fold_in(edit_key, e)`` (initial latent noise and the ancestral sampler's noise, see
:mod:`augdiff.sd.pipelines`), and its hybrid uses pair id ``e`` under ``hybrid_key``
(:func:`augdiff.methods.hybrids.pair_keys`). So an example's bytes do not depend on the batch
it was made in, a resumed run skips the keys already stored and reproduces the rest exactly,
and online hybrids with ``policy='offline'`` equal the written ones bit for bit.

Modules: the edit stage (both editors, the output filter, plan and keys) is
:mod:`augdiff.methods.edits`; SHB and its CLIP :mod:`augdiff.methods.shb`; the online pairs
:mod:`augdiff.methods.online`; this module drives the two phases and writes the offline
hybrids.

Provenance per edit: parent (real row) and its file name, prompt and its index, seed,
example number, guidances, steps, sampler, resolution and the model (``tiny-random`` for test
models); hybrids add the pair id, the variant, ``λ`` and ``weight`` (and the CLIP model for SHB).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from augdiff import distributed
from augdiff.data.sources import open_real_source
from augdiff.data.store import StoreWriter, SyntheticStore
from augdiff.methods import hybrids
from augdiff.methods.edits import (
    EDITORS,
    HYBRID_SOURCE,
    edm_strengths,
    full_edits_dir,
    generate_edits,
    generate_edits_edm,
    generation_seed,
    plan_edits,
    resolve_prompts,
    run_keys,
)
from augdiff.methods.shb import (
    class_text_embeddings,
    load_clip,
    shb_settings,
    shb_similarity_fn,
    write_semantic_hybrids,
)

_SPEC_FIELDS = {f.name for f in dataclasses.fields(hybrids.DiffuseMixSpec)}


def hybrid_spec(cfg: Any) -> tuple[hybrids.DiffuseMixSpec, bool]:
    """``(spec, semantic)`` from ``config.diffusemix.hybrid``.

    ``mask`` is ``concat`` / ``random`` (:class:`~augdiff.methods.hybrids.DiffuseMixSpec`) or
    ``semantic`` (SHB, seed 000 §3.3; the spec then only carries the fractal / λ / label
    scaling fields). ``lam_min``/``lam_max`` < 0 (the default) means the fixed ``lam``;
    otherwise ``λ ~ U[lam_min, lam_max]``.
    """
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    lo, hi = d.pop("lam_min", -1.0), d.pop("lam_max", -1.0)
    if lo is not None and hi is not None and (lo >= 0 or hi >= 0):
        d["lam_min"], d["lam_max"] = lo, hi
    is_semantic = d.get("mask") == "semantic"
    if is_semantic:
        d["mask"] = "concat"
        if d.get("policy", "offline") != "offline":
            raise ValueError(
                "hybrid.mask='semantic' has no randomness (its mask is the same offline and "
                "online): use hybrid.policy='offline'"
            )
    return hybrids.spec_from_config(d), is_semantic


def fractal_bank_from_config(dm: Any, fractal_key: jax.Array, size: int) -> jax.Array:
    """The fractal bank of ``config.diffusemix`` in [-1, 1]: the image folder
    ``fractal_path`` when set (as DiffuseMix loads its fractal set), else
    ``fractal_bank_size`` procedural IFS fractals from ``fractal_key`` (not FractalDB)."""
    path = str(dm.get("fractal_path", "") or "")
    if path:
        return hybrids.load_fractal_folder(path, size)
    return hybrids.fractal_bank(fractal_key, int(dm.fractal_bank_size), size)


def store_dirs(config: Any) -> tuple[str, str]:
    """``(edits_dir, hybrids_dir)`` under ``config.store_dir`` (default ``<workdir>/store``)."""
    root = config.get("store_dir", "") or os.path.join(config.workdir, "store")
    return os.path.join(root, "edits"), os.path.join(root, "hybrids")


def needs_edits(config: Any) -> bool:
    """Whether the variant uses generated images: every mask but ``original`` (Table 1's
    Fractal rows, ``C = (1 − λ) I + λ F``), which runs no edit stage."""
    return str(config.diffusemix.hybrid.get("mask", "concat")) != "original"


def writes_hybrids(config: Any) -> bool:
    """Whether generation writes offline hybrids (``diffusemix.write_hybrids`` and an offline
    policy); otherwise classifiers train on the edits (raw, or online hybrids)."""
    dm = config.diffusemix
    return bool(dm.get("write_hybrids", True)) and dm.hybrid.get("policy", "offline") == "offline"


def _generate_hybrids(
    config: Any, real: Any, edits_dir: str, hybrids_dir: str, hybrid_key: jax.Array,
    fractal_key: jax.Array, progress: bool, num_prompts: int = 1,
) -> dict[str, Any]:
    """The offline hybrids of the edits in ``edits_dir`` (or, for mask ``original``, of the
    planned edits' real images alone) into ``hybrids_dir``: masks of
    :mod:`augdiff.methods.hybrids` or SHB (:mod:`augdiff.methods.shb`); resumable."""
    dm = config.diffusemix
    spec, is_semantic = hybrid_spec(dm.hybrid)
    if edits_dir:
        edits = SyntheticStore(edits_dir)
        n_items = len(edits)
    else:  # mask 'original': one hybrid per planned edit, made from the real image alone
        edits = None
        n_real = len(real) if not int(dm.max_images) else min(len(real), int(dm.max_images))
        plan = plan_edits(n_real, num_prompts)
        n_items = len(plan)
    rows = np.arange(n_items)[distributed.process_slice(n_items)]
    size = int(config.data.image_size)
    bank = fractal_bank_from_config(dm, fractal_key, size) if spec.fractal else None
    variant = {f: getattr(spec, f) for f in _SPEC_FIELDS}
    manifest = dict(edits=os.path.abspath(edits_dir) if edits_dir else "", hybrid=variant,
                    mask="semantic" if is_semantic else spec.mask,
                    num_classes=real.num_classes, class_names=list(real.class_names),
                    seed=generation_seed(config))
    clip = None
    full = None
    if is_semantic:
        shb = dm.shb
        res = int(edits.manifest.get("config", {}).get("resolution", size) or size)
        if res > size:  # SHB blends at the edit's resolution: read the full-resolution edits
            full_dir = full_edits_dir(edits_dir)
            try:
                full = SyntheticStore(full_dir)
            except Exception as e:
                raise ValueError(
                    f"SHB blends at the edit's resolution ({res}²) but {full_dir} holds no "
                    "full-resolution edits: regenerate the edits with "
                    "diffusemix.keep_full_edits=True") from e
            full_rows = {k: i for i, k in enumerate(full.keys)}
        else:
            res = size
        clip_model, clip_params, tok, clip_label = load_clip(shb, config.workdir,
                                                             generation_seed(config))
        text_emb = class_text_embeddings(clip_model, clip_params, tok, real.class_names,
                                         str(shb.template))
        settings = shb_settings(shb)
        clip = dict(similarity_fn=shb_similarity_fn(shb, clip_model, clip_params, text_emb, res),
                    clip_label=clip_label, settings=settings, size=size)
        manifest.update(clip=clip_label, shb=dict(settings, resolution=res,
                                                  features=str(shb.get("features", "crops"))))
    bs, chunk = int(dm.hybrid_batch_size), max(int(dm.hybrid_batch_size) * 8, 1)
    added = 0
    with StoreWriter(hybrids_dir, method="diffusemix-hybrid", config=manifest,
                     shard_size=int(dm.get("shard_size", 256))) as writer:
        for start in tqdm(range(0, len(rows), chunk), desc="diffusemix hybrids",
                          disable=not progress):
            part = rows[start : start + chunk]
            if edits is not None:
                provs = [edits.provenance(int(r)) for r in part]
            else:
                provs = [dict(plan[int(r)], parent_name=real.name_of(plan[int(r)]["parent"]),
                              key=None, seed=generation_seed(config)) for r in part]
            keep = [k for k, p in enumerate(provs)
                    if f"hybrid-{int(p['example'])}" not in writer.completed_keys]
            if not keep:
                continue
            part, provs = part[keep], [provs[k] for k in keep]
            original = np.stack([real.image(int(p["parent"])) for p in provs])  # never substituted
            if edits is not None:
                recs = [edits[int(r)] for r in part]
                generated = np.stack([r["image"] for r in recs])
                labels = np.asarray([int(r["label"]) for r in recs])
            else:  # M = 1: the generated half is never used
                generated = original
                labels = np.asarray([int(real.labels[int(p["parent"])]) for p in provs])
            ids = np.asarray([int(p["example"]) for p in provs])
            prov = [dict(parent=int(p["parent"]), parent_name=p.get("parent_name"),
                         prompt=p.get("prompt"), edit_key=p["key"], seed=p.get("seed"))
                    for p in provs]
            if full is not None:
                missing = [p["key"] for p in provs if p["key"] not in full_rows]
                if missing:
                    raise ValueError(f"{full_edits_dir(edits_dir)}: no full-resolution edit "
                                     f"for {missing[:3]} (regenerate the edits)")
                generated = np.stack([full[full_rows[p["key"]]]["image"] for p in provs])
            if clip is not None:
                added += write_semantic_hybrids(
                    writer, original, generated, labels, ids, key=hybrid_key, spec=spec,
                    fractals=bank, batch_size=bs, provenance=prov, **clip,
                )
            else:
                added += hybrids.write_hybrids(
                    writer, original, generated, labels, ids, key=hybrid_key, spec=spec,
                    fractals=bank, batch_size=bs, source=HYBRID_SOURCE, provenance=prov,
                    progress=False,
                )
    return dict(written=added, mask=manifest["mask"], **({"clip": clip["clip_label"]}
                                                          if clip else {}))


def generate(config: Any) -> dict[str, Any]:
    """``augdiff generate`` with ``method='diffusemix'``: edits, then (offline variants) hybrids.

    Returns a summary; ``store`` is the store classifiers train on (the hybrids for offline
    variants, else the edits), which the configs also set as ``synthetic.path``.
    """
    dm = config.diffusemix
    editor = str(dm.get("editor", "ip2p"))
    if editor not in EDITORS:
        raise ValueError(f"diffusemix.editor must be one of {EDITORS}, got {editor!r}")
    prompts = resolve_prompts(dm.prompts) if editor == "ip2p" else edm_strengths(dm)
    seed = generation_seed(config)
    edit_key, hybrid_key, fractal_key = run_keys(seed)
    real = open_real_source(config.data, config.data.get("train_split", "train"))
    edits_dir, hybrids_dir = store_dirs(config)
    progress = jax.process_index() == 0 and bool(config.get("progress", True))
    adopted = str(dm.get("edits_store", "") or "")
    summary: dict[str, Any] = {"prompts": list(prompts)}
    if not needs_edits(config):
        # Fractal rows (mask 'original'): C = (1 − λ) I + λ F has no generated content, so no
        # edit is made; the hybrids are planned from the real images alone.
        edits_dir = ""
        summary["edits_summary"] = {"skipped": "mask 'original' uses no edits"}
    elif adopted:
        SyntheticStore(adopted)  # a one-line StoreError when it is not a complete store
        edits_dir = adopted
        summary["edits_summary"] = {"adopted": os.path.abspath(adopted)}
    else:
        summary["edits_summary"] = (generate_edits if editor == "ip2p" else
                                    generate_edits_edm)(config, real, prompts, edits_dir,
                                                         edit_key, progress)
        distributed.barrier(f"augdiff diffusemix edits {edits_dir}")
    summary.update(store=edits_dir, edits=edits_dir)
    if writes_hybrids(config):
        summary["hybrids"] = hybrids_dir
        summary["hybrids_summary"] = _generate_hybrids(
            config, real, edits_dir, hybrids_dir, hybrid_key, fractal_key, progress,
            num_prompts=len(prompts))
        summary["store"] = hybrids_dir
        distributed.barrier(f"augdiff diffusemix hybrids {hybrids_dir}")
    return summary
