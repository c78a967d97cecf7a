"""Seed 000 Fig. 3: PCA of CLIP image embeddings, fitted on the originals, at any scale.

Four panels, every set projected on the first two principal axes of the ORIGINAL images'
CLIP embeddings (:func:`augdiff.analysis.pca.project_on_originals`, as the seed 000 code):

(a) originals vs all-prompt generations vs single-prompt generations;
(b) originals vs their concatenations (DiffuseMix hybrids: original + generation + fractal)
    vs the fractals those concatenations were blended with (each pair's own fractal,
    :func:`augdiff.methods.hybrids.pair_fractals`, the draw :func:`~augdiff.methods.hybrids.
    diffusemix` makes; none when the row blends no fractal);
(c) generations coloured by prompt;
(d) the concatenations of (c), coloured by prompt.

Generations are made here for ``fig3.max_images`` originals (a seeded random subset of the
row's training split) with the editor of row ``fig3.row`` (``diffusemix.editor``) and its
hybrid definition (``diffusemix.hybrid``, its fractal bank and keys):

- ``ip2p`` (InstructPix2Pix, DiffuseMix's editor and the full-scale default): the prompts are
  DiffuseMix's (``fig3.prompts``, default ``'all'`` = the nine of
  :data:`augdiff.methods.edits.DIFFUSEMIX_PROMPTS`, :func:`~augdiff.methods.edits.
  resolve_prompts`); the single prompt is the row's first prompt (``diffusemix.prompts``, the
  table's), added to the list when missing. Edits go through the generation's own code
  (:func:`~augdiff.methods.edits.load_ip2p`, :func:`~augdiff.methods.edits.edit_images` with
  the row's guidances, steps, sampler and resolution), are stored-size quantised as the edit
  stage writes them, and black / non-finite ones are dropped as it drops them.
- ``edm`` (SDEdit with an augdiff EDM): the "prompts" are edit strengths σ_start
  (``fig3.strengths``; the single prompt is the table's strength).

CLIP is ``fig3.clip`` (else the row's ``diffusemix.shb.clip``; a Flax CLIP folder / hub id,
loaded before any generation: a path that does not load is a one-line ``ConfigError`` naming
``fig3.clip``), or with ``fig3.tiny`` (the default) a tiny RANDOM one: the report then says the
plot shows geometry, not CLIP semantics. The numbers beside the figure: each set's spread
(total variance of its 2-D coordinates) relative to the originals', its centroid's distance
from the originals', and the spread of the per-prompt centroids for (c) and (d).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from augdiff import distributed
from augdiff.analysis.pca import embed_images, plot_panels, project_on_originals, spread
from augdiff.config import ConfigError
from augdiff.data.pixels import to_signed, unit_to_store
from augdiff.data.sources import open_real_source
from augdiff.data.store import example_keys
from augdiff.edm import edit as edm_edit
from augdiff.methods import diffusemix as DM
from augdiff.methods import edits, hybrids, semantic, shb
from augdiff.sd import loading, pipelines


@dataclasses.dataclass
class Fig3Sets:
    """The image sets of Fig. 3 (float32 NHWC in [-1, 1] at ``data.image_size``).

    ``generated[p]`` / ``concatenated[p]``: prompt ``p``'s generations and their hybrids (rows
    of the originals the editor kept, ``kept[p]``); ``pair_ids[p]`` their hybrid pair ids;
    ``fractals``: the fractal each concatenation of every prompt was blended with (in prompt
    order, then original order; ``None`` without fractal blending)."""

    editor: str
    prompts: tuple[str, ...]
    single: str
    original: np.ndarray
    labels: np.ndarray
    generated: dict[str, np.ndarray]
    concatenated: dict[str, np.ndarray]
    kept: dict[str, np.ndarray]
    pair_ids: dict[str, np.ndarray]
    fractals: np.ndarray | None
    spec: hybrids.DiffuseMixSpec
    dropped: int = 0


def fig3_clip(opts: Mapping[str, Any], dm: Any, workdir: str) -> tuple[Any, dict, str, bool]:
    """``(clip_model, params, label, random_weights)`` for Fig. 3: ``fig3.clip``, else the row's
    ``diffusemix.shb.clip``, else (``fig3.tiny``) a tiny random CLIP in ``workdir``. A clip
    that does not load is a one-line :class:`ConfigError` naming ``fig3.clip``."""
    own = str(opts.get("clip", "") or "")
    row_clip = str(dm.shb.get("clip", "") or "") if "shb" in dm else ""
    given = own or row_clip
    field = "fig3.clip" if own else "fig3.clip (from the row's diffusemix.shb.clip)"
    tiny = bool(opts.get("tiny", True))
    if not given and not tiny:
        raise ConfigError("fig3.clip is empty and fig3.tiny is off: give a Flax CLIP folder / "
                          "hub id (e.g. openai/clip-vit-base-patch32) or set fig3.tiny=True")
    clip_cfg = dict(dm.shb.to_dict() if hasattr(dm.shb, "to_dict") else dm.shb)
    clip_cfg.update(clip=given, tiny=tiny)
    try:
        model, params, _, label = shb.load_clip(clip_cfg, workdir, 0)
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = " ".join(str(e).split())[:300]
        raise ConfigError(f"{field} {given!r} does not load as a Flax CLIP model: {why}") from e
    random_weights = label == "tiny-random" or (
        bool(given) and os.path.isfile(os.path.join(given, loading.TINY_MARKER)))
    return model, params, label, random_weights


def _edm_generations(sub: Any, opts: Mapping[str, Any], x0: jax.Array, labels: np.ndarray,
                     log: Callable[[str], None]) -> tuple[tuple[str, ...], str, list]:
    """EDM SDEdit generations, one list entry ``(strength, images [n], keep [n])`` per
    strength; the single prompt is the table's strength."""
    dm = sub.diffusemix
    single = edits.edm_strengths(dm)[0]
    strengths = tuple(str(v) for v in str(opts.get("strengths", "0.5|1|2|4")).split("|"))
    if single not in strengths:
        strengths = (single, *strengths)
    loaded = edm_edit.load_edm(str(dm.edm.workdir))
    keys = jax.random.split(jax.random.PRNGKey(int(sub.seed) + 1), len(x0))
    size = int(sub.data.image_size)
    out = []
    for v in strengths:
        log(f"fig3: edits at sigma_start={v}")
        fn = edm_edit.make_edit_fn(loaded, sigma_start=float(v), num_steps=int(dm.edm.steps))
        g = jnp.clip(fn(loaded["params"], keys, x0, jnp.asarray(labels)), -1.0, 1.0)
        if g.shape[1] != size:
            g = jax.image.resize(g, (g.shape[0], size, size, g.shape[3]), "bilinear")
        out.append((v, np.asarray(g), np.ones(len(x0), bool)))
    return strengths, single, out


def _ip2p_generations(sub: Any, opts: Mapping[str, Any], original: np.ndarray,
                      log: Callable[[str], None]) -> tuple[tuple[str, ...], str, list]:
    """InstructPix2Pix generations with the row's editor and settings, one list entry
    ``(prompt, images [n], keep [n])`` per prompt; edit ``e = i · P + j`` (original ``i``,
    prompt ``j`` of ``P``) draws from ``fold_in(edit_key, e)``, as the edit stage does."""
    dm = sub.diffusemix
    single = edits.resolve_prompts(dm.prompts)[0]
    try:
        prompts = edits.resolve_prompts(opts.get("prompts", "all"))
    except ValueError as e:
        raise ConfigError(f"fig3.prompts: {e}") from None
    if single not in prompts:
        prompts = (single, *prompts)
    seed = edits.generation_seed(sub)
    edit_key, _, _ = edits.run_keys(seed)
    components, params = edits.load_ip2p(dm, str(sub.workdir), seed)
    mesh = distributed.make_mesh(devices=jax.local_devices())
    params = pipelines.place_params(params, mesh)
    embeds = pipelines.encode_prompts(components, params, list(prompts))
    n, num, bs = len(original), len(prompts), max(1, int(dm.batch_size))
    size = int(sub.data.image_size)
    out = []
    for j, p in enumerate(prompts):
        log(f"fig3: InstructPix2Pix edits with prompt {p!r}")
        images, status = [], []
        for start in range(0, n, bs):
            rows = np.arange(start, min(n, start + bs))
            keys = example_keys(edit_key, rows * num + j)
            (par, keys_p), m = distributed.pad_to_multiple((original[rows], keys), bs)
            y = edits.edit_images(
                components, params, par, embeds[np.full(len(par), j)], keys_p,
                resolution=int(dm.resolution), text_guidance=float(dm.text_guidance),
                image_guidance=float(dm.image_guidance), num_steps=int(dm.steps),
                sampler=str(dm.sampler), mesh=mesh)[:m]
            status.append(edits.output_status(y, float(dm.black_threshold)))
            images.append(unit_to_store(np.where(np.isfinite(y), y, 0.0), size))
        out.append((p, to_signed(np.concatenate(images)), np.concatenate(status) == "ok"))
    return prompts, single, out


def make_fig3_sets(config: Any, rows: Mapping[str, Mapping[str, Any]],
                   log: Callable[[str], None]) -> Fig3Sets:
    """Originals, generations with the row's editor, their hybrids and the hybrids' own
    fractals (see the module docstring)."""
    opts = config.get("fig3", {}) or {}
    n = int(opts.get("max_images", 200))
    row = str(opts.get("row", "baseline"))
    sub = rows[row]["generate_config"]
    dm = sub.diffusemix
    editor = str(dm.get("editor", "ip2p"))
    real = open_real_source(sub.data, str(sub.data.get("train_split", "train")))
    idx = np.sort(np.random.default_rng(0).permutation(len(real))[:n])
    original = np.stack([real[int(i)]["image"] for i in idx])
    labels = np.asarray([int(real.labels[int(i)]) for i in idx], np.int32)
    x0 = jnp.asarray(to_signed(original))
    if editor == "ip2p":
        prompts, single, made = _ip2p_generations(sub, opts, original, log)
    else:
        prompts, single, made = _edm_generations(sub, opts, x0, labels, log)
    spec, _ = DM.hybrid_spec(dm.hybrid)
    _, hybrid_key, fractal_key = edits.run_keys(edits.generation_seed(sub))
    size = int(sub.data.image_size)
    bank = DM.fractal_bank_from_config(dm, fractal_key, size) if spec.fractal else None
    gens, hybs, kept, ids_of, fracs = {}, {}, {}, {}, []
    for j, (p, g, keep) in enumerate(made):
        ids = jnp.asarray(np.arange(len(idx)) * len(prompts) + j, jnp.int32)
        h, _ = hybrids.diffusemix(hybrid_key, x0, jnp.asarray(g), ids, bank, spec=spec)
        gens[p], hybs[p] = np.asarray(g)[keep], np.asarray(h)[keep]
        kept[p], ids_of[p] = np.flatnonzero(keep), np.asarray(ids)[keep]
        if bank is not None:
            fracs.append(np.asarray(hybrids.pair_fractals(
                hybrid_key, ids, bank, size, size, policy=spec.policy))[keep])
    dropped = int(sum(len(idx) - len(k) for k in kept.values()))
    return Fig3Sets(editor=editor, prompts=tuple(prompts), single=single, original=np.asarray(x0),
                    labels=labels, generated=gens, concatenated=hybs, kept=kept, pair_ids=ids_of,
                    fractals=np.concatenate(fracs) if fracs else None, spec=spec,
                    dropped=dropped)


def run_fig3(config: Any, rows: Mapping[str, Mapping[str, Any]],
             log: Callable[[str], None]) -> dict[str, Any]:
    """Table-experiment analysis ``fig3`` (see the module docstring); writes
    ``<workdir>/analyses/fig3.png``."""
    opts = config.get("fig3", {}) or {}
    row = str(opts.get("row", "baseline"))
    if row not in rows:
        raise ConfigError(f"fig3.row {row!r} is not among the rows run: {sorted(rows)}")
    dm = rows[row]["generate_config"].diffusemix
    editor = str(dm.get("editor", "ip2p"))
    if editor not in edits.EDITORS:
        raise ConfigError(f"fig3: row {row!r} has diffusemix.editor={editor!r}; known: "
                          f"{edits.EDITORS}")
    workdir = os.path.join(str(config.workdir), "analyses")
    model, params, label, random_weights = fig3_clip(opts, dm, workdir)  # before any edit
    s = make_fig3_sets(config, rows, log)
    embed_fn = semantic.clip_image_embedding_fn(model, params)

    def emb(x: np.ndarray) -> np.ndarray:
        return embed_images(embed_fn, x, batch_size=min(256, len(x)), progress=False)

    prompts, single, n = s.prompts, s.single, len(s.original)
    sets = {"original": emb(s.original)}
    for v in prompts:
        sets[f"gen:{v}"] = emb(s.generated[v])
        sets[f"hyb:{v}"] = emb(s.concatenated[v])
    if s.fractals is not None:
        sets["fractal"] = emb(s.fractals)
    pca, xy = project_on_originals(sets, "original")
    all_gen = np.concatenate([xy[f"gen:{v}"] for v in prompts])
    all_hyb = np.concatenate([xy[f"hyb:{v}"] for v in prompts])
    if s.editor == "edm":
        name = lambda v: f"σ_start={v}"  # noqa: E731
    else:
        name = lambda v: f"“{v}”"  # noqa: E731
    panel_b = {"original": xy["original"], "concatenated: all prompts": all_hyb}
    if s.fractals is not None:
        panel_b["fractal (the concatenations' own)"] = xy["fractal"]
    panels = [
        ("(a) originals, all-prompt and single-prompt generations",
         {"original": xy["original"], "generated: all prompts": all_gen,
          f"generated: single prompt ({name(single)})": xy[f"gen:{single}"]}),
        ("(b) concatenations (original + generated + fractal)", panel_b),
        ("(c) generations by prompt", {name(v): xy[f"gen:{v}"] for v in prompts}),
        ("(d) concatenations of (c) by prompt", {name(v): xy[f"hyb:{v}"] for v in prompts}),
    ]
    path = plot_panels(panels, os.path.join(workdir, "fig3.png"), pca=pca)
    s0 = spread(xy["original"])
    c0 = xy["original"].mean(axis=0)

    def describe(c: np.ndarray) -> dict[str, float]:
        return {"spread_ratio": spread(c) / s0 if s0 else 0.0,
                "centroid_distance": float(np.linalg.norm(c.mean(axis=0) - c0)),
                "n": int(len(c))}

    stats = {"original": describe(xy["original"]), "generated_all": describe(all_gen),
             "generated_single": describe(xy[f"gen:{single}"]),
             "concatenated_all": describe(all_hyb)}
    if s.fractals is not None:
        stats["fractal"] = describe(xy["fractal"])
    for v in prompts:
        stats[f"generated {name(v)}"] = describe(xy[f"gen:{v}"])
        stats[f"concatenated {name(v)}"] = describe(xy[f"hyb:{v}"])
    sep = {k: float(np.std([xy[f"{k}:{v}"].mean(axis=0) for v in prompts], axis=0).sum())
           for k in ("gen", "hyb")}
    caveat = " — RANDOM weights: the geometry of the plot, not CLIP semantics" if (
        random_weights) else ""
    if s.editor == "edm":
        made = (f"their EDM SDEdit generations at σ_start ∈ {{{', '.join(prompts)}}} (the "
                f"\"prompts\"; single prompt: {single})")
    else:
        made = (f"their InstructPix2Pix generations with the prompts "
                f"{', '.join(f'“{p}”' for p in prompts)} (single prompt: “{single}”"
                + (f"; {s.dropped} black / non-finite edits dropped" if s.dropped else "")
                + ")")
    fractal = (f" + fractal λ = {s.spec.lam}, each concatenation's own fractal"
               if s.fractals is not None else ", no fractal")
    lines = ["![Fig. 3](analyses/fig3.png)", "",
             f"{n} originals of row `{row}`, {made}, and their concatenations "
             f"({s.spec.mask}{fractal}); CLIP `{label}`{caveat}. PCA fitted on the originals' "
             f"embeddings only (explained variance {100 * pca.explained_variance_ratio[0]:.1f}%"
             f" / {100 * pca.explained_variance_ratio[1]:.1f}%).", "",
             "| set | spread / originals' | centroid distance |", "|---|---|---|"]
    for k, d in stats.items():
        lines.append(f"| {k} | {d['spread_ratio']:.3f} | {d['centroid_distance']:.3f} |")
    lines += ["", f"Spread of the per-prompt centroids: generations {sep['gen']:.3f}, "
              f"concatenations {sep['hyb']:.3f} (the paper: prompts form tight clusters in "
              "(c) that become indistinguishable after concatenation in (d))."]
    out = {"plot": path, "clip": label, "clip_random_weights": bool(random_weights),
           "editor": s.editor, "prompts": list(prompts), "single": single,
           "num_images": int(n), "dropped": s.dropped, "stats": stats,
           "prompt_centroid_spread": sep,
           "explained_variance_ratio": [float(r) for r in pca.explained_variance_ratio],
           "report_lines": lines}
    if s.editor == "edm":
        out["strengths"] = list(prompts)
    return out
