"""Seed 000 Fig. 3: PCA of CLIP image embeddings, fitted on the originals.

Four panels, every set projected on the first two principal axes of the ORIGINAL images'
CLIP embeddings (:func:`augdiff.analysis.pca.project_on_originals`, as the seed 000 code):

(a) originals vs all-prompt generations vs single-prompt generations;
(b) originals vs their concatenations (DiffuseMix hybrids: original + generation + fractal)
    vs the fractals;
(c) generations coloured by prompt;
(d) the concatenations of (c), coloured by prompt.

With the EDM SDEdit editor the "prompts" are edit strengths σ_start (``fig3.strengths``; the
single prompt is the table's strength). Generations and concatenations are made here for
``fig3.max_images`` originals with the rows' editor and the ``baseline`` row's hybrid
definition. The numbers beside the figure: each set's spread (total variance of its 2-D
coordinates) relative to the originals', its centroid's distance from the originals', and the
spread of the per-prompt centroids for (c) and (d).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from augdiff.analysis.pca import embed_images, plot_panels, project_on_originals, spread
from augdiff.data.pixels import to_signed
from augdiff.data.sources import open_real_source
from augdiff.edm import edit as edm_edit
from augdiff.methods import diffusemix as DM
from augdiff.methods import edits, hybrids, semantic, shb


def run_fig3(config: Any, rows: Mapping[str, Mapping[str, Any]],
             log: Callable[[str], None]) -> dict[str, Any]:
    """Table-experiment analysis ``fig3`` (see the module docstring); writes
    ``<workdir>/analyses/fig3.png``."""
    opts = config.get("fig3", {}) or {}
    n = int(opts.get("max_images", 200))
    row = str(opts.get("row", "baseline"))
    if row not in rows:
        raise ValueError(f"fig3.row {row!r} is not among the rows run: {sorted(rows)}")
    sub = rows[row]["generate_config"]
    dm = sub.diffusemix
    if str(dm.editor) != "edm":
        raise ValueError("fig3 makes its generations with the EDM editor (diffusemix.editor="
                         "'edm'); InstructPix2Pix figures need its weights")
    real = open_real_source(sub.data, str(sub.data.get("train_split", "train")))
    idx = np.sort(np.random.default_rng(0).permutation(len(real))[:n])
    original = np.stack([real[int(i)]["image"] for i in idx])
    labels = np.asarray([int(real.labels[int(i)]) for i in idx], np.int32)
    single = edits.edm_strengths(dm)[0]
    strengths = tuple(str(v) for v in str(opts.get("strengths", "0.5|1|2|4")).split("|"))
    if single not in strengths:
        strengths = (single, *strengths)
    loaded = edm_edit.load_edm(str(dm.edm.workdir))
    x0 = jnp.asarray(to_signed(original))
    keys = jax.random.split(jax.random.PRNGKey(int(sub.seed) + 1), len(idx))
    spec, _ = DM.hybrid_spec(dm.hybrid)
    _, hybrid_key, fractal_key = edits.run_keys(int(sub.seed))
    size = int(sub.data.image_size)
    bank = DM.fractal_bank_from_config(dm, fractal_key, size)
    gens, hybs = {}, {}
    for j, v in enumerate(strengths):
        log(f"fig3: edits at sigma_start={v}")
        fn = edm_edit.make_edit_fn(loaded, sigma_start=float(v), num_steps=int(dm.edm.steps))
        g = jnp.clip(fn(loaded["params"], keys, x0, jnp.asarray(labels)), -1.0, 1.0)
        if g.shape[1] != size:
            g = jax.image.resize(g, (g.shape[0], size, size, g.shape[3]), "bilinear")
        ids = jnp.asarray(np.arange(len(idx)) * len(strengths) + j, jnp.int32)
        h, _ = hybrids.diffusemix(hybrid_key, x0, g, ids, bank if spec.fractal else None,
                                  spec=spec)
        gens[v], hybs[v] = np.asarray(g), np.asarray(h)
    fractals = np.asarray(hybrids.pick_fractals(
        hybrids.pair_keys(fractal_key, jnp.arange(len(idx)), policy="offline"), bank,
        size, size))

    workdir = os.path.join(str(config.workdir), "analyses")
    clip_cfg = dict(dm.shb.to_dict() if hasattr(dm.shb, "to_dict") else dm.shb)
    clip_cfg.update(clip=str(opts.get("clip", "") or ""), tiny=bool(opts.get("tiny", True)))
    model, params, _, label = shb.load_clip(clip_cfg, workdir, 0)
    embed_fn = semantic.clip_image_embedding_fn(model, params)

    def emb(x: np.ndarray) -> np.ndarray:
        return embed_images(embed_fn, x, batch_size=min(256, len(x)), progress=False)

    sets = {"original": emb(x0)}
    for v in strengths:
        sets[f"gen:{v}"] = emb(gens[v])
        sets[f"hyb:{v}"] = emb(hybs[v])
    sets["fractal"] = emb(fractals)
    pca, xy = project_on_originals(sets, "original")
    all_gen = np.concatenate([xy[f"gen:{v}"] for v in strengths])
    all_hyb = np.concatenate([xy[f"hyb:{v}"] for v in strengths])
    name = lambda v: f"σ_start={v}"  # noqa: E731
    panels = [
        ("(a) originals, all-prompt and single-prompt generations",
         {"original": xy["original"], "generated: all prompts": all_gen,
          f"generated: single prompt ({name(single)})": xy[f"gen:{single}"]}),
        ("(b) concatenations (original + generated + fractal)",
         {"original": xy["original"], "concatenated: all prompts": all_hyb,
          "fractal": xy["fractal"]}),
        ("(c) generations by prompt", {name(v): xy[f"gen:{v}"] for v in strengths}),
        ("(d) concatenations of (c) by prompt", {name(v): xy[f"hyb:{v}"] for v in strengths}),
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
             "concatenated_all": describe(all_hyb), "fractal": describe(xy["fractal"])}
    for v in strengths:
        stats[f"generated {name(v)}"] = describe(xy[f"gen:{v}"])
        stats[f"concatenated {name(v)}"] = describe(xy[f"hyb:{v}"])
    sep = {k: float(np.std([xy[f"{k}:{v}"].mean(axis=0) for v in strengths], axis=0).sum())
           for k in ("gen", "hyb")}
    caveat = (" — RANDOM weights: the geometry of the plot, not CLIP semantics"
              if label == "tiny-random" else "")
    lines = ["![Fig. 3](analyses/fig3.png)", "",
             f"{len(idx)} originals of row `{row}`, their EDM SDEdit generations at "
             f"σ_start ∈ {{{', '.join(strengths)}}} (the \"prompts\"; single prompt: "
             f"{single}), and their concatenations ({spec.mask} + fractal λ = {spec.lam}); "
             f"CLIP `{label}`{caveat}. PCA fitted on the originals' embeddings only "
             f"(explained variance {100 * pca.explained_variance_ratio[0]:.1f}% / "
             f"{100 * pca.explained_variance_ratio[1]:.1f}%).", "",
             "| set | spread / originals' | centroid distance |", "|---|---|---|"]
    for k, d in stats.items():
        lines.append(f"| {k} | {d['spread_ratio']:.3f} | {d['centroid_distance']:.3f} |")
    lines += ["", f"Spread of the per-prompt centroids: generations {sep['gen']:.3f}, "
              f"concatenations {sep['hyb']:.3f} (the paper: prompts form tight clusters in "
              "(c) that become indistinguishable after concatenation in (d))."]
    return {"plot": path, "clip": label, "strengths": list(strengths), "single": single,
            "num_images": int(len(idx)), "stats": stats, "prompt_centroid_spread": sep,
            "explained_variance_ratio": [float(r) for r in pca.explained_variance_ratio],
            "report_lines": lines}
